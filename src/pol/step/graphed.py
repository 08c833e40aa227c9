"""Exact mode's step on a GPU as two CUDA graphs (`update()`: the prover's loop and the verifier's
replay).

An exact step launches several times the kernels of a float32 step (float64 convolutions as
matrix products, the three rounding points), and on a GPU the host's launches, not the kernels,
bound it: ResNet-20's exact step on an H200 keeps the GPU busy ~10 ms of its ~27. A CUDA graph
launches a captured sequence of kernels at once. The step is captured in two graphs around the
optimizer's step, which runs eagerly (its scalars — the learning rate of the schedule, Adam's
bias corrections — are Python numbers a graph would freeze):

- `forward` — the float32 state into its float64 copy, each micro-batch's forward and backward
  passes, rounding point GRADIENTS;
- `finish` — rounding point STATE into the float32 tensors, rounding point LOSS.

What is captured is `ExactStep` itself, with a stand-in for the rounding log. Recording
(`_MaskSink`), the graphs run the kernels eager exact mode runs, on the same tensors; the log's
entries are gathered from their masks after each graph, as `RoundingLog.record` does eagerly.
Replaying (`_ReplaySink`), the logged values round by the dense form of the log's rounding
(`exact.apply_dense`: a code per value, filled from the proof's entries before each graph, and
the same rounding and check as the gathered form, value by value), and the checks' facts are read
with the log's `problems` as eagerly. A proof recorded so is an exact-mode proof like any other,
replayed on any device, eagerly or so.

Used when the step can be: on a CUDA device, no autocast or GradScaler, after `WARMUP` eager
steps of the context (the optimizer's state exists, torch's handles and pol's caches are made,
the rounding points' sizes are known), for batches of the captured shapes (any other batch, as an
epoch's short last one, steps eagerly), with the state in the captured tensors or in tensors of
their layout (a checkpoint the verifier loaded: copied into the captured ones). A capture that
fails (a model whose forward waits for the device, for one) is reported once as a warning and the
context steps eagerly from then on. `POL_CUDA_GRAPHS=0` in the environment turns it off.
"""

from __future__ import annotations

import gc
import os
import warnings
from typing import Any, Callable

import torch

from pol.step import exact
from pol.step.exact import GRADIENTS, LOSS, POINTS, STATE, ExactStep, RoundingLog

__all__ = ["GraphedExactStep", "graphed_step", "ENV", "WARMUP"]

ENV = "POL_CUDA_GRAPHS"
WARMUP = 2  # eager exact steps of a context before its step is captured


class _Sink:
    """What a step captured as a graph sees of its `RoundingLog`: its window, noise bound, zone,
    grid; a step's start and end are the graphed step's business (`GraphedExactStep`)."""

    def __init__(self, log: RoundingLog) -> None:
        self.window, self.noise, self.zone, self.grid = log.window, log.noise, log.zone, log.grid

    def begin(self, t: int) -> None:
        pass

    def end(self, t: int, points: int) -> None:
        pass


class _MaskSink(_Sink):
    """Stands for a recording `RoundingLog` while a step is captured: each rounding point's masks
    (which values lie near a tie, which rounded up) are kept as the graph's outputs instead of
    being logged; `GraphedExactStep` logs them after every replay."""

    replaying = False

    def __init__(self, log: RoundingLog) -> None:
        super().__init__(log)
        self.masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def defers(self, device: torch.device) -> bool:
        return True

    def record(self, t: int, point: int, near: torch.Tensor, up: torch.Tensor) -> None:
        self.masks[point] = (near, up)


class _ReplaySink(_Sink):
    """Stands for a replaying `RoundingLog` while a step is captured: each rounding point rounds
    its logged values by the dense form of the log's own rounding (`exact.apply_dense`,
    `apply_grid_dense`) from a code per value (`dirs`, filled from the proof's entries before
    every replay), and keeps the check's facts as the graph's output."""

    replaying = True

    def __init__(self, log: RoundingLog, device: torch.device) -> None:
        super().__init__(log)
        self.dirs = {p: torch.zeros(n, dtype=torch.int8, device=device)
                     for p, n in log.sizes.items()}
        self.facts: dict[int, tuple[str, torch.Tensor]] = {}

    def _dirs(self, point: int, n: int) -> torch.Tensor:
        d = self.dirs.get(point)
        if d is None or d.numel() != n:
            raise RuntimeError(f"rounding point {point} has {n} values, not as in the eager "
                               "steps")
        return d

    def apply(self, t: int, point: int, fx: torch.Tensor, fr: torch.Tensor) -> None:
        facts = exact.apply_dense(fx, fr, self._dirs(point, fx.numel()), self.window, self.zone)
        self.facts[point] = (exact._unit(self.zone), facts)

    def apply_grid(self, t: int, point: int, grid: exact.Grid, r: torch.Tensor) -> None:
        facts = exact.apply_grid_dense(grid, r, self._dirs(point, r.numel()))
        self.facts[point] = (exact.GRID_UNIT, facts)


