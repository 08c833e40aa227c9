"""Deprecated: `pol attack` moved to `pol.cli.attack`; re-exported here (`attack`, `NAMES`) so
that old imports keep working. New code imports pol.cli.attack."""

from pol.cli.attack import NAMES, attack

__all__ = ["NAMES", "attack"]
