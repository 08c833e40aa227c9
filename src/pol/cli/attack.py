"""`pol attack NAME --target PROOF --out SPOOF`: run a spoofing attack and report its cost.

Loaded only when used (pol.attacks imports torch); `NAMES` lists pol.attacks.ATTACKS without
importing it (tests/test_attacks_optstate.py checks that the two agree).
"""

from __future__ import annotations

import sys

import click

from pol.cli import options as opt
from pol.cli import render
from pol.cli.exits import handle_errors

NAMES = ("retrain", "inverse-gradient", "concatenate", "directed-retrain", "finetune",
         "fineprune", "zhang-init", "zhang-data", "zhang-zero", "fang", "optimizer-state",
         "sparse-epoch")


def _check_out(out: str, target: str, force: bool) -> None:
    """As pol train: never delete a user's directory unasked, never the target itself."""
    import os

    from pol.errors import ConfigError
    if not os.path.lexists(out):
        return
    if os.path.exists(target) and os.path.samefile(out, target):
        raise ConfigError(f"--out {out} is the target proof")
    if not force and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(f"--out {out} exists and is not empty (pass --force to replace it)")


@click.command("attack")
@click.argument("name", type=click.Choice(list(NAMES)))
@click.option("--target", required=True, type=click.Path(),
              help="The proof to spoof (only its spec and final model weights are used).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the forged proof (new or empty; --force replaces it).")
@click.option("--steps", type=click.IntRange(1), help="Length of the forged run (rounded up to "
              "whole epochs; meaning per attack: see pol.attacks).")
@click.option("--seed", type=opt.SEED, help="The forger's own seed.")
@click.option("--claim-device", type=click.Choice(["cpu", "cuda", "mps", "xpu"]),
              help="Claim this device in the forged spec (digests recomputed).")
@click.option("--no-honest", is_flag=True, help="Do not time honest re-training (cost ratio in "
              "grad evals only).")
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE",
              help="An attack-specific setting (see the attack's docstring in pol.attacks), the "
              "value read as JSON where it parses (else a string); repeatable, e.g. "
              "--set optimizer=sgd --set losses=nan.")
@opt.json_file("Also write the result as JSON here.")
@opt.force("Replace --out if it exists and is not empty.")
@handle_errors
def attack(name, target, out, steps, seed, claim_device, no_honest, extra, json_out, force):
    """Forge a proof for TARGET's final weights with attack NAME (docs/ATTACKS.md) and print its
    cost against honest training. Exit 0 when the spoof was written (verify it with pol verify)."""
    from pol.attacks import run_attack
    _check_out(out, target, force)
    settings = {"measure_honest": not no_honest,
                **opt.given(steps=steps, seed=seed, claim_device=claim_device),
                **opt.parse_settings(extra)}
    render.attack(run_attack(name, target, out, **settings), json_out)
    sys.exit(0)
