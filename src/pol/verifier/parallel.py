"""Replaying a proof's segments: one segment at a time (`replay_segment`), in this process or spread
over worker processes on one machine (`replay_parallel`, `pol verify --workers N`).

Segments are independent: each starts from its own recorded checkpoint. So N processes can replay
different segments at once, and the verifier combines their outcomes exactly as if it had replayed
them itself, in the same order (`verify()` does all the bookkeeping: δ, relative error, verdict).

What makes a parallel replay give the same bits as an in-process one:
- every worker runs the same `replay_segment` on the same inputs: a forked worker has the parent's
  own (checked) proof, data and context; another one opens the proof itself (`open_proof`, digests
  checked again, root digest must be the one the parent verified), takes the parent's checked data
  from its job (or, for a large set, rebuilds it and checks that its bytes are the ones the parent
  checked against the dataset commitment: content digest), and builds the step context once;
- every worker runs torch with the parent's settings: the same number of intra-op threads (CPU
  kernels split their reductions by thread count, so 1 thread and 2 threads give different bits,
  which exact mode — δ = 0 — would reject), deterministic algorithms, TF32 and cuDNN flags.
  With T parent threads and N workers, up to N·T threads run: for the best throughput run the
  verifier with T = cores / N threads, matching the prover's thread count (`torch.set_num_threads`,
  or OMP_NUM_THREADS for the CLI).

Little crosses process boundaries: nothing for a forked worker; otherwise a job of plain values
(paths, options, the dataset's 32-byte leaf hashes and, up to SHARE_DATA_MAX_BYTES, the data)
once per worker. Then two step numbers per segment, and a few floats back.
"""

from __future__ import annotations

import multiprocessing
import weakref
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pol.errors import IntegrityError, ProofFormatError
from pol.proof import format as fmt
from pol.proof.hashing import merkle_root
from pol.step import load_state, state_tensors, storage_dtype, update
from pol.step.exact import use_proof_log
from pol.step.runtime import set_deterministic
from pol.verifier.distances import METRICS


def distances(a: torch.Tensor, b: torch.Tensor, metrics: Sequence[str] = METRICS,
              norm_a: torch.Tensor | None = None, norm_b: torch.Tensor | None = None,
              consume: bool = False) -> dict[str, float]:
    """`distances.all_distances(a, b, metrics)`, bit for bit, with fewer passes over the vectors:
    the same torch operations on the same tensors, but a − b and |a − b| computed once for all
    metrics, and the norms of a and b (cos) optionally passed in by a caller that has them already
    (the streaming pass: each checkpoint's norm serves two segments). `consume`: a − b and its
    absolute value are written over `a` (used up; no float64 temporaries)."""
    need = set(metrics)
    unknown = need - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric {sorted(unknown)[0]!r}; known: {', '.join(METRICS)}")
    out: dict[str, float] = {}
    if "cos" in need:  # before `a` is used up
        out["cos"] = _cos_distance(a, b, norm_a, norm_b)
    if need & {"l1", "l2", "linf"}:
        d = torch.sub(a, b, out=a) if consume else a - b
        if "l2" in need:
            out["l2"] = float(torch.linalg.vector_norm(d))
        if need & {"l1", "linf"}:
            ad = d.abs_() if consume else d.abs()
            if "l1" in need:
                out["l1"] = float(ad.sum())
            if "linf" in need:
                out["linf"] = float(ad.max()) if a.numel() else 0.0
    return {m: out[m] for m in metrics}


