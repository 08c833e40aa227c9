"""What a worker sends for one assignment: honest work through pol's step, or one of the Byzantine
behaviours of `pol.cluster.config.KINDS`.

Honest work is pol's own loop (`pol.prover.recorder.run_loop`'s steps: the spec's lr per step,
`pol.step.update`, a `Recorder` warm-started from the received weights as the round model's child).
The Byzantine behaviours are what a worker could do with the same tools: change the weights and
rewrite its proof with the forgers' writer (`pol.attacks.common.write_proof`: every digest
recomputed, so that only the coordinator's replay can tell), skip steps, copy, or forge a whole
proof with no training (`forge`: the straight-line forgery of `pol attack fang` and `zhang-init`,
started from the received weights, which is the cheapest applicable one: those attacks as
published draw their own W_0 and would fail the warm start's check without any replay).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pol.cluster import budget
from pol.cluster.config import Behaviour
from pol.step import MODEL_PREFIX

LN10 = math.log(10.0)  # the recorded loss of a step that computed none (informational only)


@dataclass
class Job:
    """One assignment as the worker sees it."""

    round: int
    worker: int
    spec: object  # TrainingSpec: the assignment with the worker's own hardware claims
    data: object  # ArrayDataset: the assigned shard
    weights: dict  # the received model weights ("model.*")
    parent: dict  # the manifest's init: {"kind": "parent", "root_digest": round model id}
    out: Path  # where to write the proof
    rng: np.random.Generator  # the worker's own randomness (the sparse cheater's choice)


@dataclass
class Produced:
    """A proof directory and the weights sent with it, or a ready message (copied, stale)."""

    proof: Path | None = None
    weights: dict | None = None
    message: bytes | None = None


def _model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Host copies (the received weights are host tensors, and a message carries host bytes)."""
    return {MODEL_PREFIX + k: v.detach().to("cpu", copy=True) for k, v in
            model.state_dict().items()}


def _load(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in weights.items()
                           if k.startswith(MODEL_PREFIX)})


def record(job: Job, fake: Callable[[int], bool] = lambda t: False, data=None,
           spec=None) -> Produced:
    # long: pol's training loop with the one place a cheater deviates, read top to bottom
    """Train the assignment with a proof, as `run_loop` does; on the steps where `fake(t)` the
    worker computes nothing and repeats its previous update instead (claiming the step)."""
    from pol.prover.recorder import Recorder
    from pol.step import build_context, lrs_at, numerics, update
    spec = spec or job.spec
    data = job.data if data is None else data
    dev = torch.device(spec.device)
    with numerics(spec, dev):
        ctx = build_context(spec, dev)
        _load(ctx.model, job.weights)
        rec = Recorder(job.out, model=ctx.model, optimizer=ctx.optimizer, data=data, spec=spec,
                       init=job.parent, overwrite=True, durable=False)
        if ctx.exact is not None:  # exact mode: the steps' rounding log goes into the proof
            rec.use_rounding_log(ctx.exact)
        base = [spec.optimizer.lr] * len(ctx.optimizer.param_groups)
        params = list(ctx.model.parameters())
        last, delta = None, None
        try:
            for idx in rec.epoch_batches(0):
                t = rec.t
                for g, lr in zip(ctx.optimizer.param_groups, lrs_at(spec.schedule, base, t,
                                                                    rec.total_steps)):
                    g["lr"] = lr
                rec.record_batch(idx, seed_rng=False)
                if fake(t):
                    with torch.no_grad():
                        for p, d in zip(params, delta or []):
                            p.add_(d)
                    loss = last if last is not None else torch.tensor(LN10)
                else:
                    before = [p.detach().clone() for p in params]
                    loss = update(ctx, torch.from_numpy(data.x[idx]),
                                  torch.from_numpy(data.y[idx]),
                                  [g["lr"] for g in ctx.optimizer.param_groups], t)
                    delta = [p.detach() - b for p, b in zip(params, before)]
                    last = loss
                rec.step(loss)
            rec.close()
        except BaseException:
            rec.abort()
            raise
        return Produced(Path(job.out), _model_weights(ctx.model))


def rewrite(job: Job, proof: Path, final: dict[str, torch.Tensor]) -> Produced:
    """The proof with its last checkpoint's weights replaced by `final`, every digest
    recomputed (`pol.attacks.common.write_proof`)."""
    from pol.attacks.common import Plan, replace_model, write_proof
    from pol.proof.hashing import sample_leaves
    from pol.proof.reader import open_proof
    p = open_proof(proof)
    m = p.manifest
    states = {t: p.load_checkpoint(t) for t in m.checkpoints}
    states[m.total_steps] = replace_model(states[m.total_steps], final)
    plan = Plan(indices=p.indices.copy(), lrs=p.lrs.copy(), losses=p.losses.copy())
    write_proof(proof, m.spec, states, plan, sample_leaves(job.data.x, job.data.y),
                init=m.init, groups=m.num_groups)
    return Produced(proof, final)


