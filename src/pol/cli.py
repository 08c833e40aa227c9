"""`pol` command line: a thin layer over the library.

Exit codes: 0 valid / success, 1 invalid proof (a check failed), 2 unusable input (missing or corrupt
file, unknown format version, wrong shapes, bad option, --data that is not the proof's dataset),
3 pending (`pol verify --request-data`: nothing replayed until the prover reveals the data), 130
interrupted (Ctrl-C). Errors are one line on stderr, never a traceback (set POL_DEBUG=1 to see
one).
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_at_startup(signum, frame):  # noqa: ARG001
    """Ctrl-C while pol starts (imports torch, parses options): leave at once, one line, no
    traceback, and no half-imported C++ extension unwinding (os._exit skips its destructors).
    Once a command runs, Ctrl-C raises KeyboardInterrupt again, so that its cleanup runs."""
    try:
        os.write(2, b"error: interrupted\n")
    finally:
        os._exit(130)


_startup_handler = [False]  # installed (and not yet handed over to the command)?


def _install_startup_interrupt() -> None:
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # the caller ignores Ctrl-C
            return
        signal.signal(signal.SIGINT, _interrupted_at_startup)
        _startup_handler[0] = True
    except ValueError:  # not the main thread: leave it
        pass


def _running_as_pol() -> bool:
    return __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") in (
        "pol", "pol.exe", "pol-script.py")


if _running_as_pol():  # the console script (or python -m pol.cli): before the heavy imports
    _install_startup_interrupt()

import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

EXIT_VALID, EXIT_INVALID, EXIT_UNUSABLE, EXIT_PENDING = 0, 1, 2, 3
EXIT_INTERRUPTED = 130


def _start_command() -> None:
    """Import torch while Ctrl-C still leaves at once (see _interrupted_at_startup), then let
    Ctrl-C raise KeyboardInterrupt for the command itself (handled: "interrupted", exit 130)."""
    if _startup_handler[0]:
        try:
            import torch  # noqa: F401 - every command but keys/ledger/seal needs it
        except ImportError:  # pragma: no cover
            pass
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _startup_handler[0] = False
        except ValueError:  # pragma: no cover - not the main thread
            pass


def _fail(msg: str, code: int) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Map pol's exceptions to exit codes and one-line messages."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _start_command()
        from pol.errors import (ConfigError, IntegrityError, PolError, ProofFormatError,
                                ProofWriteError)
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001
            if os.environ.get("POL_DEBUG"):
                raise
            if isinstance(e, IntegrityError):
                _fail(str(e), EXIT_INVALID)
            if isinstance(e, (ProofFormatError, ConfigError)):
                _fail(str(e), EXIT_UNUSABLE)
            if isinstance(e, ProofWriteError):
                _fail(str(e), EXIT_UNUSABLE)
            if isinstance(e, PolError):
                _fail(str(e), EXIT_UNUSABLE)
            try:
                from pol.crypto.errors import CryptoError
            except ImportError:  # pragma: no cover
                CryptoError = ()  # noqa: N806
            if CryptoError and isinstance(e, CryptoError):
                _fail(" ".join(str(e).split()) or type(e).__name__, e.exit_code)
            if isinstance(e, OSError):
                _fail(f"{e.filename or ''}: {e.strerror or e}", EXIT_UNUSABLE)
            _fail(f"unexpected {type(e).__name__}: {e} (set POL_DEBUG=1 for a traceback)",
                  EXIT_UNUSABLE)

    return wrapper


# commands whose module imports torch: loaded when used, so that `pol --help` stays light
_LAZY_COMMANDS = {
    "attack": ("pol.attacks.cli", "attack",
               "Forge a proof for TARGET's final weights with attack NAME (docs/ATTACKS.md)."),
}


class _PolGroup(click.Group):
    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in _LAZY_COMMANDS:
            import importlib
            mod, attr, _ = _LAZY_COMMANDS[name]
            cmd = getattr(importlib.import_module(mod), attr)
            self.add_command(cmd, name)
        return cmd

    def format_commands(self, ctx, formatter):
        rows = []
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None and name in _LAZY_COMMANDS:
                rows.append((name, click.utils.make_default_short_help(
                    _LAZY_COMMANDS[name][2], limit)))
            elif cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # a command without its own handler (pol attack)
            _fail("interrupted", EXIT_INTERRUPTED)


@click.group(cls=_PolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pol")
@click.option("-v", "--verbose", is_flag=True, help="Log what pol does.")
def main(verbose: bool) -> None:
    """pol — proof-of-learning for PyTorch: record a proof while training, verify it."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------------- train

