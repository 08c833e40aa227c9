"""`python -m pol`: the command line, where the `pol` script is not on PATH."""

from pol.cli import main

if __name__ == "__main__":
    main()