def _shifted_update(job: Job, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> Produced:
    honest = record(job)
    w0 = job.weights
    final = {k: (fn(w0[k], v) if v.is_floating_point() else v) for k, v in honest.weights.items()}
    return rewrite(job, honest.proof, final)


def noise(job: Job, b: Behaviour) -> Produced:
    g = torch.Generator().manual_seed(int(job.rng.integers(2**62)))
    return _shifted_update(job, lambda w0, w: w0 + b.v * torch.randn(w0.shape, generator=g))


def signflip(job: Job, b: Behaviour) -> Produced:
    return _shifted_update(job, lambda w0, w: w0 - (w - w0))


def scale(job: Job, b: Behaviour) -> Produced:
    return _shifted_update(job, lambda w0, w: w0 + b.v * (w - w0))


def lazy(job: Job, b: Behaviour) -> Produced:
    done = budget.lazy_steps_done(b, job.spec.epochs * _steps(job))
    return record(job, fake=lambda t: t >= done)


def sparse(job: Job, b: Behaviour) -> Produced:
    """Fake F steps, packed into ⌈F/s⌉ segments chosen at random (the fewest segments: the
    hardest for a sampling verifier)."""
    L, s = _steps(job), job.spec.k
    F = budget.sparse_steps_faked(b, L)
    n = -(-L // s)
    segs = job.rng.choice(n, -(-F // s), replace=False)
    steps = sorted(t for i in segs for t in range(i * s, min(L, (i + 1) * s)))[:F]
    faked = set(steps)
    return record(job, fake=lambda t: t in faked)


def _steps(job: Job) -> int:
    return -(-len(job.data) // job.spec.batch_size)


def otherdata(job: Job, b: Behaviour) -> Produced:
    """Train on the shard with every label moved to the next class (a label-flipping poisoner),
    then claim the assigned dataset in the manifest (digests recomputed)."""
    from pol.datasets import ArrayDataset
    from pol.proof.hashing import merkle_root, sample_leaves
    from pol.proof.writer import rehash_manifest
    d = job.data
    classes = int(job.spec.model.kwargs.get("num_classes", int(d.y.max()) + 1))
    poisoned = ArrayDataset(d.x, (d.y + 1) % classes)
    root = merkle_root(sample_leaves(poisoned.x, poisoned.y)).hex()
    spec = replace(job.spec, data=replace(job.spec.data, root=root))
    out = record(job, data=poisoned, spec=spec)
    man = out.proof / "manifest.json"
    body = json.loads(man.read_text())
    body["spec"]["data"]["root"] = job.spec.data.root
    man.write_text(json.dumps(body, indent=1, sort_keys=True))
    rehash_manifest(out.proof)
    return out


def freerider(job: Job, b: Behaviour) -> Produced:
    """The received weights back, every checkpoint holding them; no step computed."""
    from pol.attacks.common import clone_state, context, make_plan, optim_groups, write_proof
    from pol.proof import format as fmt
    from pol.proof.hashing import sample_leaves
    ctx = context(job.spec)
    _load(ctx.model, job.weights)
    plan = make_plan(job.spec, optim_groups(ctx))
    plan.losses[:] = LN10
    w0 = clone_state(ctx)
    states = {t: w0 for t in fmt.checkpoint_steps(plan.T, job.spec.k)}
    write_proof(job.out, job.spec, states, plan, sample_leaves(job.data.x, job.data.y),
                init=job.parent, groups=optim_groups(ctx))
    return Produced(Path(job.out), _model_weights(ctx.model))


def forge(job: Job, b: Behaviour) -> Produced:
    # long: one forgery, read top to bottom: the claimed end, the straight line, the losses
    """No training: one gradient step on the first assigned batch, extrapolated over the round,
    and checkpoints on the straight line from the received weights to that claim (no optimizer
    state), with the assigned batches and lrs and forward-pass losses recorded."""
    from pol.attacks.common import forward_loss, make_plan, optim_groups, run_steps, write_proof
    from pol.proof import format as fmt
    from pol.proof.hashing import sample_leaves
    from pol.step import build_context, numerics
    spec = job.spec
    dev = torch.device(spec.device)
    with numerics(spec, dev):
        ctx = build_context(spec, dev)  # on the assigned device, as an honest worker's steps
        _load(ctx.model, job.weights)
        plan = make_plan(spec, optim_groups(ctx))
        T = plan.T
        w0 = _model_weights(ctx.model)
        run_steps(ctx, job.data, plan, 0, 1, lambda t: False, {})
        w1 = _model_weights(ctx.model)  # host copies: every state below is on the host
        claim = {k: w0[k] + T * (w1[k] - w0[k]) if w0[k].is_floating_point() else w0[k]
                 for k in w0}
        states = {}
        for t in fmt.checkpoint_steps(T, spec.k):
            a = t / T
            states[t] = {k: (1 - a) * w0[k] + a * claim[k] if w0[k].is_floating_point()
                         else w0[k] for k in w0}
        for t in range(T):
            _load(ctx.model, states[(t // spec.k) * spec.k])
            plan.losses[t] = forward_loss(ctx, job.data, plan.batch(t), t)
        write_proof(job.out, spec, states, plan, sample_leaves(job.data.x, job.data.y),
                    init=job.parent, groups=optim_groups(ctx))
    return Produced(Path(job.out), states[T])


PRODUCERS: dict[str, Callable[[Job, Behaviour], Produced]] = {
    "noise": noise, "signflip": signflip, "scale": scale, "lazy": lazy, "sparse": sparse,
    "otherdata": otherdata, "freerider": freerider, "forge": forge,
}


def produce(job: Job, b: Behaviour) -> Produced:
    """The proof and weights of this behaviour (honest work for the kinds that act elsewhere:
    stale, copycat, the faults), written to `job.out` (replaced if present)."""
    if job.out.exists():
        shutil.rmtree(job.out)
    fn = PRODUCERS.get(b.kind)
    return fn(job, b) if fn is not None else record(job)