def _cos_distance(a: torch.Tensor, b: torch.Tensor, norm_a: torch.Tensor | None,
                  norm_b: torch.Tensor | None) -> float:
    if torch.equal(a, b):
        return 0.0
    na = norm_a if norm_a is not None else torch.linalg.vector_norm(a)
    nb = norm_b if norm_b is not None else torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return float(1.0 - torch.dot(a, b) / (na * nb))


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
    # optimizer state (moments, momentum buffers): ℓ2 of replayed − claimed at the end, and the
    # claimed change over the segment ‖S_b − S_a‖ (0, 0 for a stateless optimizer)
    state_error: float = 0.0
    state_change: float = 0.0
    steps_ok: bool = True  # the replayed step counters equal the claimed ones
    # hardened: ‖W(g) − W(−g)‖ ÷ ‖W(g) − W_a‖ after the segment's first step, replayed with the
    # gradient and with its sign flipped (NaN: not measured)
    flip: float = float("nan")
    # exact mode: the replayed steps whose rounding log did not fit the replay (a logged value
    # not near a tie here); None: not an exact-mode proof
    roundlog_bad: list[int] | None = None


def replay_segment(ctx, proof, data, leaves: np.ndarray, names: list[str], a: int, b: int,
                   metrics: Sequence[str], hardened: bool,
                   load: Callable[[int], dict[str, torch.Tensor]],
                   step_done: Callable[[], Any] | None = None) -> SegmentOutcome:
    """Replay steps a..b-1 from the checkpoint at a with the shared `update()`, checking every
    batch's hash and (hardened) recorded loss, and compare the result with the checkpoint at b.

    No step waits for the device: the losses are read back once, after the last step (a training
    loop does not read them either), and a GPU's batches are copied from pinned memory."""
    spec = proof.manifest.spec
    start = _on_device(load(a), ctx.device)
    load_state(ctx.model, ctx.optimizer, spec.optimizer.name, start)
    exact = ctx.exact is not None and use_proof_log(ctx.exact, proof.log, a, b)
    # data dependence is probed at the segment's first step whose every lr is positive (a step
    # at lr 0, e.g. a warm-up from 0, moves nothing whatever its data); none: nothing to probe
    probe_t = next((t for t in range(a, b) if (proof.lrs[t] > 0).all()), None) \
        if hardened else None
    flip = float("inf") if hardened and probe_t is None else float("nan")
    data_ok, losses, probed = _replay_steps(ctx, proof, data, leaves, a, b, start, probe_t,
                                            step_done)
    if probed is not None:
        flip = probed
    end = _on_device(load(b), ctx.device)  # the host's part of it while the last steps run
    loss_bad: list[int] = []
    if hardened:  # a recorded loss that is NaN or infinite matches nothing
        for t, my_loss in zip(range(a, b), _host_losses(losses)):
            rec_loss = float(proof.losses[t])
            if not (abs(rec_loss - my_loss) <= 5e-2 * max(abs(my_loss), 1e-6)):
                loss_bad.append(t)
    out = _outcome(ctx, spec, names, metrics, a, b, start, end, data_ok, loss_bad, flip)
    out.roundlog_bad = ctx.exact.problems_in(a, b) if exact else None
    return out


