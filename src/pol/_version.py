"""The version, in one place (read by pyproject and re-exported by `pol`)."""

__version__ = "0.1.0"
