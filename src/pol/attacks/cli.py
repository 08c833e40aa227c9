"""`pol attack NAME --target PROOF --out SPOOF`: run a spoofing attack and report its cost."""

from __future__ import annotations

import json
import os
import sys

import click

# the names of pol.attacks.ATTACKS, here so that `pol --help` does not import torch
NAMES = ("retrain", "inverse-gradient", "concatenate", "directed-retrain", "finetune",
         "fineprune", "zhang-init", "zhang-data", "zhang-zero", "fang", "optimizer-state",
         "sparse-epoch")


@click.command("attack")
@click.argument("name", type=click.Choice(list(NAMES)))
@click.option("--target", required=True, type=click.Path(),
              help="The proof to spoof (only its spec and final model weights are used).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the forged proof (new or empty; --force replaces it).")
@click.option("--steps", type=click.IntRange(1), help="Length of the forged run (rounded up to "
              "whole epochs; meaning per attack: see pol.attacks).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="The forger's own seed.")
@click.option("--claim-device", type=click.Choice(["cpu", "cuda", "mps", "xpu"]),
              help="Claim this device in the forged spec (digests recomputed).")
@click.option("--no-honest", is_flag=True, help="Do not time honest re-training (cost ratio in "
              "grad evals only).")
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE",
              help="An attack-specific setting (see the attack's docstring in pol.attacks), the "
              "value read as JSON where it parses (else a string); repeatable, e.g. "
              "--set optimizer=sgd --set losses=nan.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the result as JSON here.")
@click.option("--force", is_flag=True, help="Replace --out if it exists and is not empty.")
def attack(name, target, out, steps, seed, claim_device, no_honest, json_out, force=False,
           extra=()):
    """Forge a proof for TARGET's final weights with attack NAME (docs/ATTACKS.md) and print its
    cost against honest training. Exit 0 when the spoof was written (verify it with pol verify)."""
    if os.path.lexists(out):  # as pol train: never delete a user's directory unasked
        same = os.path.exists(target) and os.path.samefile(out, target)
        if same or not force and (not os.path.isdir(out) or os.listdir(out)):
            click.echo(f"error: --out {out} " + ("is the target proof" if same else
                       "exists and is not empty (pass --force to replace it)"), err=True)
            sys.exit(2)
    from pol.attacks import run_attack
    settings = {"measure_honest": not no_honest}
    if steps is not None:
        settings["steps"] = steps
    if seed is not None:
        settings["seed"] = seed
    if claim_device:
        settings["claim_device"] = claim_device
    for item in extra:
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key.isidentifier():
            click.echo(f"error: --set {item!r}: expected KEY=VALUE", err=True)
            sys.exit(2)
        try:
            settings[key] = json.loads(raw)
        except ValueError:
            settings[key] = raw
    try:
        res = run_attack(name, target, out, **settings)
    except Exception as e:  # noqa: BLE001 - one line, exit 2
        if os.environ.get("POL_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        click.echo(f"error: {msg}", err=True)
        sys.exit(2)
    click.echo(f"attack       {res.name} -> {res.out}")
    click.echo(f"settings     {json.dumps(res.settings, sort_keys=True)}")
    hs = f"{res.honest_seconds:.3f}s" if res.honest_seconds else "not measured"
    tr = f" ({res.time_ratio:.2f}× honest)" if res.time_ratio is not None else ""
    click.echo(f"wall time    {res.wall_seconds:.3f}s{tr}; honest training {hs}")
    click.echo(f"grad evals   {res.grad_evals} ({res.cost_ratio:.3f}× honest "
               f"{res.honest_grad_evals}); forward-only passes {res.forward_evals}")
    for n in res.notes:
        click.echo(f"note         {n}")
    if json_out:
        try:
            with open(json_out, "w") as f:
                json.dump(res.to_dict(), f, indent=1, sort_keys=True, default=str)
        except OSError as e:
            click.echo(f"error: {json_out}: {e.strerror or e}", err=True)
            sys.exit(2)
    sys.exit(0)
