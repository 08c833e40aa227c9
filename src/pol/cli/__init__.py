"""`pol` command line: parse the options, call the library, render the result. No logic.

Layout: `options.py` (options shared by several commands, defaults read from the library),
`exits.py` (exit codes; the one handler mapping exceptions to them), `render.py` (everything
printed), and one module per command family: `train.py` (train, commit), `verify.py` (verify,
calibrate, inspect, dispute), `protocol.py` (keygen, seal, open, ledger, reveal), `attack.py`,
`demo.py` (demo, tasks), `cluster.py` (distributed), `experiment.py` (experiment, report).

Commands are loaded when used (`COMMANDS`), so that `pol --help` and `pol --version` import
neither torch nor pol.crypto; tests/test_cli_structure.py checks that, and that the short help
listed here is each command's own.

Exit codes: 0 valid / success, 1 invalid proof (a check failed), 2 unusable input, 3 pending,
4 inconclusive (replay on other hardware cannot decide), 130 interrupted (pol.cli.exits).
"""

from __future__ import annotations

import os
import sys

from pol.cli import exits


def _running_as_pol() -> bool:
    """The console script, or `python -m pol.cli` (argv[0] is "-m" while -m imports us)."""
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 == "-m" or os.path.basename(argv0) in ("pol", "pol.exe", "pol-script.py")


if _running_as_pol():  # before the heavy imports (click, then torch when a command loads)
    exits.install_startup_interrupt()

import importlib  # noqa: E402

import click  # noqa: E402

from pol._version import __version__  # noqa: E402

# name: (module, attribute, short help shown by `pol --help`; must be the command's own)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "attack": ("pol.cli.attack", "attack", "Forge a proof for TARGET's final weights with attack "
               "NAME (docs/ATTACKS.md) and print its cost against honest training."),
    "calibrate": ("pol.cli.verify", "calibrate", "Measure the replay noise of PROOF on this "
                  "device and recommend δ, with the evidence."),
    "commit": ("pol.cli.train", "commit", "Commit to a training run before it starts: append "
               "the signed commitment (spec digest, salted seed, data root) for the spec "
               "`pol train` builds with the same options."),
    "demo": ("pol.cli.demo", "demo", "Train with a proof, verify it, tamper with a copy, and "
             "show that verification rejects it."),
    "distributed": ("pol.cli.cluster", "distributed", "Train TASK spread over untrusted workers "
                    "on torch.distributed: every update comes with a proof, the coordinator "
                    "verifies a budget of it and aggregates only verified work."),
    "experiment": ("pol.cli.experiment", "experiment", "Re-run the paper's experiment NAME (or "
                   "all): a CSV, a PNG plot and a markdown fragment with the paper's numbers "
                   "beside ours; `all` also writes REPRODUCTION.md."),
    "dispute": ("pol.cli.verify", "dispute", "Settle an ownership dispute: which proof (if "
                "any) shows who trained MODEL first."),
    "inspect": ("pol.cli.verify", "inspect", "Show what a proof holds (task, spec, E, S, k, T, "
                "checkpoints, sizes, digests)."),
    "keygen": ("pol.cli.protocol", "keygen", "Create an Ed25519 signing key pair and an X25519 "
               "encryption key pair."),
    "ledger": ("pol.cli.protocol", "ledger", "Inspect and verify a signed, hash-chained ledger."),
    "open": ("pol.cli.protocol", "open_", "Verify and decrypt a sealed proof FILE into a new "
             "directory."),
    "reveal": ("pol.cli.protocol", "reveal", "Lazy verification, prover side: reveal only the "
               "requested samples, with Merkle paths."),
    "report": ("pol.cli.experiment", "report", "Write one self-contained HTML page for a "
               "verification: SOURCE is the JSON of `pol verify --json` or a proof directory "
               "(verified first). Exit code as `pol verify`'s."),
    "seal": ("pol.cli.protocol", "seal", "Sign and encrypt the proof directory PROOF for one "
             "verifier."),
    "tasks": ("pol.cli.demo", "tasks", "List the built-in tasks."),
    "train": ("pol.cli.train", "train", "Train a built-in task and write its proof-of-learning "
              "(Algorithm 1)."),
    "verify": ("pol.cli.verify", "verify", "Verify a proof (Algorithm 2): a proof directory, or "
               "a sealed proof file (with --key)."),
}


def load_command(name: str) -> click.Command:
    """Import the module of command `name` and return the command."""
    module, attr, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), attr)


class _PolGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if name == "verify" and not ctx.resilient_parsing:
            from pol import pvalues  # torch-free: its helper imports scipy while we import torch
            pvalues.start_early()
        if cmd is None and name in COMMANDS:
            cmd = load_command(name)
            self.add_command(cmd, name)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None:
                stub = click.Command(name, help=COMMANDS[name][2])  # not loaded: its summary
                rows.append((name, stub.get_short_help_str(limit)))
            elif not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # while a command module loads (in-process: no startup handler)
            exits.fail("interrupted", exits.EXIT_INTERRUPTED)


@click.group(cls=_PolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="pol")  # no package metadata lookup
@click.option("-v", "--verbose", is_flag=True, help="Log what pol does.")
def main(verbose: bool) -> None:
    """pol — proof-of-learning for PyTorch: record a proof while training, verify it."""
    import logging  # here: `pol --help` and `--version` never get this far

    from pol import deferred_dynamo
    deferred_dynamo.install()  # pol's own process: the compiler stack loads only if used
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


__all__ = ["COMMANDS", "load_command", "main"]
