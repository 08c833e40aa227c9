"""Training a built-in task with a proof (what `pol train` runs)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pol.datasets import ArrayDataset
from pol.prover.recorder import Recorder, run_loop
from pol.spec import TrainingSpec
from pol.step import MODEL_PREFIX, StepContext, build_context, lrs_at, numerics


@dataclass
class TrainResult:
    proof: Path
    root_digest: str
    spec: TrainingSpec
    final_loss: float
    test_accuracy: float
    train_seconds: float
    total_steps: int


@torch.no_grad()
def accuracy(ctx: StepContext, data: ArrayDataset, batch_size: int = 512) -> float:
    if len(data) == 0:
        return float("nan")
    ctx.model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        x = ctx.prepare(torch.from_numpy(data.x[i:i + batch_size]).to(ctx.device))
        pred = ctx.model(x).argmax(-1).cpu().numpy()  # classes, or next tokens for an LM
        correct += int((pred == data.y[i:i + batch_size]).sum())
    ctx.model.train()
    return correct / data.y.size


def train_spec(spec: TrainingSpec, train: ArrayDataset, test: ArrayDataset | None,
               out: str | os.PathLike, *, device: torch.device | None = None,
               overwrite: bool = False, progress: bool = False, durable: bool = True,
               init: dict | None = None, initial_state: dict | None = None,
               resume: bool = False, compress: bool = False,
               continue_from_stored: bool = True) -> TrainResult:
    device = device or torch.device(spec.device)
    # the numerics the spec records (threads, deterministic algorithms, TF32; pol's tasks: TF32
    # off), restored when training ends
    with numerics(spec, device):
        ctx = build_context(spec, device)  # W_0 drawn from the seed: the Recorder's check passes
        if initial_state is not None:
            ctx.model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in initial_state.items()
                                       if k.startswith(MODEL_PREFIX)})
        rec = Recorder(out, model=ctx.model, optimizer=ctx.optimizer, data=train, spec=spec,
                       overwrite=overwrite, durable=durable, init=init, resume=resume,
                       compress=compress, continue_from_stored=continue_from_stored)
        base = [spec.optimizer.lr] * len(ctx.optimizer.param_groups)
        T = rec.total_steps

        def lr_at(t: int) -> list[float]:
            return lrs_at(spec.schedule, base, t, T)

        t0 = time.perf_counter()
        final_loss = run_loop(rec, ctx, lr_at, progress=progress, desc=spec.task or "training")
        digest = rec.close()
        seconds = time.perf_counter() - t0
        acc = accuracy(ctx, test) if test is not None else float("nan")
    return TrainResult(proof=rec.path, root_digest=digest, spec=spec, final_loss=final_loss,
                       test_accuracy=acc, train_seconds=seconds, total_steps=T)


def default_deterministic(deterministic: bool | None, device_type: str) -> bool:
    """pol's default: deterministic algorithms on a GPU. Without them, replay noise on the same
    GPU at k ≥ 10 exceeds the auto δ and the default verifier rejects honest proofs (measured on an
    H100); with them, replay is bitwise exact (exact mode) for ~12% more training time. A CPU is
    deterministic already."""
    return device_type == "cuda" if deterministic is None else bool(deterministic)


def default_exact(exact: bool | None, task: str, device_type: str, precision: str = "fp32",
                  tf32: bool = False) -> bool:
    """pol's default for a built-in task: exact mode on a GPU (`pol.step.exact`) where the
    task's model supports it, in float32 without TF32. A float32 GPU proof replays bitwise
    only on the same kind of GPU: verified on a CPU, an honest ResNet-20 proof at the task's
    k = 100 is rejected (measured: relative error 0.68 > 0.5, H200 -> CPU), where its exact-mode
    proof replays bitwise on either, for 1.0-1.4x the training time (ResNet-20, H200). A CPU
    proof replays bitwise on other CPUs already. `exact` given (True, False): as given."""
    if exact is not None:
        return bool(exact)
    if device_type != "cuda" or precision != "fp32" or tf32:
        return False
    from pol.errors import ConfigError
    from pol.models import build_model
    from pol.step.exact import check_model
    from pol.tasks import get_task
    t = get_task(task)
    try:
        check_model(build_model(t.arch, **t.model_kwargs))
    except ConfigError:
        return False
    return True


def train_task(task: str, out: str | os.PathLike, *, epochs: int | None = None,
               k: int | None = None, seed: int = 0, lr: float | None = None,
               batch_size: int | None = None, precision: str = "fp32", device: str = "cpu",
               deterministic: bool | None = None, data_dir: str | None = None,
               dataset_params: dict | None = None, overwrite: bool = False, tf32: bool = False,
               warmup: int = 0,
               progress: bool = False, init_from: str | os.PathLike | None = None,
               ledger: str | os.PathLike | None = None, signing_key=None,
               commitment: str | os.PathLike | dict | None = None,
               passphrase_env: str | None = None, compress: bool = False,
               continue_from_stored: bool = True, exact: bool | None = None) -> TrainResult:
    """Train a built-in task (see `pol.tasks.TASKS`) and write its proof to `out`.

    `init_from`: warm start from a parent proof (W_0 = its final model weights, fresh optimizer
    state; the manifest's init names the parent's root digest: chain of trust, paper §V-D3).
    `ledger` + `signing_key` (an Ed25519 private key or a key file path): append a signed
    commitment before training and a proof entry after it (pol.protocol.commit).
    `commitment`: an existing commitment (the file `pol commit --out` wrote, or its content) to
    use instead of making a new one; the spec built here must be the committed one.
    `passphrase_env`: environment variable holding the key file's passphrase.
    `compress`: store checkpoints with the lossless codec (proof format v2).
    `continue_from_stored`: fp16 only; see `Recorder` (False: training continues from the unrounded
    state, and replay is only within δ — what a replay on other hardware looks like).
    `exact`: exact mode (`pol.step.exact`): the step in float64 rounded to float32 with a rounding
    log, so the proof replays bitwise on other hardware (a task with dropout is refused); None:
    `default_exact` (on a GPU where the model supports it)."""
    from pol.registry import resolve_device
    from pol.tasks import build_spec
    dev = resolve_device(device)
    spec, train, test = build_spec(task, epochs=epochs, k=k, seed=seed, lr=lr,
                                   batch_size=batch_size, precision=precision, device=dev.type,
                                   deterministic=default_deterministic(deterministic, dev.type),
                                   data_dir=data_dir,
                                   dataset_params=dataset_params, tf32=tf32, warmup=warmup,
                                   exact=default_exact(exact, task, dev.type, precision, tf32))
    init = initial_state = None
    if init_from is not None:
        from pol.errors import ConfigError
        from pol.protocol.chain import load_parent_state
        parent_digest, initial_state = load_parent_state(str(init_from))
        want = {MODEL_PREFIX + k: tuple(v.shape)
                for k, v in build_context(spec, torch.device("cpu")).model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in initial_state.items()}
        if want != got:
            raise ConfigError(f"--init-from {init_from}: the parent's model does not fit task "
                              f"{task} (different parameters or shapes)")
        init = {"kind": "parent", "root_digest": parent_digest}
    if (ledger is None) != (signing_key is None):
        from pol.errors import ConfigError
        raise ConfigError("--ledger and --sign-with go together")
    if commitment is not None and ledger is None:
        from pol.errors import ConfigError
        raise ConfigError("--commitment needs --ledger and --sign-with (to publish the proof)")
    side = None
    if ledger is not None:
        from pol.protocol import commit as _commit
        if isinstance(signing_key, (str, os.PathLike)):
            signing_key = _commit.load_key(str(signing_key), passphrase_env)
        if commitment is not None:
            existing = (dict(commitment) if isinstance(commitment, dict)
                        else _commit.read_commitment_file(commitment))
            side = _commit.check_commitment(str(ledger), signing_key, spec, existing)
        else:
            side = _commit.commit(str(ledger), signing_key, spec)
    r = train_spec(spec, train, test, out, device=dev, overwrite=overwrite, progress=progress,
                   init=init, initial_state=initial_state, compress=compress,
                   continue_from_stored=continue_from_stored)
    if side is not None:
        _commit.publish(str(ledger), signing_key, r.root_digest, side, r.proof)
    return r


def resume_task(out: str | os.PathLike, *, data_dir: str | None = None, device: str | None = None,
                progress: bool = False) -> TrainResult:
    """Continue an interrupted `train_task` run from its last complete checkpoint; the finished
    proof is the one an uninterrupted run would have written."""
    import json

    from pol.datasets import load_dataset
    from pol.errors import ConfigError, ProofWriteError
    from pol.proof import format as fmt
    from pol.registry import resolve_device
    try:
        info = json.loads((Path(out) / fmt.PROGRESS).read_text())["run"]
        spec = TrainingSpec.from_dict(info["spec"])
    except FileNotFoundError:
        if (Path(out) / fmt.MANIFEST).exists():
            raise ProofWriteError(f"{out} is a finished proof; nothing to resume") from None
        raise ProofWriteError(f"{out} holds no interrupted pol run (no progress.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProofWriteError(f"{out}: cannot read the interrupted run's description ({e})") from None
    if spec.data.name in ("user", "npz"):
        raise ConfigError("this run trained on user data: resume it with the Recorder API "
                          "(Recorder(..., resume=True))")
    train, test = load_dataset(spec.data.name, dict(spec.data.params), data_dir)
    dev = resolve_device(device or spec.device)
    return train_spec(spec, train, test, out, device=dev, progress=progress, resume=True)
