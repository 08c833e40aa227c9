"""Replaying a proof's segments: one segment at a time (`replay_segment`), in this process or spread
over worker processes on one machine (`replay_parallel`, `pol verify --workers N`).

Segments are independent: each starts from its own recorded checkpoint. So N processes can replay
different segments at once, and the verifier combines their outcomes exactly as if it had replayed
them itself, in the same order (`verify()` does all the bookkeeping: δ, relative error, verdict).

What makes a parallel replay give the same bits as an in-process one:
- every worker runs the same `replay_segment` on the same inputs: it opens the proof itself
  (`open_proof`, digests checked again, root digest must be the one the parent verified), rebuilds
  the verifier's data the same way and checks that its bytes are the ones the parent checked
  against the dataset commitment (content digest), and builds the step context once;
- every worker runs torch with the parent's settings: the same number of intra-op threads (CPU
  kernels split their reductions by thread count, so 1 thread and 2 threads give different bits,
  which exact mode — δ = 0 — would reject), deterministic algorithms, TF32 and cuDNN flags.
  With T parent threads and N workers, up to N·T threads run: for the best throughput run the
  verifier with T = cores / N threads, matching the prover's thread count (`torch.set_num_threads`,
  or OMP_NUM_THREADS for the CLI).

Nothing heavy crosses process boundaries: a job of plain values (paths, options, the dataset's
32-byte leaf hashes) once per worker, two step numbers per segment, and a few floats back.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pol.errors import IntegrityError, ProofFormatError
from pol.proof import format as fmt
from pol.proof.hashing import merkle_root
from pol.step import load_state, state_tensors, update
from pol.verifier.distances import all_distances, flat_params


@dataclass
class SegmentOutcome:
    """What replaying one segment [a, b) found (plain values; verify() turns it into a
    SegmentResult)."""

    start: int
    end: int
    error: dict[str, float]  # d(W'_b replayed, W_b claimed) per metric
    exact: bool  # the replayed state (model + optimizer) is bitwise the claimed one
    loss_bad: list[int] = field(default_factory=list)  # hardened: steps whose loss differs
    data_ok: bool = True  # every replayed batch matches its recorded hash


def replay_segment(ctx, proof, data, leaves: np.ndarray, names: list[str], a: int, b: int,
                   metrics: Sequence[str], hardened: bool,
                   load: Callable[[int], dict[str, torch.Tensor]],
                   step_done: Callable[[], Any] | None = None) -> SegmentOutcome:
    """Replay steps a..b-1 from the checkpoint at a with the shared `update()`, checking every
    batch's hash and (hardened) recorded loss, and compare the result with the checkpoint at b."""
    spec = proof.manifest.spec
    data_ok = True
    loss_bad: list[int] = []
    start = load(a)
    load_state(ctx.model, ctx.optimizer, spec.optimizer.name, start)
    for t in range(a, b):
        idx = proof.batch(t)
        if merkle_root(leaves[idx]) != proof.batch_hashes[t].tobytes():
            data_ok = False
        try:
            loss = update(ctx, torch.from_numpy(data.x[idx]),
                          torch.from_numpy(data.y[idx]), proof.lrs[t].tolist(), t)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise ProofFormatError(f"the proof's spec does not run on its data (step {t}): "
                                   f"{str(e).splitlines()[0][:200]}") from None
        if hardened and np.isfinite(proof.losses[t]):  # NaN: the loop recorded no loss
            rec_loss, my_loss = float(proof.losses[t]), float(loss)
            if not (abs(rec_loss - my_loss) <= 5e-2 * max(abs(my_loss), 1e-6)):
                loss_bad.append(t)
        if step_done is not None:
            step_done()
    end = load(b)
    mine = state_tensors(ctx.model, ctx.optimizer)
    mine_vec = flat_params({n: mine[n].to(fmt.storage_dtype(n, mine[n], spec.precision))
                            for n in names}, names)
    err = all_distances(mine_vec, flat_params(end, names), metrics)
    exact = all(k in mine and torch.equal(
        mine[k].detach().to("cpu", fmt.storage_dtype(k, mine[k], spec.precision)),
        end[k]) for k in end) and len(end) == len(mine)
    return SegmentOutcome(a, b, err, bool(exact), loss_bad, data_ok)


# ----------------------------------------------------------------------------- worker processes

