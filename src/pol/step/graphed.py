"""Exact mode's step on a GPU, replayed as two CUDA graphs (the prover's own loop, `update()`).

An exact step launches several times the kernels of a float32 step (float64 convolutions as
matrix products, the three rounding points), and on a GPU the host's launches, not the kernels,
bound it: ResNet-20's exact step on an H200 keeps the GPU busy ~10 ms of its ~27. A CUDA graph
launches a captured sequence of kernels at once. The step is captured in two graphs around the
optimizer's step, which runs eagerly (its scalars — the learning rate of the schedule, Adam's
bias corrections — are Python numbers a graph would freeze):

- `forward` — the float32 state into its float64 copy, each micro-batch's forward and backward
  passes, rounding point GRADIENTS;
- `finish` — rounding point STATE into the float32 tensors, rounding point LOSS.

The graphs run the kernels eager exact mode runs, with the same arguments, on the same tensors
(`ExactStep` itself is what is captured, with `_MaskSink` taking the rounding log's masks); the
log's entries are gathered from the masks after each graph, as `RoundingLog.record` does for an
eager step. A proof made so is an exact-mode proof like any other: the verifier replays it
eagerly, on any device.

Used when the step can be: recording (not replaying) on a CUDA device, no autocast or GradScaler,
after `WARMUP` eager steps of the context (the optimizer's state exists, torch's handles and pol's
caches are made), for batches of the captured shapes (any other batch, as an epoch's short last
one, steps eagerly), with the same parameter, state and buffer storage as captured. A capture
that fails (a model whose forward waits for the device, for one) is reported once as a warning
and the context steps eagerly from then on. `POL_CUDA_GRAPHS=0` in the environment turns it off.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch

from pol.step.exact import GRADIENTS, LOSS, STATE, ExactStep, RoundingLog

__all__ = ["GraphedExactStep", "graphed_step", "ENV", "WARMUP"]

ENV = "POL_CUDA_GRAPHS"
WARMUP = 2  # eager exact steps of a context before its step is captured


class _MaskSink:
    """Stands for a recording `RoundingLog` while a step is captured: each rounding point's masks
    (which values lie near a tie, which rounded up) are kept as the graph's outputs instead of
    being logged; `GraphedExactStep` logs them after every replay."""

    replaying = False

    def __init__(self, log: RoundingLog) -> None:
        self.window, self.noise = log.window, log.noise
        self.masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def defers(self, device: torch.device) -> bool:
        return True

    def record(self, t: int, point: int, near: torch.Tensor, up: torch.Tensor) -> None:
        self.masks[point] = (near, up)

    def begin(self, t: int) -> None:
        pass

    def end(self, t: int, points: int) -> None:
        pass


def _storage(ctx) -> list[int]:
    """Where the step's float32 tensors live (parameters, optimizer state, buffers, in
    `ExactStep`'s order): a graph reads and writes these addresses."""
    params, buffers, slots = ExactStep.tensors(ctx.model, ctx.optimizer)
    return ([p.data_ptr() for p in params] + [st[k].data_ptr() for st, k in slots]
            + [m._buffers[n].data_ptr() for m, n in buffers])


