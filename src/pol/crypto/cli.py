"""Deprecated: the keygen / seal / open / ledger commands moved to `pol.cli.protocol`.

This module only re-exports them under their old names (and `register`, `COMMANDS`) so that old
imports keep working; new code imports pol.cli.protocol. (pol.crypto itself does not import this
module: the library does not depend on click.)
"""

from __future__ import annotations

import click

from pol.cli.protocol import keygen, ledger, open_, seal

keygen_command = keygen
seal_command = seal
open_command = open_cmd = open_
ledger_group = ledger

COMMANDS: list[click.Command] = [keygen, seal, open_, ledger]

__all__ = ["COMMANDS", "keygen", "keygen_command", "ledger", "ledger_group", "open_cmd",
           "open_command", "register", "seal", "seal_command"]


def register(group: click.Group) -> None:
    """Attach keygen, seal, open and ledger to `group`."""
    for cmd in COMMANDS:
        group.add_command(cmd)
