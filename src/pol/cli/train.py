"""`pol train`, `pol commit`: record a proof while training a built-in task; commit to a run
before it starts."""

from __future__ import annotations

import sys

import click

from pol.cli import options as opt
from pol.cli import render
from pol.cli.exits import handle_errors


@click.command()
@opt.training_spec()
@click.option("--out", type=click.Path(file_okay=False), help="Proof directory.")
@opt.force("Overwrite an existing proof directory.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue an interrupted run in this directory from its last checkpoint.")
@click.option("--init-from", "init_from", type=click.Path(),
              help="Warm start: W_0 = this parent proof's final weights (chain of trust).")
@opt.ledger("Commit (spec, salted seed, data root) to this ledger before training, and publish "
            "the proof there after.")
@opt.sign_with("Signing key (signing.key) for --ledger.")
@click.option("--commitment", "commitment", type=click.Path(dir_okay=False),
              help="Use this existing commitment (pol commit --out) instead of committing now; "
                   "needs --ledger and --sign-with.")
@opt.passphrase_env("Environment variable holding the --sign-with key's passphrase.")
@click.option("--compress", is_flag=True, help="Lossless checkpoint codec (XOR with the previous "
              "checkpoint, byte shuffle, zstd): proof format v2, exact mode unaffected.")
@handle_errors
def train(task, epochs, k, seed, lr, batch_size, precision, device, deterministic, tf32, warmup,
          exact, data_dir, out, force, resume_dir, init_from, ledger_db, sign_with, commitment,
          passphrase_env, compress):
    """Train a built-in task and write its proof-of-learning (Algorithm 1)."""
    from pol.errors import ConfigError
    from pol.prover.trainer import resume_task, train_task
    if (ledger_db is None) != (sign_with is None):
        raise click.UsageError("--ledger and --sign-with go together")
    if commitment and not ledger_db:
        raise ConfigError("--commitment needs --ledger and --sign-with (to publish the proof)")
    if resume_dir and (init_from or ledger_db):
        raise click.UsageError("--resume continues a run as it was started: no --init-from or "
                               "--ledger")
    if not resume_dir and not out:
        raise click.UsageError("--out DIR is required (or --resume DIR)")
    progress = sys.stderr.isatty()
    r = (resume_task(resume_dir, data_dir=data_dir, progress=progress) if resume_dir else
         train_task(task, out, epochs=epochs, k=k, seed=seed, lr=lr, batch_size=batch_size,
                    precision=precision, device=device, deterministic=deterministic,
                    data_dir=data_dir, overwrite=force, progress=progress, init_from=init_from,
                    ledger=ledger_db, signing_key=sign_with, commitment=commitment,
                    passphrase_env=passphrase_env, compress=compress, tf32=tf32, warmup=warmup,
                    exact=exact))
    render.trained(r, init_from, ledger_db, commitment)


@click.command()
@opt.training_spec()
@opt.ledger("Ledger to append the signed commitment to.", required=True)
@opt.sign_with("Prover's signing key (signing.key).", required=True)
@opt.passphrase_env("Environment variable holding the key's passphrase.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Commitment file to write (salt; mode 0600): pass it to pol train --commitment.")
@opt.force("Overwrite --out if it exists.")
@handle_errors
def commit(task, epochs, k, seed, lr, batch_size, precision, device, deterministic, tf32, warmup,
           exact, data_dir, ledger_db, sign_with, passphrase_env, out, force):
    """Commit to a training run before it starts: append the signed commitment (spec digest,
    salted seed, data root) for the spec `pol train` builds with the same options."""
    from pathlib import Path

    from pol.errors import ConfigError
    from pol.protocol import commit as c
    from pol.prover.trainer import default_deterministic, default_exact
    from pol.registry import resolve_device
    from pol.tasks import build_spec
    if Path(out).exists() and not force:  # before anything is appended to the ledger
        raise ConfigError(f"--out {out} exists (pass --force to overwrite)")
    key = c.load_key(sign_with, passphrase_env)
    dev = resolve_device(device).type  # the spec `pol train` builds (pol.prover.trainer)
    spec, _, _ = build_spec(task, epochs=epochs, k=k, seed=seed, lr=lr, batch_size=batch_size,
                            precision=precision, device=dev,
                            deterministic=default_deterministic(deterministic, dev),
                            data_dir=data_dir, tf32=tf32, warmup=warmup,
                            exact=default_exact(exact, task, dev, precision, tf32))
    side = c.commit(ledger_db, key, spec)
    c.write_commitment_file(out, side, overwrite=force)
    render.committed(spec, side, ledger_db, out)