@dataclass(frozen=True)
class ReplayJob:
    """Everything a worker needs to rebuild the verifier's state (picklable plain values)."""

    proof: str
    root_digest: str  # the manifest the parent verified
    limits: fmt.Limits
    data: str | None  # --data, as given to the parent
    data_digest: str  # content digest of the parent's (committed) training set
    leaves: np.ndarray  # [N, 32] uint8 leaf hashes of that set
    device: str
    trusted_modules: tuple[str, ...]
    metrics: tuple[str, ...]
    hardened: bool
    torch_settings: dict[str, Any]


def torch_settings() -> dict[str, Any]:
    """The settings of this process that can change a replay's bits."""
    return {"threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def _apply_torch_settings(s: dict[str, Any]) -> None:
    torch.set_num_threads(int(s["threads"]))
    torch.use_deterministic_algorithms(s["deterministic"], warn_only=s["deterministic_warn_only"])
    torch.set_default_dtype(getattr(torch, s["default_dtype"]))
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = s["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = s["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = s["matmul_tf32"]
    torch.set_float32_matmul_precision(s["float32_matmul_precision"])


_JOB: ReplayJob | None = None
_STATE: dict[str, Any] | None = None


def _init_worker(job: ReplayJob) -> None:
    """Pool initializer: only store the job and apply the settings (nothing that can fail on the
    proof; errors there would break the pool instead of reaching the parent as themselves)."""
    global _JOB, _STATE
    _JOB, _STATE = job, None
    _apply_torch_settings(job.torch_settings)


def _worker_state() -> dict[str, Any]:
    """Open the proof, load and check the data, build the context: once per worker."""
    global _STATE
    if _STATE is None:
        from pol.proof.hashing import content_digest
        from pol.proof.reader import open_proof
        from pol.registry import build_context, resolve_device
        from pol.verifier.core import _param_names, load_verifier_data

        job = _JOB
        assert job is not None, "worker used without _init_worker"
        proof = open_proof(job.proof, job.limits)
        if proof.manifest.root_digest != job.root_digest:
            raise IntegrityError(f"{job.proof}: the proof changed on disk during verification "
                                 "(its manifest's root digest is not the one verified)")
        spec = proof.manifest.spec
        data = load_verifier_data(spec, job.data)
        if content_digest(data.x, data.y) != job.data_digest:
            raise ProofFormatError("the verifier's data changed on disk during verification")
        ctx = build_context(spec, resolve_device(job.device), job.trusted_modules)
        # Checkpoints are read through the reader (digest checked): the bytes are those that the
        # parent's streaming pass already validated (shapes, dtypes, finite values).
        _STATE = {"proof": proof, "data": data, "ctx": ctx, "names": _param_names(ctx.model)}
    return _STATE


def _replay_task(a: int, b: int) -> SegmentOutcome:
    st = _worker_state()
    job = _JOB
    return replay_segment(st["ctx"], st["proof"], st["data"], job.leaves, st["names"], a, b,
                          job.metrics, job.hardened, st["proof"].load_checkpoint)


def replay_parallel(job: ReplayJob, segments: Sequence[tuple[int, int]], workers: int,
                    segment_done: Callable[[SegmentOutcome], Any] | None = None
                    ) -> list[SegmentOutcome]:
    """Replay `segments` [(a, b), ...] in `workers` spawned processes; outcomes in the order given.
    If segments fail (raise), the exception of the first failing one in that order is raised, as
    the in-process loop would: later segments are cancelled, earlier ones run to the end."""
    mp = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(max_workers=max(1, min(workers, len(segments))), mp_context=mp,
                             initializer=_init_worker, initargs=(job,))
    try:
        futs = [ex.submit(_replay_task, a, b) for a, b in segments]
        first_bad = len(futs)
        pending = set(futs)
        order = {f: j for j, f in enumerate(futs)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=order.__getitem__):
                j = order[f]
                if f.cancelled():
                    continue
                if f.exception() is not None:
                    if j < first_bad:
                        first_bad = j
                        for g in futs[j + 1:]:
                            g.cancel()
                elif segment_done is not None and j < first_bad:
                    segment_done(f.result())
            pending = {f for f in pending if not f.cancelled()}
        if first_bad < len(futs):
            raise futs[first_bad].exception()
        return [f.result() for f in futs]
    finally:
        ex.shutdown(wait=True, cancel_futures=True)