@main.command()
@click.option("--task", default="digits-mlp", show_default=True, help="Built-in task (pol tasks).")
@click.option("--epochs", type=click.IntRange(1), help="Epochs (default: the task's).")
@click.option("--k", type=click.IntRange(1), help="Checkpoint interval in steps.")
@click.option("--out", type=click.Path(file_okay=False), help="Proof directory.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1000, min_open=True), help="Base learning rate.")
@click.option("--batch-size", type=click.IntRange(1), help="Batch size.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
              show_default=True, help="Storage precision of checkpoints.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--deterministic/--no-deterministic", default=None,
              help="torch.use_deterministic_algorithms: bitwise replay on the same kind of GPU "
              "(exact mode). Default: on for a GPU (about 12% slower on an H100), off on a CPU "
              "(already deterministic).")
@click.option("--data", "data_dir", type=click.Path(), help="Local dataset directory (CIFAR).")
@click.option("--force", is_flag=True, help="Overwrite an existing proof directory.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue an interrupted run in this directory from its last checkpoint.")
@click.option("--init-from", "init_from", type=click.Path(),
              help="Warm start: W_0 = this parent proof's final weights (chain of trust).")
@click.option("--ledger", "ledger_db", type=click.Path(dir_okay=False),
              help="Commit (spec, salted seed, data root) to this ledger before training, and "
                   "publish the proof there after.")
@click.option("--sign-with", "sign_with", type=click.Path(dir_okay=False),
              help="Signing key (signing.key) for --ledger.")
@click.option("--commitment", "commitment", type=click.Path(dir_okay=False),
              help="Use this existing commitment (pol commit --out) instead of committing now; "
                   "needs --ledger and --sign-with.")
@click.option("--passphrase-env", "passphrase_env", metavar="VAR",
              help="Environment variable holding the --sign-with key's passphrase.")
@click.option("--tf32", is_flag=True, help="GPU: allow TF32 (faster convolutions and matmuls; "
              "recorded in the spec, but replays on other hardware drift further).")
@click.option("--warmup", type=click.IntRange(0), default=0, show_default=True,
              help="Linear lr warm-up over this many steps (part of the schedule; damps the "
              "early growth that dominates cross-hardware replay error).")
@click.option("--compress", is_flag=True, help="Lossless checkpoint codec (XOR with the previous "
              "checkpoint, byte shuffle, zstd): proof format v2, exact mode unaffected.")
@handle_errors
def train(task, epochs, k, out, seed, lr, batch_size, precision, device, deterministic, data_dir,
          force, resume_dir, init_from, ledger_db, sign_with, commitment, passphrase_env,
          compress, tf32=False, warmup=0):
    """Train a built-in task and write its proof-of-learning (Algorithm 1)."""
    from pol.prover.trainer import resume_task, train_task
    if (ledger_db is None) != (sign_with is None):
        raise click.UsageError("--ledger and --sign-with go together")
    if commitment and not ledger_db:
        from pol.errors import ConfigError
        raise ConfigError("--commitment needs --ledger and --sign-with (to publish the proof)")
    if resume_dir and (init_from or ledger_db):
        raise click.UsageError("--resume continues a run as it was started: no --init-from or "
                               "--ledger")
    if resume_dir:
        r = resume_task(resume_dir, data_dir=data_dir, progress=sys.stderr.isatty())
    elif not out:
        raise click.UsageError("--out DIR is required (or --resume DIR)")
    else:
        r = train_task(task, out, epochs=epochs, k=k, seed=seed, lr=lr, batch_size=batch_size,
                       precision=precision, device=device, deterministic=deterministic,
                       data_dir=data_dir, overwrite=force, progress=sys.stderr.isatty(),
                       init_from=init_from, ledger=ledger_db, signing_key=sign_with,
                       commitment=commitment, passphrase_env=passphrase_env, compress=compress,
                       tf32=tf32, warmup=warmup)
    click.echo(f"trained {r.spec.task}: {r.total_steps} steps in {r.train_seconds:.1f}s, "
               f"final loss {r.final_loss:.4f}, test accuracy {r.test_accuracy:.2%}")
    click.echo(f"proof: {r.proof}  root digest {r.root_digest}")
    if init_from:
        click.echo(f"warm start from parent proof {init_from}")
    if ledger_db:
        click.echo(("used the commitment in " + commitment if commitment else
                    "committed before training")
                   + f" and published on ledger {ledger_db} "
                   f"(salt in {Path(r.proof) / 'commitment.json'})")


@main.command()
@click.option("--task", default="digits-mlp", show_default=True, help="Built-in task (pol tasks).")
@click.option("--epochs", type=click.IntRange(1), help="Epochs (default: the task's).")
@click.option("--k", type=click.IntRange(1), help="Checkpoint interval in steps.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1000, min_open=True), help="Base learning rate.")
@click.option("--batch-size", type=click.IntRange(1), help="Batch size.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
              show_default=True, help="Storage precision of checkpoints.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto (as for "
              "pol train: part of the spec).")
@click.option("--deterministic/--no-deterministic", default=None,
              help="As for pol train (part of the spec; default: on for a GPU).")
@click.option("--tf32", is_flag=True, help="As for pol train (part of the spec).")
@click.option("--warmup", type=click.IntRange(0), default=0, help="As for pol train.")
@click.option("--data", "data_dir", type=click.Path(), help="Local dataset directory (CIFAR).")
@click.option("--ledger", "ledger_db", required=True, type=click.Path(dir_okay=False),
              help="Ledger to append the signed commitment to.")
@click.option("--sign-with", "sign_with", required=True, type=click.Path(dir_okay=False),
              help="Prover's signing key (signing.key).")
@click.option("--passphrase-env", "passphrase_env", metavar="VAR",
              help="Environment variable holding the key's passphrase.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Commitment file to write (salt; mode 0600): pass it to pol train --commitment.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@handle_errors
def commit(task, epochs, k, seed, lr, batch_size, precision, device, deterministic, data_dir,
           ledger_db, sign_with, passphrase_env, out, force, tf32=False, warmup=0):
    """Commit to a training run before it starts: append the signed commitment (spec digest,
    salted seed, data root) for the spec `pol train` builds with the same options."""
    from pol.protocol import commit as _commit
    from pol.registry import resolve_device
    from pol.prover.trainer import default_deterministic
    from pol.tasks import build_spec
    from pol.errors import ConfigError
    if Path(out).exists() and not force:
        raise ConfigError(f"--out {out} exists (pass --force to overwrite)")
    key = _commit.load_key(sign_with, passphrase_env)
    spec, _, _ = build_spec(task, epochs=epochs, k=k, seed=seed, lr=lr, batch_size=batch_size,
                            precision=precision, device=resolve_device(device).type,
                            deterministic=default_deterministic(deterministic,
                                                                resolve_device(device).type),
                            data_dir=data_dir, tf32=tf32, warmup=warmup)
    side = _commit.commit(ledger_db, key, spec)
    _commit.write_commitment_file(out, side, overwrite=force)
    click.echo(f"committed {spec.task} (spec digest {side['spec_digest']}) on ledger {ledger_db}: "
               f"seq {side['ledger_seq']} ({side['entry_hash']})")
    click.echo(f"commitment file (keep it private until the proof is published): {out}")


@main.command()
def tasks():
    """List the built-in tasks."""
    from pol.tasks import TASKS
    for t in TASKS.values():
        click.echo(f"{t.name:20} {t.description} (E={t.epochs}, k={t.k}, batch {t.batch_size}, "
                   f"{t.optimizer.name} lr {t.optimizer.lr})")


# --------------------------------------------------------------------------------------- verify

def _parse_deltas(values: tuple[str, ...], metrics: list[str]):
    if not values or values == ("auto",):
        return "auto"
    out = {}
    for v in values:
        if v == "auto":
            continue
        if "=" in v:
            m, _, num = v.partition("=")
        else:
            m, num = metrics[0], v
        if m not in metrics:
            raise click.BadParameter(f"{v!r}: metric {m!r} is not compared (compared: "
                                     f"{', '.join(metrics)}; add --metric {m})",
                                     param_hint="--delta")
        try:
            x = float(num)
        except ValueError:
            raise click.BadParameter(f"{v!r}: expected auto, a number, or METRIC=NUMBER",
                                     param_hint="--delta") from None
        if not x >= 0:
            raise click.BadParameter("δ must be a non-negative number", param_hint="--delta")
        out[m] = x
    return out


def _is_sealed(path: str) -> bool:
    from pol.crypto.seal import is_sealed  # needs `cryptography`; only for files
    return is_sealed(path)


@main.command()
@click.argument("proof", type=click.Path())
@click.option("--data", help="The proof's dataset when pol cannot rebuild it: a directory (CIFAR) "
              "or an .npz with arrays x, y (user data). Built-in datasets take none.")
@click.option("--q", "q", type=click.IntRange(1), default=1, show_default=True,
              help="Largest updates replayed per epoch.")
@click.option("--all", "all_segments", is_flag=True, help="Replay every segment.")
@click.option("--delta", multiple=True, default=("auto",), show_default=True,
              help="auto, a number (for the first metric) or METRIC=NUMBER; repeatable.")
@click.option("--metric", "metrics", multiple=True,
              type=click.Choice(["l1", "l2", "linf", "cos"]),
              help="Distance(s) compared with δ (default: all four).")
@click.option("--d1", type=click.Choice(["l1", "l2", "linf", "cos"]), default="l2",
              show_default=True, help="Distance that ranks updates for top-Q.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True), default=0.01,
              show_default=True, help="Significance of the initialization KS test.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--trust-module", multiple=True, help="Allow the proof's model factory from this "
              "Python package.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--max-proof-gb", type=click.FloatRange(0, min_open=True), default=64,
              show_default=True, help="Refuse proofs larger than this.")
@click.option("--max-checkpoints", type=click.IntRange(1), default=250_000, show_default=True,
              help="Verifier budget: refuse proofs with more checkpoints.")
@click.option("--max-checkpoint-gb", type=click.FloatRange(0, min_open=True), default=2,
              show_default=True, help="Verifier budget: refuse a checkpoint larger than this "
              "(decoded, for a compressed proof).")
@click.option("--max-replay-steps", type=click.IntRange(1), default=1_000_000,
              show_default=True, help="Verifier budget: refuse to replay more steps.")
@click.option("--max-dataset-gb", type=click.FloatRange(0, min_open=True), default=1,
              show_default=True, help="Verifier budget: refuse to generate a dataset (synthetic-*) "
              "from the proof's parameters that needs more memory.")
@click.option("-V", "--verbose-segments", is_flag=True, help="List every replayed segment.")
@click.option("--parent", "parents", multiple=True, type=click.Path(),
              help="For a warm-started proof (pol train --init-from): the parent proof's "
              "directory (the proof directory itself, not a folder of proofs). Used when its "
              "root digest is the one the proof names, and verified as well. Repeatable: one "
              "per generation of a chain.")
@click.option("--registry", type=click.Path(dir_okay=False),
              help="Ledger DB of previously verified proofs (verdict entries).")
@click.option("--ledger", "ledger_db", type=click.Path(dir_okay=False),
              help="Check the proof's training commitment on this ledger (a proof published "
              "there without one: the check is skipped, and says so); for a sealed proof file, "
              "also that it is the signer's latest, unrevoked publication.")
@click.option("--record-to", "record_to", type=click.Path(dir_okay=False),
              help="After a valid verification, append a signed verdict entry to this ledger.")
@click.option("--sign-with", "sign_with", type=click.Path(dir_okay=False),
              help="Signing key for --record-to.")
@click.option("--passphrase-env", "passphrase_env", metavar="VAR",
              help="Environment variable holding the --sign-with key's passphrase.")
@click.option("--request-data", "request_data", type=click.Path(dir_okay=False),
              help="Lazy verification: stop after the checkpoint pass, write the samples needed "
              "(verdict PENDING, exit 3).")
@click.option("--reveal", type=click.Path(dir_okay=False),
              help="Lazy verification: replay using only these revealed samples.")
@click.option("--policy", type=click.Choice(["hardened", "paper"]), default="hardened",
              show_default=True, help="paper: Algorithm 2 exactly as published; hardened adds "
              "exact mode, relative error, random segments, init and loss checks.")
@click.option("--random", "random_per_epoch", type=click.IntRange(0), default=1,
              show_default=True, help="hardened: extra randomly chosen segments per epoch.")
@click.option("--key", "open_key", type=click.Path(dir_okay=False),
              help="For a sealed proof file: the verifier's encryption.key.")
@click.option("--from", "open_from", type=click.Path(dir_okay=False),
              help="For a sealed proof file: the prover's signing.pub it must be signed by.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Replay segments in N processes (same result as 1; torch threads as set).")
@click.option("--min-update", "min_update", type=click.FloatRange(0), default=1.25,
              show_default=True, help="hardened: at least one non-exact replayed segment must "
              "claim an ℓ2 update ≥ this many δ (else every step hides in the tolerance).")
@click.option("--require-exact", "require_exact", is_flag=True,
              help="hardened: fail unless replay is bitwise (exact mode, δ = 0): refuse any "
              "tolerance the prover's claims (device, precision, torch version) would allow.")
@handle_errors
def verify(proof, data, q, all_segments, delta, metrics, d1, alpha, device, trust_module,
           json_out, max_proof_gb, verbose_segments, parents, registry, ledger_db, record_to,
           sign_with, request_data, reveal, policy, random_per_epoch, open_key, open_from,
           passphrase_env=None, workers=1, min_update=1.25, require_exact=False,
           max_checkpoints=250_000, max_checkpoint_gb=2.0, max_replay_steps=1_000_000,
           max_dataset_gb=1.0):
    """Verify a proof (Algorithm 2): a proof directory, or a sealed proof file (with --key).
    Exit 0 valid, 1 invalid, 2 unusable input, 3 pending (--request-data)."""
    if os.path.isfile(proof) and _is_sealed(proof):  # other files: the reader's own message
        from pol.errors import ConfigError
        if not open_key:
            raise ConfigError(f"{proof} is a sealed proof: pass --key VERIFIER_KEY to open it")
        from pol.crypto import open_checked
        tmp = Path(tempfile.mkdtemp(prefix="pol-sealed-"))
        try:
            # with --ledger: also refuses an old (superseded) or revoked sealed proof
            opened = open_checked(proof, open_key, tmp / "proof", open_from, ledger=ledger_db)
            click.echo(f"opened sealed proof: signed by {opened.signer_key_id}"
                       + ("" if open_from else " (signer NOT pinned: pass --from)"))
            return verify.callback.__wrapped__(  # type: ignore[attr-defined]
                str(tmp / "proof"), data, q, all_segments, delta, metrics, d1, alpha, device,
                trust_module, json_out, max_proof_gb, verbose_segments, parents, registry,
                ledger_db, record_to, sign_with, request_data, reveal, policy,
                random_per_epoch, None, None, passphrase_env, workers, min_update,
                require_exact=require_exact, max_checkpoints=max_checkpoints,
                max_checkpoint_gb=max_checkpoint_gb, max_replay_steps=max_replay_steps,
                max_dataset_gb=max_dataset_gb)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    from pol.proof.format import Limits
    from pol.verifier import VerifyOptions
    from pol.verifier import verify as run_verify
    metrics = list(metrics) or ["l1", "l2", "linf", "cos"]
    limit = int(max_proof_gb * 2**30)
    opts = VerifyOptions(q=q, all_segments=all_segments, delta=_parse_deltas(delta, metrics),
                         metrics=tuple(metrics), d1=d1, alpha=alpha, data=data, device=device,
                         trusted_modules=tuple(trust_module), progress=sys.stderr.isatty(),
                         limits=Limits(max_total_bytes=limit, max_file_bytes=limit,
                                       max_checkpoints=max_checkpoints,
                                       max_checkpoint_bytes=int(max_checkpoint_gb * 2**30),
                                       max_replay_steps=max_replay_steps,
                                       max_dataset_bytes=int(max_dataset_gb * 2**30)),
                         policy=policy, random_per_epoch=random_per_epoch,
                         parents=tuple(parents), registry=registry, ledger=ledger_db,
                         request_data=request_data, reveal=reveal, workers=workers,
                         update_size_min=min_update, require_exact=require_exact)
    if (record_to is None) != (sign_with is None):
        raise click.UsageError("--record-to and --sign-with go together")
    if record_to and request_data:
        raise click.UsageError("--record-to needs a complete verification, not --request-data")
    from pol.verifier import distributed as _dist
    distributed = _dist.init_from_env()
    if distributed:  # under torchrun: the ranks share the replays, rank 0 reports
        import dataclasses
        opts = dataclasses.replace(opts, distributed=True, progress=False)
        ok = False
        try:
            report = run_verify(proof, opts)
            lead = _dist.rank() == 0
            ok = True
        finally:
            _dist.finish(ok)
        if not lead:
            _dist.leave(_verify_exit(report, data))
    else:
        report = run_verify(proof, opts)
    if _verify_exit(report, data) == EXIT_UNUSABLE:  # nothing was verified
        why = next(c.reason for c in report.checks if c.name == "dataset commitment")
        click.echo(f"error: --data {data}: {why}. Pass the dataset this proof was trained on.",
                   err=True)
        if distributed:
            _dist.leave(EXIT_UNUSABLE)
        sys.exit(EXIT_UNUSABLE)
    click.echo(report.render(verbose=verbose_segments))
    if json_out:
        Path(json_out).write_text(report.to_json())
    if request_data and report.valid:
        click.echo(f"data request written to {request_data}: verification pending until the "
                   "prover reveals it (pol reveal), then pol verify --reveal (exit 3: pending)")
    if record_to and report.valid:
        from pol.protocol.chain import record_verdict
        e = record_verdict(record_to, sign_with, report, proof, passphrase_env)
        click.echo(f"verdict recorded in {record_to}: seq {e.seq} ({e.entry_hash})")
    if distributed:
        _dist.leave(_verify_exit(report, data))
    sys.exit(_verify_exit(report, data))


def _verify_exit(report, data: str | None) -> int:
    """0 valid, 1 invalid, 3 pending; 2 when the only failure is the user's --data not being the
    committed dataset (the user's mistake: the proof was not checked)."""
    failed = {c.name for c in report.checks if c.failed}
    if data and failed == {"dataset commitment"}:
        return EXIT_UNUSABLE
    if not report.valid:
        return EXIT_INVALID
    return EXIT_PENDING if report.pending else EXIT_VALID


@main.command()
@click.option("--request", "request", required=True, type=click.Path(dir_okay=False),
              help="The verifier's data request (pol verify --request-data).")
@click.option("--proof", "proof", required=True, type=click.Path(), help="The proof directory.")
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False),
              help="The private dataset: .npz with arrays x and y.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Reveal file to write (.npz).")
@handle_errors
def reveal(request, proof, data, out):
    """Lazy verification, prover side: reveal only the requested samples, with Merkle paths."""
    from pol.protocol.lazy import make_reveal, read_request
    r = make_reveal(read_request(request), proof, data, out)
    click.echo(f"revealed {r['samples']} sample(s) ({r['fraction']:.1%} of the dataset) "
               f"with inclusion paths: {out}")


@main.command()
@click.argument("proofs", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model", required=True, type=click.Path(dir_okay=False),
              help="The disputed model weights (.safetensors; model.* or bare names).")
@click.option("--ledger", "ledger_db", type=click.Path(dir_okay=False),
              help="Ledger holding the claimants' commitments (earliest valid one wins).")
@click.option("--data", help="Dataset for the proofs (CIFAR directory or user .npz).")
@click.option("--q", "q", type=click.IntRange(1), default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--parent", "parents", multiple=True, type=click.Path(),
              help="A directory that may hold a parent proof of a warm-started claimant.")
@click.option("--registry", type=click.Path(dir_okay=False),
              help="Ledger DB of previously verified proofs (chain of trust).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def dispute(proofs, model, ledger_db, data, q, device, parents, registry, as_json):
    """Settle an ownership dispute: which proof (if any) shows who trained MODEL first.
    Exit 0 if there is a winner, 1 otherwise."""
    from pol.protocol.dispute import dispute as run_dispute
    from pol.verifier import VerifyOptions
    res = run_dispute(model, list(proofs), VerifyOptions(q=q, data=data, device=device,
                                                   parents=tuple(parents), registry=registry),
                      ledger=ledger_db)
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        for c in res["claims"]:
            ok = c["valid"] and c["ends_at_model"]
            click.echo(f"{'ok  ' if ok else 'FAIL'} {c['proof']}: "
                       + ("; ".join(c["reasons"]) or "valid, ends within δ of the model")
                       + (f" [committed seq {c['commitment']['commitment_seq']}]"
                          if c["commitment"] else ""))
        click.echo(f"winner: {res['winner']} — {res['why']}" if res["winner"] else
                   f"no winner: {res['why']}")
    sys.exit(EXIT_VALID if res["winner"] else EXIT_INVALID)


@main.command()
@click.argument("proof", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def inspect(proof, as_json):
    """Show what a proof holds (task, spec, E, S, k, T, checkpoints, sizes, digests)."""
    from pol.proof.reader import inspect_proof
    info = inspect_proof(proof)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    spec = info["spec"]
    opt = spec["optimizer"]
    click.echo(f"proof        {info['path']} (format v{info['format_version']}, "
               f"created {info['created']})")
    click.echo(f"root digest  {info['root_digest']}")
    click.echo(f"task         {info['task'] or '(custom)'}: model {spec['model']['arch']} "
               f"{json.dumps(spec['model']['kwargs'])}, init {spec['model']['init']}")
    click.echo(f"data         {spec['data']['name']} {json.dumps(spec['data']['params'])}, "
               f"{spec['data']['size']} samples, root {spec['data']['root'][:16]}…, "
               f"augment {spec['data']['augment']}")
    click.echo(f"optimizer    {_describe_optimizer(opt)}; schedule "
               f"{_describe_schedule(spec['schedule'])}; loss {spec['loss']}; "
               f"batch {spec['batch_size']}")
    click.echo(f"steps        E={info['epochs']} S={info['steps_per_epoch']} "
               f"T={info['total_steps']} k={info['k']}; {info['num_checkpoints']} checkpoints")
    click.echo(f"made on      {spec['device']}, deterministic={spec['deterministic']}, "
               f"torch {spec['torch_version']}, seed {spec['seed']}, "
               f"precision {spec['precision']}"
               + (f", tf32 {spec['tf32']}" if spec.get("tf32") else ""))
    click.echo(f"size         {info['total_bytes'] / 1e6:.2f} MB total, "
               f"{info['checkpoint_bytes_mean'] / 1e3:.1f} kB per checkpoint")
    for name, f in info["files"].items():
        if not name.startswith("checkpoints/") or "/step_000000000." in name:  # v1 and v2
            click.echo(f"  {f['sha256'][:16]}…  {f['size']:>10}  {name}")
    n_more = info["num_checkpoints"] - 1
    if n_more:
        click.echo(f"  … and {n_more} more checkpoint(s)")


def _describe_optimizer(opt: dict) -> str:
    """The hyperparameters the optimizer uses (Adam has betas and eps, not momentum)."""
    name = opt["name"]
    if name == "sgd":
        out = f"sgd lr {opt['lr']} momentum {opt.get('momentum', 0.0)}"
        if opt.get("nesterov"):
            out += " (nesterov)"
    else:
        b1, b2 = opt.get("betas", (0.9, 0.999))
        out = f"{name} lr {opt['lr']} betas ({b1}, {b2}) eps {opt.get('eps', 1e-8)}"
    return out + f" wd {opt.get('weight_decay', 0.0)}"


def _describe_schedule(s: dict) -> str:
    name = s["name"]
    if name == "multistep":
        out = f"multistep (×{s.get('gamma')} at steps {list(s.get('milestones', []))})"
    elif name == "cosine":
        out = (f"cosine (to {s.get('min_lr', 0.0)} over "
               f"{s.get('total_steps') or 'the whole run'} steps)")
    elif name == "recorded":
        out = "recorded (none declared: each step's recorded lr)"
    else:
        out = name
    w = s.get("warmup_steps") or 0
    if w and name != "recorded":
        out = f"linear warm-up over {w} step(s), then {out}"
    return out


# ----------------------------------------------------------------------------------------- demo

@main.command()
@click.option("--task", default="digits-mlp", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Keep the proofs here (default: a "
              "temporary directory, removed afterwards).")
@handle_errors
def demo(task, out):
    """Train with a proof, verify it, tamper with a copy, and show that verification rejects it."""
    from pol.demo import run_demo
    keep = out is not None
    base = Path(out) if keep else Path(tempfile.mkdtemp(prefix="pol-demo-"))
    try:
        t0 = time.perf_counter()
        ok = run_demo(task, base, echo=click.echo)
        click.echo(f"demo finished in {time.perf_counter() - t0:.1f}s"
                   + (f"; proofs kept in {base}" if keep else ""))
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    sys.exit(0 if ok else 1)


# ------------------------------------------------------------------------------------ calibrate

@main.command("calibrate")
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


def _register_optional() -> None:
    """Attach command groups that live in other subpackages (protocol, …)."""
    try:
        from pol.crypto import cli as crypto_cli
    except ImportError:
        return
    for name in ("keygen", "seal", "open_cmd", "open", "ledger"):
        cmd = getattr(crypto_cli, name, None)
        if isinstance(cmd, click.Command) and cmd.name not in main.commands:
            main.add_command(cmd)
    # `pol attack` (pol.attacks imports torch) is loaded when used: _LAZY_COMMANDS


_register_optional()

if __name__ == "__main__":
    main()
