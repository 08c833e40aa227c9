"""`pol verify`, `pol calibrate`, `pol inspect`, `pol dispute`: check a proof, measure its replay
noise, show it; settle which of several proofs shows who trained a model first.

Opening a sealed proof is pol.verifier.sealed's; the process lifecycle under torchrun is
pol.verifier.distributed.run_launched's; the options' defaults are VerifyOptions' and Limits'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import click

from pol.cli import options as opt
from pol.cli import render
from pol.cli.exits import handle_errors
from pol.verifier import VerifyOptions as V
from pol.verifier.calibrate import calibrate as _calibrate
from pol.verifier.policy import PRESETS, Policy

METRICS = list(opt.default_of(V, "metrics"))


@click.command()
@click.argument("proof", type=click.Path())
@opt.data()
@click.option("--q", "q", type=click.IntRange(1), default=opt.default_of(V, "q"),
              show_default=True, help="Largest updates replayed per epoch.")
@click.option("--all", "all_segments", is_flag=True, help="Replay every segment.")
@click.option("--delta", multiple=True, default=(opt.default_of(V, "delta"),), show_default=True,
              help="auto, a number (for the first metric) or METRIC=NUMBER; repeatable.")
@click.option("--metric", "metrics", multiple=True, type=opt.METRIC,
              help="Distance(s) compared with δ (default: all four).")
@click.option("--d1", type=opt.METRIC, default=opt.default_of(V, "d1"), show_default=True,
              help="Distance that ranks updates for top-Q.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True),
              default=opt.default_of(V, "alpha"), show_default=True,
              help="Significance of the initialization KS test.")
@opt.device(opt.default_of(V, "device"))
@opt.trust_module()
@opt.json_file("Write the report here.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False),
              help="Also write the report as one self-contained HTML page (plots embedded).")
@opt.limits()
@click.option("-V", "--verbose-segments", is_flag=True, help="List every replayed segment.")
@opt.parents()
@opt.registry()
@opt.ledger("Check the proof's training commitment on this ledger (a proof published there "
            "without one: the check is skipped, and says so); for a sealed proof file, also "
            "that it is the signer's latest, unrevoked publication.")
@click.option("--record-to", "record_to", type=click.Path(dir_okay=False),
              help="After a valid verification, append a signed verdict entry to this ledger.")
@opt.sign_with("Signing key for --record-to.")
@opt.passphrase_env("Environment variable holding the --sign-with key's passphrase.")
@click.option("--request-data", "request_data", type=click.Path(dir_okay=False),
              help="Lazy verification: stop after the checkpoint pass, write the samples needed "
              "(verdict PENDING, exit 3).")
@click.option("--reveal", type=click.Path(dir_okay=False),
              help="Lazy verification: replay using only these revealed samples.")
@click.option("--policy", type=click.Choice(sorted(PRESETS)),
              default=opt.default_of(V, "policy"), show_default=True,
              help="paper: Algorithm 2 exactly as published; hardened adds exact mode, relative "
              "error, random segments, init and loss checks.")
@click.option("--random", "random_per_epoch", type=click.IntRange(0),
              default=opt.default_of(V, "random_per_epoch"),  # None: the policy's
              help="hardened: extra randomly chosen segments per epoch  [default: the "
              f"policy's, {opt.default_of(Policy, 'random_per_epoch')}].")
@click.option("--key", "open_key", type=click.Path(dir_okay=False),
              help="For a sealed proof file: the verifier's encryption.key.")
@click.option("--from", "open_from", type=click.Path(dir_okay=False),
              help="For a sealed proof file: the prover's signing.pub it must be signed by.")
@click.option("--workers", type=click.IntRange(1), default=opt.default_of(V, "workers"),
              show_default=True,
              help="Replay segments in N processes (same result as 1; torch threads as set).")
@click.option("--min-update", "min_update", type=click.FloatRange(0),
              default=opt.default_of(V, "update_size_min"),  # None: the policy's
              help="hardened: at least one non-exact replayed segment must claim an ℓ2 update ≥ "
              "this many δ (else every step hides in the tolerance)  [default: the policy's, "
              f"{opt.default_of(Policy, 'update_size_min')}].")
@click.option("--require-exact", "require_exact", is_flag=True,
              help="hardened: fail unless replay is bitwise (exact mode, δ = 0): refuse any "
              "tolerance the prover's claims (device, precision, torch version) would allow.")
@handle_errors
def verify(proof, data, q, all_segments, delta, metrics, d1, alpha, device, trust_module,
           json_out, max_proof_gb, max_checkpoints, max_checkpoint_gb, max_replay_steps,
           max_dataset_gb, verbose_segments, parents, registry, ledger_db, record_to, sign_with,
           passphrase_env, request_data, reveal, policy, random_per_epoch, open_key, open_from,
           workers, min_update, require_exact, html_out):
    """Verify a proof (Algorithm 2): a proof directory, or a sealed proof file (with --key).
    Exit 0 valid, 1 invalid, 2 unusable input, 3 pending (--request-data), 4 inconclusive (a
    float32 proof replayed on other hardware failed only where drift can fail it)."""
    from pol.protocol.chain import record_verdict
    from pol.verifier import verify as run
    from pol.verifier.distributed import run_launched
    from pol.verifier.sealed import opened_proof
    if (record_to is None) != (sign_with is None):
        raise click.UsageError("--record-to and --sign-with go together")
    if record_to and request_data:
        raise click.UsageError("--record-to needs a complete verification, not --request-data")
    metrics = list(metrics) or METRICS
    options = V(q=q, all_segments=all_segments, delta=opt.parse_deltas(delta, metrics),
                metrics=tuple(metrics), d1=d1, alpha=alpha, data=data, device=device,
                trusted_modules=tuple(trust_module), progress=sys.stderr.isatty(),
                limits=opt.to_limits(max_proof_gb, max_checkpoints, max_checkpoint_gb,
                                     max_replay_steps, max_dataset_gb),
                policy=policy, random_per_epoch=random_per_epoch, parents=tuple(parents),
                registry=registry, ledger=ledger_db, request_data=request_data, reveal=reveal,
                workers=workers, update_size_min=min_update, require_exact=require_exact)

    def report(r):  # rank 0 (or the only process): print, then record a valid verdict
        render.opened_sealed(source)
        code = render.verified(r, data, verbose_segments, json_out, request_data)
        if html_out and code != 2:
            from pol.verifier.html import write_html
            render.html_written(write_html(html_out, r, source.path))
        if record_to and r.valid and code != 2:
            render.verdict_recorded(record_to, record_verdict(record_to, sign_with, r,
                                                              source.path, passphrase_env))
        return code

    with contextlib.ExitStack() as opened:  # closed by run_launched before a rank's os._exit
        source = opened.enter_context(opened_proof(proof, open_key, open_from, ledger_db))
        run_launched(lambda distributed: run(source.path, dataclasses.replace(
                         options, distributed=distributed,
                         progress=options.progress and not distributed)),
                     lambda r: render.verify_exit_code(r, data), report, opened.close)


@click.command("calibrate")
@click.argument("proof", type=click.Path())
@opt.data("Dataset (as for pol verify).")
@opt.device(opt.default_of(_calibrate, "device"),
            "Device to measure replay noise on (the verifier's).")
@click.option("--q", "q", type=click.IntRange(1), default=opt.default_of(_calibrate, "q"),
              help="Replay only the top-Q segments per epoch (default: all).")
@click.option("--margin", type=click.FloatRange(1), default=opt.default_of(_calibrate, "margin"),
              show_default=True, help="Recommended δ = margin × the largest replay error seen.")
@opt.trust_module()
@opt.json_file("Also write the calibration (the evidence) here as JSON.")
@handle_errors
def calibrate(proof, data, device, q, margin, trust_module, json_out):
    """Measure the replay noise of PROOF on this device and recommend δ, with the evidence."""
    cal = _calibrate(proof, data=data, device=device, q=q, margin=margin,
                     progress=sys.stderr.isatty(), trusted_modules=tuple(trust_module))
    render.calibration(cal, json_out)


@click.command()
@click.argument("proof", type=click.Path())
@opt.json_flag()
@handle_errors
def inspect(proof, as_json):
    """Show what a proof holds (task, spec, E, S, k, T, checkpoints, sizes, digests)."""
    from pol.proof.reader import inspect_proof
    render.inspection(inspect_proof(proof), as_json)


@click.command()
@click.argument("proofs", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model", required=True, type=click.Path(dir_okay=False),
              help="The disputed model weights (.safetensors; model.* or bare names).")
@opt.ledger("Ledger holding the claimants' commitments (earliest valid one wins).")
@opt.data("Dataset for the proofs (CIFAR directory or user .npz).")
@click.option("--q", "q", type=click.IntRange(1), default=opt.default_of(V, "q"), show_default=True)
@opt.device(opt.default_of(V, "device"))
@opt.parents()
@opt.registry()
@opt.json_flag()
@handle_errors
def dispute(proofs, model, ledger_db, data, q, device, parents, registry, as_json):
    """Settle an ownership dispute: which proof (if any) shows who trained MODEL first.
    Exit 0 if there is a winner, 1 otherwise."""
    from pol.verifier.dispute import dispute as run
    res = run(model, list(proofs), V(q=q, data=data, device=device, parents=tuple(parents),
                                     registry=registry), ledger=ledger_db)
    sys.exit(render.dispute(res.to_dict(), as_json))