def _storage(ctx) -> list[torch.Tensor]:
    """The step's float32 tensors (parameters' data, optimizer state, buffers, in `ExactStep`'s
    order): the graphs read and write their storage."""
    params, buffers, slots = ExactStep.tensors(ctx.model, ctx.optimizer)
    return exact.in_place(params, buffers, slots)


class GraphedExactStep:
    """One context's exact step as CUDA graphs: `capture` makes them while running a step, `run`
    replays them for a later one. `key` is the step's batch shapes; `storage` the tensors it
    was captured on (`_storage`)."""

    def __init__(self, key: tuple, storage: list[torch.Tensor],
                 optimizer_step: Callable[[], Any]) -> None:
        self.key, self.optimizer_step = key, optimizer_step
        self.addresses = [v.data_ptr() for v in storage]
        self.layout = _layout(storage)
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.forward = torch.cuda.CUDAGraph()
        self.finish = torch.cuda.CUDAGraph()
        self.sink: _MaskSink | _ReplaySink | None = None
        self.ex: ExactStep | None = None
        self.views: list[torch.Tensor] = []
        self.slots: list[tuple[dict, str]] = []
        self.originals: list[torch.Tensor] = []
        self.grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loss: torch.Tensor | None = None
        self.filled: dict[int, bool] = {}  # replaying: which `dirs` hold codes

    # ----- capture

    def capture(self, ctx, parts: list[tuple[torch.Tensor, torch.Tensor]], t: int,
                step_eagerly: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Step t captured and run: `parts` its micro-batches' model inputs and targets (on the
        device). A failed capture of `forward` runs the step by `step_eagerly` instead; a failed
        capture of `finish` finishes it eagerly. Either raises `_CaptureFailed` after the step
        is done, with the step's loss."""
        log = ctx.exact
        self.inputs = [(x.clone(), y.clone()) for x, y in parts]
        self.sink = sink = _ReplaySink(log, ctx.device) if log.replaying else _MaskSink(log)
        n_acc = ctx.features.accumulation
        ctx.optimizer.zero_grad(set_to_none=True)
        ex = None
        try:
            with torch.cuda.graph(self.forward, capture_error_mode="thread_local"):
                ex = ExactStep(sink, ctx.model, ctx.optimizer, t)
                total = None
                for x, y in self.inputs:
                    inputs, targets = ex.inputs(x, y)
                    loss = ctx.loss_fn(ctx.model(inputs), targets)
                    if n_acc > 1:
                        loss = loss / n_acc
                    loss.backward()  # (no GradScaler: `_why_not`)
                    total = loss.detach() if total is None else total + loss.detach()
                ex.round_grads()
        except Exception as e:  # noqa: BLE001 - any capture failure: the step runs eagerly
            if ex is not None:
                ex.restore()
            ctx.optimizer.zero_grad(set_to_none=True)
            raise _CaptureFailed(e, step_eagerly()) from e
        self.ex, self.views, self.slots = ex, list(ex.views), list(ex.slots)
        self.originals = list(ex.originals)
        self.grads = [(p, p.grad) for p in exact._optimizer_params(ctx.optimizer)
                      if p.grad is not None]
        log.begin(t)
        self._before(log, t, GRADIENTS)
        self.forward.replay()
        self._after(log, t, GRADIENTS)
        self.optimizer_step()
        flat = ex.flat
        try:
            with torch.cuda.graph(self.finish, capture_error_mode="thread_local"):
                self.loss = ex.finish(total)
        except Exception as e:  # noqa: BLE001 - the state rounded eagerly instead
            # (the capture ran `finish`'s Python, not its kernels: the step as it was before)
            ex.log, ex.flat, ex.views, ex.originals = log, flat, self.views, self.originals
            self._place_views()
            raise _CaptureFailed(e, ex.finish(total)) from e
        self._before(log, t, STATE, LOSS)
        self.finish.replay()
        self._after(log, t, STATE, LOSS)
        log.end(t, len(POINTS))
        return self.loss.clone()

    # ----- replay

    def fit(self, key: tuple, now: list[torch.Tensor]) -> str | None:
        """How the graphs can run a step of batches `key` on the state `now` (`_storage`): on it
        ("same": the captured storage), after `rebind` ("moved": tensors of the captured
        layout elsewhere, a checkpoint the verifier loaded), or not (None: other shapes)."""
        if key != self.key:
            return None
        if [v.data_ptr() for v in now] == self.addresses:
            return "same"
        return "moved" if _layout(now) == self.layout else None

    def rebind(self, ctx, now: list[torch.Tensor]) -> None:
        """The state's tensors (`now`, not all the captured ones: `fit` said "moved") copied into
        the captured tensors, which take their places."""
        with torch.no_grad():
            moved = [(o, v) for o, v in zip(self.originals, now) if o.data_ptr() != v.data_ptr()]
            torch._foreach_copy_([o for o, _ in moved], [v for _, v in moved])
        self.slots = ExactStep.tensors(ctx.model, ctx.optimizer)[2]  # (new state dicts)
        self.ex._place(self.originals, self.slots)

    def run(self, ctx, parts: list[tuple[torch.Tensor, torch.Tensor]], t: int,
            moved: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Step t by the graphs (`fit` holds; `moved`: the state's tensors when it said "moved"):
        its micro-batches into the captured inputs, `forward`, the optimizer's step on the
        float64 copies, `finish`; the log's entries from the masks (recording) or its codes into
        the graphs and their checks out (replaying). Returns the step's loss (float32, a tensor
        of its own)."""
        log = ctx.exact
        if moved is not None:  # the state in other tensors of the captured layout
            self.rebind(ctx, moved)
        for (x, y), (sx, sy) in zip(parts, self.inputs):
            sx.copy_(x, non_blocking=True)
            sy.copy_(y, non_blocking=True)
        log.begin(t)
        self._before(log, t, GRADIENTS)
        self.forward.replay()
        self._after(log, t, GRADIENTS)
        self._place_views()
        try:
            for p, g in self.grads:
                p.grad = g
            self.optimizer_step()
            self._before(log, t, STATE, LOSS)
            self.finish.replay()
        finally:
            self._place_originals()
        self._after(log, t, STATE, LOSS)
        log.end(t, len(POINTS))
        return self.loss.clone()

    # ----- pieces

    def _before(self, log: RoundingLog, t: int, *points: int) -> None:
        """Replaying: the codes of step t's logged values at `points` into the graphs' `dirs`
        (entries naming a value past a point's end are the log's problem, as eagerly)."""
        if not log.replaying:
            return
        for point in points:
            d = self.sink.dirs.get(point)
            if d is None:
                continue
            got = log._logged(t, point, d.numel(), d.device)
            if self.filled.get(point):
                d.zero_()
            self.filled[point] = got is not None
            if got is not None:
                _, idx, up = got
                # deterministic algorithms on (pol's GPU default): the sorting kernel, ~0.1 ms
                # of host time a call and no wait for the device (benchmarks/diag_index_put.py)
                d.index_put_((idx,), up.to(torch.int8) + 1)

    def _after(self, log: RoundingLog, t: int, *points: int) -> None:
        """Recording: the masks of `points` logged for step t (copies: the next replay rewrites
        them). Replaying: the checks of the points that had entries, to be read with the log's
        `problems`."""
        for point in points:
            if not log.replaying:
                if point in self.sink.masks:
                    near, up = self.sink.masks[point]
                    log.record(t, point, near.clone(), up.clone())
            elif self.filled.get(point) and point in self.sink.facts:
                unit, facts = self.sink.facts[point]
                log.check_dense(t, point, unit, facts.clone())

    def _place_views(self) -> None:
        """The float64 copies in place of the parameters, optimizer state and buffers, as the
        captured step had them (the optimizer's step reads and writes them)."""
        self.ex._place(self.views, self.slots)

    def _place_originals(self) -> None:
        """The float32 tensors back in place (the `finish` graph has rounded into them)."""
        for p, _ in self.grads:
            p.grad = None
        self.ex._place(self.originals, self.slots)


class _CaptureFailed(Exception):
    """A capture failed; the step was run without it (`loss`)."""

    def __init__(self, cause: BaseException, loss: torch.Tensor) -> None:
        super().__init__(str(cause))
        self.cause, self.loss = cause, loss


def _layout(tensors: list[torch.Tensor]) -> list[tuple]:
    return [(v.shape, v.dtype) for v in tensors]


def _key(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
    return tuple((tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) for x, y in parts)


class _Graphs:
    """A context's graph state: eager steps so far, the captured step, or why none is made."""

    def __init__(self) -> None:
        self.eager = 0
        self.captures = 0
        self.seen: list[tuple] | None = None  # the state's layout at the last step's start
        self.step: GraphedExactStep | None = None
        self.off: str | None = None


def _why_not(ctx) -> str | None:
    """Why this context's steps are not captured (None: they can be)."""
    if os.environ.get(ENV, "1").strip() in ("0", "false", "no", "off"):
        return f"{ENV}=0"
    if ctx.exact is None:
        return "not an exact-mode step"
    if ctx.device.type != "cuda":
        return "not on a CUDA device"
    if ctx.features.autocast:
        return "autocast"
    from pol.step.amp import scaler_of
    if scaler_of(ctx.optimizer) is not None:
        return "a GradScaler"
    return None


def graphed_step(ctx, parts: list[tuple[torch.Tensor, torch.Tensor]], t: int,
                 step_eagerly: Callable[[], torch.Tensor],
                 optimizer_step: Callable[[], Any]) -> torch.Tensor:
    """Step t of an exact-mode context on its prepared micro-batches `parts`: by the context's
    CUDA graphs where they apply, else by `step_eagerly()`. They are captured at the first step
    that can be, after `WARMUP` eager ones, whose state has the layout the step before started
    with (the optimizer's state exists); they run the steps whose batches have the captured
    shapes and whose state is in the captured tensors or in tensors of their layout. `optimizer_step()`: the step's clipping and optimizer step
    (`pol.step.core.optimizer_step`), run eagerly between the graphs. Returns the step's loss."""
    state: _Graphs = ctx.graphs if isinstance(ctx.graphs, _Graphs) else _Graphs()
    ctx.graphs = state
    if state.off is None:
        state.off = _why_not(ctx)
    if state.off is not None or torch.cuda.is_current_stream_capturing():
        state.eager += 1
        return step_eagerly()
    key, now = _key(parts), _storage(ctx)
    g = state.step
    fit = g.fit(key, now) if g is not None else None
    if fit is not None:
        return g.run(ctx, parts, t, now if fit == "moved" else None)
    layout, seen = _layout(now), state.seen
    state.seen = layout
    if state.eager < WARMUP or (g is not None and key != g.key) or layout != seen:
        # the first steps; a batch of another shape (an epoch's last); a state whose layout
        # this step may still change (the optimizer's first step creates its state, as when
        # the verifier replays from checkpoint 0): eagerly
        state.eager += 1
        return step_eagerly()
    g = GraphedExactStep(key, now, optimizer_step)
    state.step = None
    state.captures += 1
    collecting = gc.isenabled()
    gc.disable()  # a collection inside a capture may free another graph's memory: it fails
    try:
        loss = g.capture(ctx, parts, t, step_eagerly)
    except _CaptureFailed as e:
        _reset_generator()
        state.off = f"capture failed: {type(e.cause).__name__}: {e.cause}"
        warnings.warn(f"pol: exact mode's step could not be captured as a CUDA graph "
                      f"({state.off}); it runs eagerly (the same results, more slowly)",
                      RuntimeWarning, stacklevel=3)
        return e.loss
    finally:
        if collecting:
            gc.enable()
    state.step = g
    return loss


def _reset_generator() -> None:
    """The current device's CUDA generator out of capture mode after a failed capture: torch
    ends it when the capture ends, which a capture invalidated inside (a forward that waits for
    the device) does not reach, and every later random draw on the device would fail. A fresh
    copy of its state (same seed and offset) takes its place."""
    try:
        gen = torch.cuda.default_generators[torch.cuda.current_device()]
        gen.graphsafe_set_state(gen.clone_state())
    except Exception:  # noqa: BLE001 - a torch without these calls: nothing to reset here
        pass


def describe(ctx) -> dict[str, Any]:
    """How the context's exact steps run: graphed or eager, and why not (for benchmarks)."""
    state = ctx.graphs if isinstance(ctx.graphs, _Graphs) else None
    if state is None:
        return {"graphed": False, "why_not": _why_not(ctx) or "no step yet"}
    return {"graphed": state.step is not None, "why_not": state.off, "eager_steps": state.eager,
            "captures": state.captures}