def _on_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors on the replay's device in one copy per dtype (one flat host buffer,
    pinned for a GPU, then views of one device buffer), not one copy per tensor. 0-d entries
    (step counters, a GradScaler's scale) stay on the host, where `load_state` keeps them."""
    if device.type == "cpu":
        return tensors
    out = dict(tensors)
    groups: dict[torch.dtype, list[str]] = {}
    for k, v in tensors.items():
        if v.dim() > 0 and v.device.type == "cpu":
            groups.setdefault(v.dtype, []).append(k)
    for dtype, keys in groups.items():
        sizes = [tensors[k].numel() for k in keys]
        host = torch.empty(sum(sizes), dtype=dtype, pin_memory=device.type == "cuda")
        torch.cat([tensors[k].reshape(-1) for k in keys], out=host)
        flat = host.to(device, non_blocking=True)
        for k, part in zip(keys, flat.split(sizes)):
            out[k] = part.view(tensors[k].shape)
    return out


def _replay_steps(ctx, proof, data, leaves: np.ndarray, a: int, b: int, start: dict,
                  probe_t: int | None, step_done):
    """Steps a..b-1 with `update()`: (every batch's hash matched, the steps' losses as `update`
    returned them, the flip ratio measured at `probe_t` or None). The batches come from
    `_batches`, on a background thread where `_use_prefetch` says so (the same bytes either way):
    this thread then only runs the steps."""
    data_ok, losses, flip = True, [], None
    opt_name = proof.manifest.spec.optimizer.name
    pin = ctx.device.type == "cuda"
    batches = _batches(proof, data, leaves, a, b, pin)
    if _use_prefetch(ctx, data):
        batches = _Prefetched(batches, PREFETCH_DEPTH, ctx.device)
    try:
        for t, lrs in zip(range(a, b), proof.lrs[a:b].tolist()):
            x, y, ok = next(batches)
            data_ok = data_ok and ok
            try:
                if t == probe_t:  # data dependence: the same step with the gradient flipped
                    loss, flip = _probed_step(ctx, opt_name, x, y, lrs, t,
                                              start if t == a else None)
                else:
                    loss = update(ctx, x, y, lrs, t)
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                raise ProofFormatError(f"the proof's spec does not run on its data (step {t}): "
                                       f"{str(e).splitlines()[0][:200]}") from None
            losses.append(loss)
            if step_done is not None:
                step_done()
    finally:
        batches.close()
    return data_ok, losses, flip


# Where a replayed step's batch is prepared. `None`: `_use_prefetch` decides (a GPU replay of
# in-memory data: yes); True / False: always / never (tests, benchmarks/bench_replay_host.py).
PREFETCH: bool | None = None
PREFETCH_DEPTH = 3  # batches prepared ahead of the step that runs


def _use_prefetch(ctx, data) -> bool:
    """Prepare the batches on a thread? On a GPU the replay is bound by this thread's launches,
    and a batch's gather and pinning (copies that release the GIL) move off it, with its Merkle
    check (pure Python: hashlib holds the GIL for 65-byte inputs, so that part competes with this
    thread's Python wherever it runs, unless it falls in a stretch where the step releases the
    GIL, such as the backward pass). On a CPU the thread gains nothing (benchmarks/
    bench_replay_host.py, 2 cores: with 2 torch threads it takes a core from their kernels; with
    1, the ~0.2 ms a step outside update() moves off this thread and update() gets as much
    slower, through the GIL), so the batches are prepared inline there. Only for data held as
    arrays: a torch Dataset's own code (which may draw from torch's global RNG, seeded per step
    for dropout) runs on this thread, in turn."""
    if PREFETCH is not None:
        return PREFETCH
    return (ctx.device.type == "cuda" and isinstance(data.x, np.ndarray)
            and isinstance(data.y, np.ndarray))


def _batches(proof, data, leaves: np.ndarray, a: int, b: int, pin: bool):
    """(x, y, the batch's hash matched) of steps a..b-1, as `update()` takes them; `pin`: in
    pinned memory (a GPU replay copies them to the device without waiting for the steps queued
    before, so without a host sync)."""
    for t in range(a, b):
        idx = proof.batch(t)
        ok = merkle_root(leaves[idx]) == proof.batch_hashes[t].tobytes()
        x, y = torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx])
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        yield x, y, ok


