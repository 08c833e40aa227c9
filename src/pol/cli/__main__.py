"""`python -m pol.cli ...` (and `torchrun ... -m pol.cli verify DIR`): the `pol` command."""

from pol.cli import main

main(prog_name="pol")
