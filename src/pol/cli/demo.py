"""`pol demo`, `pol tasks`: the one-command tour, and the list of built-in tasks."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

import click

from pol.cli import render
from pol.cli.exits import handle_errors


@click.command()
@click.option("--task", default="digits-mlp", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Keep the proofs here (default: a "
              "temporary directory, removed afterwards).")
@handle_errors
def demo(task, out):
    """Train with a proof, verify it, tamper with a copy, and show that verification rejects it."""
    from pol.demo import run_demo
    keep = contextlib.nullcontext(out)
    with keep if out else tempfile.TemporaryDirectory(prefix="pol-demo-",
                                                      ignore_cleanup_errors=True) as base:
        t0 = time.perf_counter()
        ok = run_demo(task, Path(base), echo=click.echo)
        render.demo_finished(time.perf_counter() - t0, Path(base) if out else None)
    sys.exit(0 if ok else 1)


@click.command()
def tasks():
    """List the built-in tasks."""
    from pol.tasks import TASKS
    render.tasks(TASKS)