class GraphedExactStep:
    """One context's exact step as CUDA graphs: `capture` makes them while running a step, `run`
    replays them for a later one. `key` is the step's batch shapes; `storage` the addresses it
    was captured on."""

    def __init__(self, key: tuple, storage: list[int],
                 optimizer_step: Callable[[], Any]) -> None:
        self.key, self.storage, self.optimizer_step = key, storage, optimizer_step
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.forward = torch.cuda.CUDAGraph()
        self.finish = torch.cuda.CUDAGraph()
        self.sink: _MaskSink | None = None
        self.ex: ExactStep | None = None
        self.views: list[torch.Tensor] = []
        self.slots: list[tuple[dict, str]] = []
        self.originals: list[torch.Tensor] = []
        self.grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loss: torch.Tensor | None = None

    # ----- capture

    def capture(self, ctx, parts: list[tuple[torch.Tensor, torch.Tensor]], t: int,
                step_eagerly: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Step t captured and run: `parts` its micro-batches' model inputs and targets (on the
        device). A failed capture of `forward` runs the step by `step_eagerly` instead; a failed
        capture of `finish` finishes it eagerly. Either raises `_CaptureFailed` after the step
        is done, with the step's loss."""
        log = ctx.exact
        self.inputs = [(x.clone(), y.clone()) for x, y in parts]
        self.sink = sink = _MaskSink(log)
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
        self.grads = [(p, p.grad) for p in _params(ctx.optimizer) if p.grad is not None]
        self.forward.replay()
        self._log(log, t, GRADIENTS)
        self._optimizer_step(ctx)
        flat = ex.flat
        try:
            with torch.cuda.graph(self.finish, capture_error_mode="thread_local"):
                self.loss = ex.finish(total)
        except Exception as e:  # noqa: BLE001 - the state rounded eagerly instead
            # (the capture ran `finish`'s Python, not its kernels: the step as it was before)
            ex.log, ex.flat, ex.views, ex.originals = log, flat, self.views, self.originals
            self._place_views()
            raise _CaptureFailed(e, ex.finish(total)) from e
        self.finish.replay()
        self._log(log, t, STATE, LOSS)
        return self.loss.clone()

    # ----- replay

    def matches(self, ctx, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        return _key(parts) == self.key and _storage(ctx) == self.storage

    def run(self, ctx, parts: list[tuple[torch.Tensor, torch.Tensor]], t: int) -> torch.Tensor:
        """Step t by the graphs (`matches` holds): its micro-batches into the captured inputs,
        `forward`, the optimizer's step on the float64 copies, `finish`; the log's entries from
        the masks. Returns the step's loss (float32, a tensor of its own)."""
        log = ctx.exact
        for (x, y), (sx, sy) in zip(parts, self.inputs):
            sx.copy_(x, non_blocking=True)
            sy.copy_(y, non_blocking=True)
        self.forward.replay()
        self._log(log, t, GRADIENTS)
        self._place_views()
        try:
            for p, g in self.grads:
                p.grad = g
            self._optimizer_step(ctx)
            self.finish.replay()
        finally:
            self._place_originals()
        self._log(log, t, STATE, LOSS)
        return self.loss.clone()

    # ----- pieces

    def _log(self, log: RoundingLog, t: int, *points: int) -> None:
        """The masks of `points` logged for step t (copies: the next replay rewrites them)."""
        for point in points:
            if point in self.sink.masks:
                near, up = self.sink.masks[point]
                log.record(t, point, near.clone(), up.clone())

    def _optimizer_step(self, ctx) -> None:
        self.optimizer_step()

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


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _key(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
    return tuple((tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) for x, y in parts)


class _Graphs:
    """A context's graph state: eager steps so far, the captured step, or why none is made."""

    def __init__(self) -> None:
        self.eager = 0
        self.captures = 0
        self.step: GraphedExactStep | None = None
        self.off: str | None = None


def _why_not(ctx) -> str | None:
    """Why this context's steps are not captured (None: they can be)."""
    if os.environ.get(ENV, "1").strip() in ("0", "false", "no", "off"):
        return f"{ENV}=0"
    if ctx.exact is None or ctx.exact.replaying:
        return "not recording an exact-mode step"
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
    CUDA graphs where they apply (captured at the first step that can be, after `WARMUP` eager
    ones), else by `step_eagerly()`. `optimizer_step()`: the step's clipping and optimizer step
    (`pol.step.core.optimizer_step`), run eagerly between the graphs. Returns the step's loss."""
    state: _Graphs = ctx.graphs if isinstance(ctx.graphs, _Graphs) else _Graphs()
    ctx.graphs = state
    if state.off is None:
        state.off = _why_not(ctx)
    if state.off is not None or state.eager < WARMUP or torch.cuda.is_current_stream_capturing():
        state.eager += 1
        return step_eagerly()
    g = state.step
    if g is not None and g.matches(ctx, parts):
        return g.run(ctx, parts, t)
    if g is not None and _key(parts) != g.key:
        return step_eagerly()  # a batch of another shape (an epoch's last): eagerly
    g = GraphedExactStep(_key(parts), _storage(ctx), optimizer_step)
    state.step = None
    state.captures += 1
    try:
        loss = g.capture(ctx, parts, t, step_eagerly)
    except _CaptureFailed as e:
        _reset_generator()
        state.off = f"capture failed: {type(e.cause).__name__}: {e.cause}"
        warnings.warn(f"pol: exact mode's step could not be captured as a CUDA graph "
                      f"({state.off}); it runs eagerly (the proof is the same, the training "
                      "slower)", RuntimeWarning, stacklevel=3)
        return e.loss
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