class _Prefetched:
    """An iterator's items produced on a background thread, at most `depth` ahead of the caller,
    in order; an exception it raises is raised by the `next` that would have returned the item.
    `close()` always (after the last item, an error, or an early stop): it stops and joins the
    thread. On a GPU the thread allocates its pinned memory under the replay's device."""

    def __init__(self, items, depth: int, device: torch.device):
        import queue
        import threading
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._empty = queue.Empty
        self._stop = threading.Event()
        if device.type == "cuda" and device.index is None:  # this thread's current one
            device = torch.device("cuda", torch.cuda.current_device())
        self._thread = threading.Thread(target=self._run, args=(items, device),
                                        name="pol-replay-prefetch", daemon=True)
        self._thread.start()

    def _run(self, items, device: torch.device) -> None:
        from contextlib import nullcontext
        try:
            with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
                for item in items:
                    self._q.put((item, None))
                    if self._stop.is_set():  # close() emptied the queue for this put
                        return
            self._q.put((None, StopIteration()))
        except BaseException as e:  # noqa: BLE001 - raised in turn by the consumer's next()
            self._q.put((None, e))
        finally:
            getattr(items, "close", lambda: None)()

    def __iter__(self):
        return self

    def __next__(self):
        item, err = self._q.get()
        if err is not None:
            raise err
        return item

    def close(self) -> None:
        """Stop the thread (a put it waits in is freed by emptying the queue) and join it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._q.get_nowait()
            except self._empty:
                pass
            self._thread.join(timeout=0.01)
        self._q = None  # the batches left in it (pinned memory) go now


def _host_losses(losses: list) -> list[float]:
    """`float(loss)` of every step, read back from the device in one synchronization (each value
    converted exactly: every float dtype widens to float64 without rounding)."""
    if losses and all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in losses):
        return torch.cat([v.detach().reshape(1).double() for v in losses]).tolist()
    return [float(v) for v in losses]


def _outcome(ctx, spec, names: list[str], metrics: Sequence[str], a: int, b: int, start: dict,
             end: dict, data_ok: bool, loss_bad: list[int], flip: float) -> SegmentOutcome:
    """The replayed state against the claimed checkpoint at b, compared where the replay ran (a
    GPU's state is not copied to the host): the same float64 vectors and the same reductions as
    `flat_params` + `distances`, each vector written once into one buffer that the differences
    then reuse (no float64 temporaries beyond two vectors)."""
    mine = state_tensors(ctx.model, ctx.optimizer)
    stored = {k: v.detach().to(storage_dtype(k, v, spec.precision)) for k, v in mine.items()}
    from pol.verifier import soundness
    keys = soundness.float_state_keys(end)
    mine_keys = soundness.float_state_keys(mine)
    work = _workspace(ctx, max(_numel(d, ks) for d in (stored, end) for ks in (names, keys)))
    err = _consuming_distances(flat64(stored, names, work[0]), flat64(end, names, work[1]),
                               metrics)
    exact = all(k in stored and torch.equal(stored[k], end[k].to(stored[k].device)) for k in end) \
        and len(end) == len(mine)
    state_error = state_change = 0.0
    steps_ok = True
    if keys or mine_keys:
        if keys != mine_keys:
            state_error, steps_ok = float("inf"), False
        else:
            state_error, state_change = _state_distances(stored, start, end, keys, work)
            steps_ok = all(torch.equal(mine[k].detach().double().cpu(), end[k].double().cpu())
                           for k in end if k.endswith(".step") and k in mine)
    return SegmentOutcome(a, b, err, bool(exact), loss_bad, data_ok, state_error, state_change,
                          bool(steps_ok), flip)


# model -> two float64 buffers on its device, reused by every segment: a fresh buffer's first
# write costs the OS's page faults (on a CPU, 4x the copy itself); freed with the model
_WORKSPACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _numel(tensors: dict[str, torch.Tensor], keys: list[str]) -> int:
    return sum(tensors[k].numel() for k in keys if k in tensors)


def _workspace(ctx, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 buffers of at least n elements, kept with the model: on the replay's device,
    or on the host where a GPU has not the room for them (then the comparison runs there)."""
    device, *work = _WORKSPACE.get(ctx.model, (None,))
    if device != ctx.device or work[0].numel() < n:
        work = [None, None]  # the old ones freed first
        _WORKSPACE.pop(ctx.model, None)
        where = ctx.device
        if torch.device(where).type == "cuda" and 2 * n * 8 > _cuda_free(where) - 2**30:
            where = torch.device("cpu")
        work = [torch.empty(n, dtype=torch.float64, device=where) for _ in range(2)]
        _WORKSPACE[ctx.model] = (ctx.device, *work)
    return work[0], work[1]


def _cuda_free(device) -> int:
    """Bytes a CUDA device can still allocate: free on the device and cached by torch."""
    return (torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
            - torch.cuda.memory_allocated(device))


def flat64(tensors: dict[str, torch.Tensor], keys: list[str], buf: torch.Tensor) -> torch.Tensor:
    """`flat_params(tensors, keys)` (also `soundness.flat_optimizer`), bit for bit, on `buf`'s
    device: written into the start of `buf` by one concatenation (every float dtype widens
    exactly)."""
    parts = [tensors[k].detach().reshape(-1).to(buf.device) for k in keys]
    n = sum(p.numel() for p in parts)
    out = buf[:n] if buf.numel() >= n else torch.empty(n, dtype=torch.float64, device=buf.device)
    if parts:
        torch.cat(parts, out=out)
    return out


_flat64 = flat64  # the older name


def _consuming_distances(a: torch.Tensor, b: torch.Tensor, metrics: Sequence[str]
                         ) -> dict[str, float]:
    """`distances(a, b, metrics)`, bit for bit, with a − b written over `a` (used up)."""
    return distances(a, b, metrics, consume=True)


def _state_distances(stored: dict, start: dict, end: dict, keys: list[str], work: tuple
                     ) -> tuple[float, float]:
    """(‖S'_b − S_b‖, ‖S_b − S_a‖) of the float optimizer state, as `soundness.flat_optimizer`
    vectors (S_a: zeros where the start holds no state), in the two buffers of `work`."""
    mine, claimed = flat64(stored, keys, work[0]), flat64(end, keys, work[1])
    state_error = float(torch.linalg.vector_norm(torch.sub(mine, claimed, out=mine)))
    if not all(k in start for k in keys):  # claimed − 0 is claimed, bit for bit
        return state_error, float(torch.linalg.vector_norm(claimed))
    parts = [start[k].detach().reshape(-1).to(mine.device) for k in keys]
    before = torch.cat(parts, out=mine) if parts else mine
    return state_error, float(torch.linalg.vector_norm(torch.sub(claimed, before, out=before)))


def _probed_step(ctx, opt_name: str, x: torch.Tensor, y: torch.Tensor, lrs, t: int,
                 here: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, float]:
    """Step t, and the data-dependence ratio ‖W(g) − W(−g)‖ ÷ ‖W(g) − W_a‖ measured on it. `here`:
    the state before the step when the caller holds it (the segment's checkpoint), else None.

    Without a GradScaler, W(−g) is the optimizer's step on the real step's gradients, negated: the
    forward and backward passes of a step on the negated loss give exactly these (negation is exact
    and every backward op is linear in its incoming gradient, rounded symmetrically), so the ratio
    is the one `_flipped_step` gives, for one optimizer step instead of a whole training step; the
    states around it are copies on the device (no checkpoint loaded again). With a GradScaler
    (whose skipped steps and scale updates depend on the pass), the step is run again on the
    negated loss."""
    opt = ctx.optimizer
    w_a = _flat_params(ctx)
    from pol.step import scaler_of
    if scaler_of(opt) is not None:
        if here is None:
            here = {k: v.detach().clone() for k, v in state_tensors(ctx.model, opt).items()}
        flipped = _flipped_step(ctx, x, y, lrs, t)
        load_state(ctx.model, opt, opt_name, here)
        loss = update(ctx, x, y, lrs, t)
        return loss, _flip_ratio(_flat_params(ctx), flipped, w_a)
    params = [p for g in opt.param_groups for p in g["params"]]
    before = ([p.detach().clone() for p in params],
              {p: {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                   for k, v in st.items()} for p, st in opt.state.items()})
    grads: list[torch.Tensor | None] = []

    def keep(opt, args, kwargs) -> None:  # the gradients the optimizer steps on (clipped)
        grads[:] = [None if p.grad is None else p.grad.detach().clone() for p in params]
    hook = opt.register_step_pre_hook(keep)
    try:
        loss = update(ctx, x, y, lrs, t)
    finally:
        hook.remove()
    return loss, _flip_ratio(_flat_params(ctx), _negated_step(ctx, params, before, grads), w_a)


def _negated_step(ctx, params: list[torch.Tensor], before: tuple[list, dict], grads: list
                  ) -> torch.Tensor:
    """The parameters after the optimizer's step from `before` (the optimizer's parameters and
    state before the real step, copies: used up) on the negated `grads`. The copies stand in
    for the live tensors during that step (`.data` and the state dict swapped, no copy back);
    the real step's parameters and state are put back as they were."""
    opt = ctx.optimizer
    weights, state = before
    live, after = [p.data for p in params], dict(opt.state)
    try:
        with torch.no_grad():
            for p, w, g in zip(params, weights, grads):
                p.data = w
                p.grad = None if g is None else g.neg_().to(p.dtype)  # exact mode: float64
            opt.state.clear()
            opt.state.update(state)
            opt.step()
            return _flat_params(ctx)
    finally:
        for p, d in zip(params, live):
            p.data = d
        opt.state.clear()
        opt.state.update(after)
        opt.zero_grad(set_to_none=True)


def _flat_params(ctx) -> torch.Tensor:
    """The model's parameters as one float64 vector, on the model's device (no host sync)."""
    return torch.cat([p.detach().reshape(-1).double() for p in ctx.model.parameters()])


def _flipped_step(ctx, x: torch.Tensor, y: torch.Tensor, lrs, t: int) -> torch.Tensor:
    """The parameters after step t run with the loss negated (every gradient's sign flipped).
    Same randomness (dropout, augmentation) as the real step."""
    import dataclasses
    f = ctx.loss_fn
    update(dataclasses.replace(ctx, loss_fn=lambda out, yy: -f(out, yy)), x, y, lrs, t)
    return _flat_params(ctx)


def _flip_ratio(real: torch.Tensor, flipped: torch.Tensor, w_a: torch.Tensor) -> float:
    """‖W(g) − W(−g)‖ ÷ ‖W(g) − W_a‖ after one step (0 when the gradient changed nothing)."""
    norms = torch.stack([torch.linalg.vector_norm(real - flipped),
                         torch.linalg.vector_norm(real - w_a)]).tolist()  # one sync
    diff, step = norms
    if diff == 0.0:
        return 0.0
    return diff / step if step > 0 else float("inf")


# ----------------------------------------------------------------------------- worker processes
#
# How workers start (`start_method`):
# - "fork" (Linux, a CPU-only torch build, CPU replay, one intra-op thread, no other Python thread):
#   the verifier forks its workers right after it has built the model and checked the data, so each
#   worker starts in milliseconds with the parent's own proof, data, leaves and context, already
#   checked. Not with more threads: libgomp's thread pool does not survive a fork, and a child that
#   runs an OpenMP region with two or more threads after its parent ran one hangs.
# - otherwise "forkserver" (else "spawn"): a clean server process that has imported torch and pol
#   forks the workers; each one gets the parent's data in its job (no reload, unless it is large)
#   and builds its context in the pool initializer. The verifier starts the pool before its
#   streaming pass over the checkpoints, so this overlaps with the pass.

FORCE_START_METHOD: str | None = None  # tests: force "fork", "forkserver" or "spawn"
SHARE_DATA_MAX_BYTES = 256 * 2**20  # above this, non-fork workers reload the data themselves
_PRELOAD = ["torch", "torch._dynamo", "numpy", "pol.step", "pol.step.core", "pol.step.context",
            "pol.step.state", "pol.step.runtime", "pol.registry", "pol.datasets",
            "pol.proof.reader", "pol.verifier.session", "pol.verifier.parallel"]


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
    x: np.ndarray | None = None  # the parent's checked data itself (else the worker reloads it)
    y: np.ndarray | None = None


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
    set_deterministic(s["deterministic"], warn_only=s["deterministic_warn_only"])
    torch.set_default_dtype(getattr(torch, s["default_dtype"]))
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = s["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = s["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = s["matmul_tf32"]
    torch.set_float32_matmul_precision(s["float32_matmul_precision"])


def start_method(device: torch.device | str, threads: int | None = None) -> str:
    """The cheapest safe way to start replay workers in this process (see above)."""
    import sys
    import threading
    if FORCE_START_METHOD:
        return FORCE_START_METHOD
    methods = multiprocessing.get_all_start_methods()
    threads = torch.get_num_threads() if threads is None else threads
    # other threads could hold a lock at the fork that the child then needs; tqdm's monitor (a
    # daemon that only wakes to check progress bars, which workers never use) is harmless
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and type(t).__name__ != "TMonitor"]
    # a torch built with a GPU backend starts autograd device threads at the first backward,
    # after which a forked child refuses autograd ("autograd's threading in combination with
    # fork-based multiprocessing", measured on the H100 host); CPU-only builds have none
    gpu_build = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
    if ("fork" in methods and sys.platform.startswith("linux") and threads == 1
            and not gpu_build
            and torch.device(device).type == "cpu" and not torch.cuda.is_initialized()
            and not others and threading.current_thread() is threading.main_thread()):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


_JOB: ReplayJob | None = None
_STATE: dict[str, Any] | None = None
_STATE_ERROR: BaseException | None = None


def _init_worker(job: ReplayJob | None, state: dict[str, Any] | None = None) -> None:
    """Pool initializer. A forked worker gets the parent's state as is; another one builds it here
    (so that it overlaps with the parent's streaming pass). An error is kept and raised by the
    worker's tasks: in the initializer it would break the pool instead of reaching the parent."""
    global _JOB, _STATE, _STATE_ERROR
    _JOB, _STATE, _STATE_ERROR = job, state, None
    from pol import deferred_dynamo
    deferred_dynamo.install()  # a process of pol's own, that only replays
    try:
        _apply_torch_settings((job or state["job"]).torch_settings)
        if _STATE is None:
            _STATE = _build_state(job)
    except BaseException as e:  # noqa: BLE001 - re-raised by every task of this worker
        _STATE_ERROR = e


def _build_state(job: ReplayJob) -> dict[str, Any]:
    """Open the proof, take or reload the data, build the context: once per worker."""
    from pol.datasets import ArrayDataset
    from pol.proof.hashing import content_digest
    from pol.proof.reader import open_proof
    from pol.registry import resolve_device
    from pol.step import build_context
    from pol.verifier.session import load_verifier_data, param_names as _param_names

    proof = open_proof(job.proof, job.limits)
    if proof.manifest.root_digest != job.root_digest:
        raise IntegrityError(f"{job.proof}: the proof changed on disk during verification "
                             "(its manifest's root digest is not the one verified)")
    spec = proof.manifest.spec
    if job.x is not None:  # the very bytes the parent checked against the commitment
        data = ArrayDataset(job.x, job.y)
    else:
        data = load_verifier_data(spec, job.data)
        if content_digest(data.x, data.y) != job.data_digest:
            raise ProofFormatError("the verifier's data changed on disk during verification")
    ctx = build_context(spec, resolve_device(job.device), job.trusted_modules)
    # Checkpoints are read through the reader (digest checked): the bytes are those that the
    # parent's streaming pass validated (shapes, dtypes, finite values).
    return {"job": job, "proof": proof, "data": data, "ctx": ctx, "leaves": job.leaves,
            "names": _param_names(ctx.model), "load": proof.load_checkpoint}


def _ready() -> int:
    """Warm-up task: makes the pool start a worker (and build its state) now."""
    import os
    return os.getpid()


def _replay_task(a: int, b: int) -> SegmentOutcome:
    if _STATE_ERROR is not None:
        raise _STATE_ERROR
    st = _STATE
    assert st is not None, "worker used without _init_worker"
    job = st["job"]
    return replay_segment(st["ctx"], st["proof"], st["data"], st["leaves"], st["names"], a, b,
                          job.metrics, job.hardened, st["load"])


class ReplayPool:
    """`workers` replay processes, started at construction; `submit` segments as soon as they are
    known, `results` collects the outcomes in submission order, `close` always.

    `local` (fork only): the parent's checked state {"job", "proof", "data", "ctx", "leaves",
    "names", "load"}, inherited by the forked workers without any copy or pickling."""

    def __init__(self, job: ReplayJob, workers: int, method: str,
                 local: dict[str, Any] | None = None):
        self.method = method
        if method == "fork":
            assert local is not None
            initargs: tuple = (None, local)
        else:
            if (job.x is None and local is not None
                    and local["data"].x.nbytes + local["data"].y.nbytes <= SHARE_DATA_MAX_BYTES):
                job = _with_data(job, local["data"])
            initargs = (job, None)
        mp = multiprocessing.get_context(method)
        if method == "forkserver":
            mp.set_forkserver_preload(_PRELOAD)
        self.ex = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=mp,
                                      initializer=_init_worker, initargs=initargs)
        self.futs: list = []
        self._by_segment: dict[tuple[int, int], Any] = {}
        self._starter = None
        n = max(1, workers)
        if method == "fork":  # all processes fork at the first submit, from this thread
            self._warm = [self.ex.submit(_ready)]
        else:
            # one process per submit while none is idle; a submit blocks until the (forkserver)
            # server has read the job, so ask from a thread: the caller's pass goes on meanwhile
            import threading
            self._warm = []
            self._starter = threading.Thread(
                target=lambda: self._warm.extend(self.ex.submit(_ready) for _ in range(n)),
                name="pol-replay-pool-start", daemon=True)
            self._starter.start()

    def submit(self, segments: Sequence[tuple[int, int]], background: bool = False) -> None:
        """Start replaying these segments (one already submitted is not submitted again).
        `background`: while workers are still starting, submit from a thread (no wait here)."""
        if background and self._starter is not None and self._starter.is_alive():
            import threading
            before, segs = self._starter, list(segments)

            def later() -> None:
                before.join()
                self._submit(segs)

            self._starter = threading.Thread(target=later, name="pol-replay-pool-submit",
                                             daemon=True)
            self._starter.start()
            return
        if self._starter is not None:
            self._starter.join()
        self._submit(segments)

    def _submit(self, segments: Sequence[tuple[int, int]]) -> None:
        for a, b in segments:
            if (a, b) not in self._by_segment:
                f = self.ex.submit(_replay_task, a, b)
                self.futs.append(f)
                self._by_segment[(a, b)] = f

    def results(self, segment_done: Callable[[SegmentOutcome], Any] | None = None,
                segments: Sequence[tuple[int, int]] | None = None) -> list[SegmentOutcome]:
        """Outcomes of `segments` (default: all submitted), in that order; any of them not yet
        submitted is submitted now, any other submitted one is cancelled. If segments fail
        (raise), the exception of the first failing one in that order is raised, as the
        in-process loop would: later segments are cancelled, earlier ones run to the end."""
        if segments is None:
            futs = list(self.futs)
        else:
            self.submit(segments)
            futs = [self._by_segment[s] for s in segments]
            keep = set(futs)
            for f in self.futs:
                if f not in keep:
                    f.cancel()
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

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
        self.ex.shutdown(wait=True, cancel_futures=True)


def _with_data(job: ReplayJob, data) -> ReplayJob:
    import dataclasses
    return dataclasses.replace(job, x=data.x, y=data.y)


def replay_parallel(job: ReplayJob, segments: Sequence[tuple[int, int]], workers: int,
                    segment_done: Callable[[SegmentOutcome], Any] | None = None,
                    method: str | None = None) -> list[SegmentOutcome]:
    """Replay `segments` [(a, b), ...] in `workers` processes (a fresh state per worker, built
    from `job`); outcomes in the order given, errors as in `ReplayPool.results`."""
    method = method or (FORCE_START_METHOD if FORCE_START_METHOD not in (None, "fork")
                        else ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                              else "spawn"))
    pool = ReplayPool(job, max(1, min(workers, len(segments))), method)
    try:
        pool.submit(segments)
        return pool.results(segment_done)
    finally:
        pool.close()
