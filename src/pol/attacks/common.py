"""Shared machinery of the spoofing attacks: what an outsider may read, a step runner that uses
the same `update()` as the verifier, and a writer for forged proofs in format v1.

The public information an attack may use is exactly what `load_public` returns: the target's spec
(architecture, loss, optimizer, hyperparameters, dataset reference), the MODEL weights of its final
checkpoint, and the dataset rebuilt from its public reference. Never W_0, never an intermediate
checkpoint, never the optimizer state, never the seed: the forger picks its own seed.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pol.errors import ConfigError
from pol.proof import format as fmt
from pol.proof.hashing import merkle_root, sample_leaves
from pol.proof.writer import ProofWriter
from pol.spec import TrainingSpec
from pol.step import MODEL_PREFIX, StepContext, load_state, state_tensors, update

DEFAULT_FORGER_SEED = 1234567


@dataclass
class AttackResult:
    """What an attack produced and what it cost, against honest training of the same model."""

    name: str
    settings: dict
    out: Path
    wall_seconds: float
    grad_evals: int  # forward+backward passes (or solver function calls, each one such pass)
    honest_seconds: float | None
    honest_grad_evals: int
    notes: list[str] = field(default_factory=list)
    forward_evals: int = 0  # forward-only passes (losses recorded in the proof), not in grad_evals

    @property
    def cost_ratio(self) -> float:
        """grad evals of the spoof / grad evals of honest training."""
        return self.grad_evals / max(self.honest_grad_evals, 1)

    @property
    def time_ratio(self) -> float | None:
        if not self.honest_seconds:
            return None
        return self.wall_seconds / self.honest_seconds

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["cost_ratio"] = self.cost_ratio
        d["time_ratio"] = self.time_ratio
        return d


@dataclass
class PublicInfo:
    """Everything an outsider knows about the target."""

    target: Path
    spec: TrainingSpec
    w_final: dict[str, torch.Tensor]  # "model.*" entries of the final checkpoint only
    total_steps: int
    steps_per_epoch: int
    train: Any  # ArrayDataset
    leaves: np.ndarray
    target_digest: str


def load_public(target: str | os.PathLike, data_dir: str | None = None) -> PublicInfo:
    from pol.proof.reader import open_proof
    from pol.datasets import load_training_set as load_verifier_data

    p = open_proof(target)
    m = p.manifest
    final = p.load_checkpoint(m.total_steps)
    w_final = {k: v.clone() for k, v in final.items() if k.startswith(MODEL_PREFIX)}
    del final  # the optimizer state of the target is not public
    train = load_verifier_data(m.spec, data_dir)
    leaves = sample_leaves(train.x, train.y)
    if merkle_root(leaves).hex() != m.spec.data.root or len(train) != m.spec.data.size:
        raise ConfigError("the dataset rebuilt from the target's spec does not match its "
                          "committed root")
    return PublicInfo(target=Path(target), spec=m.spec, w_final=w_final,
                      total_steps=m.total_steps, steps_per_epoch=m.steps_per_epoch,
                      train=train, leaves=leaves, target_digest=m.root_digest)


def forged_spec(pub: PublicInfo, seed: int, **changes: Any) -> TrainingSpec:
    """The target's spec with the forger's own seed (and any other changes), made on this
    machine."""
    return replace(pub.spec, seed=int(seed), device="cpu", deterministic=False,
                   torch_version=torch.__version__, **changes)


def steps_per_epoch(spec: TrainingSpec) -> int:
    n, B = spec.data.size, spec.batch_size
    return n // B if spec.drop_last else math.ceil(n / B)


def context(spec: TrainingSpec) -> StepContext:
    """Model initialized from the spec's (forger's) seed, optimizer, step pieces; on CPU."""
    from pol.step import build_context
    return build_context(spec, torch.device("cpu"))


def load_model_weights(ctx: StepContext, w: dict[str, torch.Tensor]) -> None:
    sd = ctx.model.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            v.copy_(w[MODEL_PREFIX + k].to(v.dtype))


def clone_state(ctx: StepContext) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state_tensors(ctx.model, ctx.optimizer).items()}


def model_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def param_names(ctx: StepContext) -> list[str]:
    return [MODEL_PREFIX + n for n, _ in ctx.model.named_parameters()]


# ------------------------------------------------------------------------------ per-step plan

@dataclass
class Plan:
    """Per-step records of a forged proof: batch indices (padded with -1), lrs, losses."""

    indices: np.ndarray  # int64 [T, B]
    lrs: np.ndarray  # float64 [T, G]
    losses: np.ndarray  # float32 [T]

    @property
    def T(self) -> int:
        return len(self.indices)

    def batch(self, t: int) -> np.ndarray:
        row = self.indices[t]
        return row[row >= 0]


def make_plan(spec: TrainingSpec, groups: int = 1) -> Plan:
    """Batches in the order the forger's seed gives (what an honest run with that seed would use)
    and the lr the declared schedule gives, for spec.epochs epochs."""
    from pol.step import epoch_order
    S = steps_per_epoch(spec)
    B = spec.batch_size
    n = spec.data.size
    T = spec.epochs * S
    idx = np.full((T, B), -1, dtype=np.int64)
    for e in range(spec.epochs):
        order = epoch_order(spec.seed, e, n)
        for s in range(S):
            b = order[s * B:(s + 1) * B]
            idx[e * S + s, :len(b)] = b
    lr = np.array([spec.schedule.lr_at(spec.optimizer.lr, t, T) for t in range(T)])
    lrs = np.repeat(lr[:, None], groups, axis=1).astype(np.float64)
    return Plan(indices=idx, lrs=lrs, losses=np.full(T, np.nan, dtype=np.float32))


def run_steps(ctx: StepContext, data, plan: Plan, t_from: int, t_to: int,
              keep: Callable[[int], bool], states: dict[int, dict], *,
              step_fn: Callable | None = None) -> int:
    """Run steps [t_from, t_to) of `plan` with the verifier's `update()` (or `step_fn`, same
    signature); store a copy of the state after step t in states[t] whenever keep(t). Returns
    the number of forward+backward passes."""
    fn = step_fn or update
    for t in range(t_from, t_to):
        idx = plan.batch(t)
        loss = fn(ctx, torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx]),
                  plan.lrs[t].tolist(), t)
        plan.losses[t] = float(loss)
        if keep(t + 1):
            states[t + 1] = clone_state(ctx)
    return t_to - t_from


@torch.no_grad()
def forward_loss(ctx: StepContext, data, idx: np.ndarray, t: int) -> float:
    """The loss at the model's current weights on a batch (forward only, same pipeline as
    `update()`), for the informational losses of a forged proof."""
    from pol.step import seed_step
    seed_step(ctx.seed, t)
    x = ctx.prepare(torch.from_numpy(data.x[idx]).to(ctx.device))
    if ctx.augment is not None:
        x = ctx.augment(x, ctx.generator(t))
    ctx.model.train()
    return float(ctx.loss_fn(ctx.model(x), torch.from_numpy(data.y[idx]).to(ctx.device)))


# ------------------------------------------------------------------------------ writing

def write_proof(out: str | os.PathLike, spec: TrainingSpec, states: dict[int, dict],
                plan: Plan, leaves: np.ndarray, *, init: dict | None = None,
                groups: int = 1, claimed_steps_per_epoch: int | None = None) -> str:
    """Write a well-formed proof (format v1) from checkpoint states at 0, k, ..., T and the
    per-step records. Returns the root digest. `claimed_steps_per_epoch`: the epoch structure to
    claim instead of the one the dataset gives (the sparse-epoch forgery)."""
    from pol._version import __version__
    S = int(claimed_steps_per_epoch) if claimed_steps_per_epoch else steps_per_epoch(spec)
    T = spec.epochs * S
    if plan.T != T:
        raise ValueError(f"plan has {plan.T} steps, the spec {T}")
    steps = fmt.checkpoint_steps(T, spec.k)
    missing = [t for t in steps if t not in states]
    if missing:
        raise ValueError(f"no state for checkpoint(s) {missing[:5]}")
    init = init or {"kind": "strategy", "strategy": spec.model.init}
    run_info = {"spec": spec.to_dict(), "total_steps": T, "k": spec.k, "steps_per_epoch": S,
                "init": init, "param_groups": groups}
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    w = ProofWriter(out, precision=spec.precision, overwrite=True, durable=False,
                    run_info=run_info)
    try:
        w.put_checkpoint(0, states[0])
        prev = 0
        for t in steps[1:]:
            rec = {"indices": plan.indices[prev:t], "lrs": plan.lrs[prev:t],
                   "losses": plan.losses[prev:t].astype(np.float32)}
            w.put_checkpoint(t, states[t], rec)
            prev = t
    except BaseException:
        w.abort()
        raise
    body = {
        "format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pol_version": __version__, "spec": spec.to_dict(), "epochs": spec.epochs,
        "steps_per_epoch": S, "total_steps": T, "k": spec.k, "checkpoints": steps,
        "init": init, "param_groups": groups, "dataset_size": spec.data.size,
    }
    return w.finalize(body, leaves)


# ------------------------------------------------------------------------------ honest cost

_HONEST_CACHE: dict[str, float] = {}


def honest_cost(pub: PublicInfo, measure: bool = True, seed: int = DEFAULT_FORGER_SEED
                ) -> tuple[float | None, int]:
    """(seconds, grad evals) of honest training of the target's model: T steps of its spec with
    a proof written (non-durable, like the attacks'), timed by re-training once per target in this
    process. With measure=False only the step count is returned."""
    T = pub.total_steps
    if not measure:
        return None, T
    key = pub.target_digest
    if key not in _HONEST_CACHE:
        from pol.prover.trainer import train_spec
        spec = forged_spec(pub, seed)
        tmp = Path(tempfile.mkdtemp(prefix="pol-honest-"))
        try:
            t0 = time.perf_counter()
            train_spec(spec, pub.train, None, tmp / "p", device=torch.device("cpu"),
                       overwrite=True, durable=False)
            _HONEST_CACHE[key] = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _HONEST_CACHE[key], T


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def epochs_for(steps: int | None, S: int, default_epochs: int) -> int:
    """Epochs so that E·S covers `steps` (at least one)."""
    if steps is None:
        return default_epochs
    if steps < 1:
        raise ConfigError("--steps must be positive")
    return max(1, -(-int(steps) // S))


def replace_model(state: dict[str, torch.Tensor], w: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """`state` with its model entries replaced by `w` (optimizer entries kept)."""
    out = dict(state)
    for k, v in w.items():
        out[k] = v.clone().to(state[k].dtype) if k in state else v.clone()
    return out


def optim_groups(ctx: StepContext) -> int:
    return len(ctx.optimizer.param_groups)


def load_full_state(ctx: StepContext, spec: TrainingSpec, state: dict[str, torch.Tensor]) -> None:
    load_state(ctx.model, ctx.optimizer, spec.optimizer.name, state)


def claim_device(proof_dir: str | os.PathLike, device: str) -> str:
    """Rewrite a forged proof's claimed device (spec.device) and recompute its digests, as any
    forger can. A verifier that demands bitwise-exact replay only for proofs claiming its own
    device type lets a forger opt out of that mode by claiming another one. Returns the new root
    digest."""
    import json

    from pol.util import atomic_write
    if device not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"cannot claim device {device!r}")
    d = Path(proof_dir)
    body = json.loads((d / fmt.MANIFEST).read_text())
    body["spec"]["device"] = device
    body["root_digest"] = fmt.root_digest(body)
    atomic_write(d / fmt.MANIFEST, json.dumps(body, indent=1, sort_keys=True).encode(), False)
    return body["root_digest"]
