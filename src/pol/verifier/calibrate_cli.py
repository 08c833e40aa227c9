"""`pol calibrate`: the command over pol.verifier.calibrate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pol.cli import handle_errors


@click.command("calibrate")
@click.argument("proof", type=click.Path())
@click.option("--data", help="Dataset (as for pol verify).")
@click.option("--device", default="cpu", show_default=True,
              help="Device to measure replay noise on (the verifier's).")
@click.option("--q", "q", type=click.IntRange(1), default=None,
              help="Replay only the top-Q segments per epoch (default: all).")
@click.option("--margin", type=click.FloatRange(1), default=3.0, show_default=True,
              help="Recommended δ = margin × the largest replay error seen.")
@click.option("--trust-module", multiple=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False))
@handle_errors
def calibrate(proof, data, device, q, margin, trust_module, json_out):
    """Measure the replay noise of PROOF on this device and recommend δ, with the evidence."""
    from pol.verifier.calibrate import calibrate as run
    cal = run(proof, data=data, device=device, q=q, margin=margin,
              progress=sys.stderr.isatty(), trusted_modules=tuple(trust_module))
    click.echo(cal.render())
    if json_out:
        Path(json_out).write_text(json.dumps(cal.to_dict(), indent=1))
