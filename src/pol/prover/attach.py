"""`pol.attach`: record a proof around an existing training loop, changing one or two lines.

    opt, loader = pol.attach(model=model, optimizer=opt, data=(X, Y), out="proof",
                             model_spec=ModelSpec("mlp", arch), batch_size=64, epochs=3, k=10,
                             init="from-seed", clip_grad_norm=1.0)
    for epoch in range(3):
        for x, y in loader:                     # was: for x, y in DataLoader(...)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step(loss=loss)                 # was: clip_grad_norm_(...); opt.step()
    print(opt.root_digest)                      # the proof is finished at the last step

`attach` validates everything first (the optimizer's parameters are the model's, the optimizer and
each declared feature are ones pol replays) and raises `ConfigError` naming what it cannot replay,
before anything is written. It returns two drop-ins:

- the optimizer: a `torch.optim.Optimizer` (so `torch.optim.lr_scheduler` schedulers take it; or
  make the scheduler on your own optimizer before attaching) whose `step(loss=...)` applies the
  declared clipping, steps your optimizer, clears the gradients (`set_to_none`, as every replayed
  step starts) and records the step: its batch's indices, the lr the step ran with (so any
  scheduler's lr is recorded and replayed) and the loss you pass. With accumulation, call
  `opt.record_loss(loss)` after each micro-batch's backward (the scaled loss, `loss / N`) and
  `opt.step()` once the step's N micro-batches are done — or pass their sum as `step(loss=...)`.
  Losses stay on the device until a checkpoint (no host synchronization per step).
- the loader: an iterable of `(inputs, targets)` micro-batches, one epoch per `iter()`, gathered by
  index in the order drawn from the seed (`data.order = "seed"`: the verifier checks every index),
  prepared (`prepare`) and augmented (`augment`) exactly as the replay does, on the model's device.
  Each step's first micro-batch seeds torch's global RNG for the step, so dropout replays.

`batch_size` is the loader's (micro-)batch: an optimizer step with `accumulation=N` takes N of them
(the spec's batch_size is N × batch_size; without `drop_last` an epoch's last step may take fewer).
Remove your own `clip_grad_norm_` / `clip_grad_value_` call and declare it here instead
(`clip_grad_norm=`, `norm_type=`, `clip_grad_value=`); compute the loss the spec declares (`loss=`,
`label_smoothing=`; `opt.loss_fn` is that function). The low-level `pol.Recorder` stays for loops
that need full control.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from pol.errors import ConfigError
from pol.prover.recorder import Recorder
from pol.spec import ModelSpec, ScheduleSpec, StepSpec
from pol.step.context import step_context, uncompiled
from pol.step.amp import autocast as autocast_context
from pol.step.amp import check_user_scaler, make_grad_scaler, scaler_of, set_scaler
from pol.step.core import backward, make_loss, micro_batches, optimizer_step, step_inputs
from pol.step.exact import ExactStep
from pol.step.optimizers import clear_fresh_state, optimizer_spec_of
from pol.step.randomness import epoch_order, seed_step

__all__ = ["attach", "AttachedOptimizer", "AttachedLoader"]


class _Run:
    """What the loader and the optimizer share: the Recorder, the step context and where the
    current step is (its indices, how many of its micro-batches were handed out, its losses)."""

    def __init__(self, rec: Recorder, optimizer: torch.optim.Optimizer) -> None:
        self.rec = rec
        self.ctx = step_context(rec.spec, rec.model, optimizer)
        self.idx: np.ndarray | None = None  # the current step's indices (None: between steps)
        self.parts = 0  # micro-batches of the current step
        self.drawn = 0  # ... handed out so far
        self.gen: torch.Generator | None = None
        self.loss: torch.Tensor | None = None  # sum of record_loss() in the current step
        # what every step's checks walk, listed once (a few µs a step instead of ~100)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.modules = list(rec.model.modules())
        self.root_digest: str | None = None
        self.exact: ExactStep | None = None  # exact mode: the step in float64 (one per step)
        if self.ctx.exact is not None:
            rec.use_rounding_log(self.ctx.exact)

    def begin_step(self, idx: np.ndarray) -> None:
        if self.idx is not None:
            raise ConfigError(f"step {self.rec.t}: the loader moved on to the next step's batches "
                              f"after {self.drawn} micro-batch(es), but opt.step() was not called "
                              "(call it once per step: with accumulation, after every "
                              f"{self.rec.spec.step.accumulation} micro-batches)")
        self.idx, self.drawn, self.loss = idx, 0, None
        self.parts = sum(1 for _ in micro_batches(self.ctx, len(idx)))
        seed_step(self.rec.spec.seed, self.rec.t)  # dropout: what update() seeds at this step
        self.gen = self.ctx.generator(self.rec.t) if self.ctx.augment is not None else None
        if self.ctx.exact is not None:  # as update() does: the model in float64 for the step
            if self.exact is not None:
                self.exact.restore()
            self.exact = ExactStep(self.ctx.exact, self.ctx.model, self.ctx.optimizer,
                                   self.rec.t)

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch as the model takes it (float64 in exact mode)."""
        x, y = step_inputs(self.ctx, x, y, self.gen)
        return (x, y) if self.exact is None else self.exact.inputs(x, y)

    def end_step(self) -> np.ndarray:
        if self.idx is None:
            raise ConfigError(f"opt.step() at step {self.rec.t} without a batch from the attached "
                              "loader: train on the batches it hands out")
        if self.drawn != self.parts:
            raise ConfigError(f"opt.step() after {self.drawn} of the step's {self.parts} "
                              "micro-batches: the declared accumulation is "
                              f"{self.rec.spec.step.accumulation}")
        idx, self.idx = self.idx, None
        return idx


class AttachedLoader:
    """The batches of an attached run: `(inputs, targets)` on the model's device, one epoch per
    `iter()`, in the seed's order (see the module's docstring)."""

    def __init__(self, run: _Run, num_workers: int = 0) -> None:
        self._run = run
        self._workers = num_workers

    def __len__(self) -> int:
        """Micro-batches per epoch."""
        rec, ctx = self._run.rec, self._run.ctx
        B, n = rec.spec.batch_size, len(rec.dataset)
        return sum(sum(1 for _ in micro_batches(ctx, len(range(s * B, min((s + 1) * B, n)))))
                   for s in range(rec.steps_per_epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        run = self._run
        rec, ctx = run.rec, run.ctx
        if rec.t >= rec.total_steps:
            raise ConfigError(f"all {rec.total_steps} steps of the declared run "
                              f"({rec.epochs} epochs) are recorded")
        S, B, ds = rec.steps_per_epoch, rec.spec.batch_size, rec.dataset
        order = epoch_order(rec.spec.seed, rec.t // S, len(ds))
        steps = [order[s * B:(s + 1) * B] for s in range(rec.t % S, S)]
        for idx, (x, y) in zip(steps, _gathered(ds, steps, self._workers)):
            run.begin_step(idx)
            for part in micro_batches(ctx, len(idx)):
                run.drawn += 1
                yield run.batch(x[part], y[part])


class _Gather(torch.utils.data.Dataset):
    """One step's raw batch by its indices (for DataLoader workers: the order is decided here)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __getitem__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.ds.x[idx]), torch.from_numpy(self.ds.y[idx])


def _gathered(ds: Any, steps: list[np.ndarray], workers: int) -> Iterator:
    """The raw batch of each step in `steps`, in order; read by `workers` DataLoader worker
    processes (0: here, one at a time). The indices are the seed's, decided in this process."""
    if workers == 0:
        return (_Gather(ds)[idx] for idx in steps)
    return iter(torch.utils.data.DataLoader(_Gather(ds), batch_size=None, sampler=steps,
                                            num_workers=workers))


class AttachedOptimizer(torch.optim.Optimizer):
    """The user's optimizer, recording: `step(loss=...)` clips as declared, steps, clears the
    gradients and records the step (see the module's docstring). Everything else is the wrapped
    optimizer's (`param_groups`, `state`, `zero_grad`, `state_dict`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, run: _Run) -> None:
        # a proxy: torch.optim.Optimizer.__init__ is not called, the wrapped optimizer holds it all
        self._inner = optimizer
        self._run = run
        self.defaults = optimizer.defaults

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self._inner.param_groups

    @property
    def state(self):  # type: ignore[override]
        return self._inner.state

    @property
    def recorder(self) -> Recorder:
        return self._run.rec

    @property
    def loss_fn(self):
        """The loss the spec declares (with its label smoothing)."""
        return self._run.ctx.loss_fn

    @property
    def proof(self):
        return self._run.rec.path

    @property
    def scaler(self):
        """The run's `torch.amp.GradScaler` (fp16 autocast; None otherwise)."""
        return scaler_of(self._inner)

    def autocast(self):
        """The declared autocast context (`autocast=`) for the forward pass and the loss: the
        replay runs exactly these under it (a no-op when none is declared)."""
        return autocast_context(self._run.rec.spec.step, self._run.ctx.device)

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`, through the GradScaler with fp16 autocast
        (`scaler.scale(loss).backward()`)."""
        backward(self._inner, loss)

    @property
    def root_digest(self) -> str | None:
        """The proof's root digest once its last step is recorded (None before)."""
        return self._run.root_digest

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:  # what torch's zero_grad does, without its per-call profiling overhead
            for p in self._run.params:
                p.grad = None
        else:
            self._inner.zero_grad(set_to_none=False)

    def state_dict(self) -> dict[str, Any]:
        return self._inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        raise ConfigError("load_state_dict on an attached optimizer: the proof records the "
                          "optimizer from its first step")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise ConfigError("add_param_group on an attached optimizer: replay builds the optimizer "
                          "over the model's parameters as attached")

    def record_loss(self, loss: torch.Tensor) -> None:
        """Add a micro-batch's (scaled) loss to the step's loss: with accumulation, call it after
        each micro-batch's backward, then `step()` without a loss. Stays on the device."""
        run = self._run
        loss = loss.detach().reshape(())
        loss = loss.double() if run.exact is not None else loss.float()
        run.loss = loss if run.loss is None else run.loss + loss

    def step(self, closure=None, *,  # type: ignore[override]
             loss: torch.Tensor | float | None = None) -> Any:
        """Clip as declared, step the optimizer, clear the gradients, record the step with `loss`
        (the step's loss; default: the sum of `record_loss` since the step began). A `closure`
        (as torch optimizers take it, and as Lightning calls it) runs first, with grad enabled:
        it computes the (last micro-batch's) loss and calls backward; the loss it returns is
        added to the step's unless the closure passed it to `record_loss` itself. Returns the
        closure's loss (None without a closure). At the run's last step the proof is finished
        (`root_digest`)."""
        run = self._run
        out = None
        if closure is not None:
            before = run.loss
            with torch.enable_grad():
                out = closure()
            if loss is None and run.loss is before and isinstance(out, torch.Tensor):
                self.record_loss(out)
        if loss is None:
            loss = run.loss
        if loss is None:
            raise ConfigError("opt.step() needs the step's loss: opt.step(loss=loss), or "
                              "opt.record_loss(loss) after each micro-batch (the verifier "
                              "recomputes every replayed step's loss and compares)")
        if not any(p.grad is not None for p in run.params):
            raise ConfigError(f"opt.step() at step {run.rec.t} with no gradients: call "
                              "loss.backward() first")
        if not all(m.training for m in run.modules):
            name = next(n or "the model" for n, m in run.rec.model.named_modules()
                        if not m.training)
            raise ConfigError(f"step {run.rec.t} ran with {name} in eval mode: the replay trains "
                              "in train mode (call model.train() after evaluating)")
        idx = run.end_step()
        if run.exact is not None:  # exact mode: the gradients rounded, as update() does
            run.exact.round_grads()
        # clipping; with fp16 the GradScaler, which may skip the step (an overflowed gradient)
        skipped = optimizer_step(run.rec.spec.step, self._inner)
        if run.exact is not None:  # the state (and the loss) rounded into the float32 tensors
            ex, run.exact = run.exact, None
            loss = ex.finish(torch.as_tensor(loss, dtype=torch.float64,
                                             device=run.ctx.device).detach())
        lrs = [g["lr"] for g in self._inner.param_groups]
        if skipped:  # recorded at lr 0: it moved nothing (the verifier probes a step that moved)
            for g in self._inner.param_groups:
                g["lr"] = 0.0
        try:
            run.rec.record_batch(idx, seed_rng=False)  # the lr in the groups: the step's lr
        finally:
            for g, lr in zip(self._inner.param_groups, lrs):
                g["lr"] = lr
        for p in run.params:  # the next step starts as a replayed one does: no gradients
            p.grad = None
        run.rec.step(loss)
        if run.rec.t == run.rec.total_steps:
            run.root_digest = run.rec.close()
        return out

    def close(self) -> str:
        """The root digest; the proof is finished by the last step (refused before it)."""
        if self._run.root_digest is None:
            self._run.root_digest = self._run.rec.close()
        return self._run.root_digest

    def __repr__(self) -> str:
        return f"AttachedOptimizer({self._inner!r})"


def _check_optimizer(model: nn.Module, optimizer: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if isinstance(optimizer, AttachedOptimizer):
        raise ConfigError("this optimizer is attached already")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer must be a torch.optim.Optimizer, not "
                          f"{type(optimizer).__name__}")
    theirs = [p for g in optimizer.param_groups for p in g["params"]]
    mine = list(model.parameters())
    if len(theirs) != len(mine) or any(a is not b for a, b in zip(theirs, mine)):
        ids = {id(p) for p in mine}
        foreign = sum(id(p) not in ids for p in theirs)
        raise ConfigError(
            "the optimizer's parameters are not the model's: " +
            (f"{foreign} of its {len(theirs)} parameters are not in the model"
             if foreign else f"it holds {len(theirs)} of the model's {len(mine)} parameters"
             if len(theirs) != len(mine) else "they are in another order") +
            " (the replay optimizes model.parameters(), all of them, in order)")
    hooks = [name for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")
             if getattr(optimizer, name, None)]
    if hooks:
        raise ConfigError(f"the optimizer has step hooks ({', '.join(hooks)}): a hook can change "
                          "a step that the replay would not")
    try:
        optimizer_spec_of(optimizer)
        clear_fresh_state(optimizer)  # Adagrad's state as built: filled again at its first step
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _features(clip_grad_norm: float | None, norm_type: float, clip_grad_value: float | None,
              accumulation: int, label_smoothing: float, loss: str) -> StepSpec:
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ConfigError(f"clip_grad_norm={clip_grad_norm!r}: must be positive (None = no "
                          "clipping)")
    if clip_grad_value is not None and not clip_grad_value > 0:
        raise ConfigError(f"clip_grad_value={clip_grad_value!r}: must be positive (None = no "
                          "clipping)")
    if isinstance(norm_type, (int, float)) and math.isinf(norm_type):
        raise ConfigError("norm_type=inf is not supported (a finite p-norm)")
    try:
        make_loss(loss, label_smoothing)
        return StepSpec(clip_grad_norm=float(clip_grad_norm or 0.0),
                        clip_norm_type=float(norm_type),
                        clip_grad_value=float(clip_grad_value or 0.0),
                        accumulation=accumulation, label_smoothing=float(label_smoothing))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _mixed_precision(features: StepSpec, autocast: str | None, grad_scaler: Any,
                     model: nn.Module, optimizer: torch.optim.Optimizer,
                     schedule: ScheduleSpec | None = None) -> StepSpec:
    """`autocast="bf16"` / `"fp16"`: run the forward pass and the loss under `opt.autocast()`.
    fp16 adds a GradScaler: `grad_scaler` (yours, fresh, its settings recorded) or one pol makes
    with torch's defaults; call `opt.backward(loss)` (= `opt.scaler.scale(loss).backward()`) and
    `opt.step(loss=loss)`, which unscales, clips, steps (or skips the step when a gradient
    overflowed, as the replay will) and updates the scale — never `scaler.step` / `update`
    yourself. The scaler is kept with the optimizer and saved in every checkpoint. A skipped
    step is recorded at lr 0 (it moved nothing; the verifier's data-dependence probe takes a
    step that moved), so fp16 takes no declared schedule."""
    import dataclasses
    if autocast in (None, "", "off"):
        if grad_scaler is not None:
            raise ConfigError("grad_scaler needs autocast='fp16'")
        set_scaler(optimizer, None)
        return features
    if autocast not in ("bf16", "fp16"):
        raise ConfigError(f"autocast={autocast!r}: 'bf16' or 'fp16' (or None)")
    device = next(iter(model.parameters())).device
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"autocast on {device.type} is not supported (cpu, cuda)")
    if autocast == "bf16" and grad_scaler is not None:
        raise ConfigError("grad_scaler with bf16 autocast: bf16 needs no loss scaling (pass "
                          "autocast='fp16' to use one)")
    try:
        if autocast == "fp16" and grad_scaler is not None:
            s = grad_scaler
            features = dataclasses.replace(
                features, autocast="fp16", scaler_init_scale=float(s._init_scale),
                scaler_growth_factor=float(s._growth_factor),
                scaler_backoff_factor=float(s._backoff_factor),
                scaler_growth_interval=int(s._growth_interval))
        else:
            features = dataclasses.replace(features, autocast=autocast)
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"autocast={autocast!r}: {e}") from None
    if autocast == "fp16":
        if schedule is not None and schedule.name != "recorded":
            raise ConfigError("a declared schedule with fp16 autocast: a step the GradScaler "
                              "skips is recorded at lr 0, off any schedule (leave schedule=None: "
                              "the lr of every step is recorded)")
        if grad_scaler is not None:
            check_user_scaler(grad_scaler, features, device)
        set_scaler(optimizer, grad_scaler or make_grad_scaler(features, device))
    else:
        set_scaler(optimizer, None)
    return features


def attach(*, model: nn.Module, optimizer: torch.optim.Optimizer, data: Any,
           out: str | os.PathLike, model_spec: ModelSpec, batch_size: int, epochs: int,
           k: int = 10, seed: int = 0, loss: str = "cross_entropy", prepare: str = "float",
           augment: str = "none", clip_grad_norm: float | None = None, norm_type: float = 2.0,
           clip_grad_value: float | None = None, accumulation: int = 1,
           label_smoothing: float = 0.0, drop_last: bool | None = None,
           schedule: ScheduleSpec | None = None, init: str | dict | None = None,
           precision: str = "fp32", compress: bool = False, overwrite: bool = False,
           durable: bool = True, data_name: str = "user", data_params: dict | None = None,
           resume: bool = False,
           num_workers: int = 0, autocast: str | None = None,
           grad_scaler: Any = None,
           allow_nondeterministic: bool = False,
           exact: bool = False) -> tuple[AttachedOptimizer, AttachedLoader]:
    """Attach pol to a training loop: returns `(optimizer, loader)` drop-ins that record a proof
    in `out` (see the module's docstring). Validates first: anything pol cannot replay (an
    optimizer not in `pol.step.OPTIMIZERS`, a fused kernel, parameter groups that differ in more
    than lr and weight decay, an optimizer over other parameters, an unknown loss or feature, a
    `torch.compile` backend other than aot_eager / eager: `pol.step.context.uncompiled`) is a
    `ConfigError` that names it, raised before anything is written.

    `batch_size`: the loader's micro-batch; `accumulation`: micro-batches per optimizer step;
    `drop_last` (default: on with accumulation, so that every step has all N micro-batches);
    `schedule`: None records the lr of every step as the optimizer holds it (any
    `torch.optim.lr_scheduler`, or none), or a declared `ScheduleSpec` the verifier checks the
    recorded lrs against. `init`, `precision`, `compress`, `overwrite`, `durable`: as for
    `pol.Recorder`. `data`: arrays, an ArrayDataset, a torch Dataset (with
    `data_params={"factory": "module:callable"}`) or a `pol.datasets.TokenFile`
    (`pol.prover.data_sources`); `num_workers` > 0: the loader reads each step's batch in that
    many DataLoader worker processes (the indices are still the seed's).
    `resume=True` continues an interrupted proof in `out` (same arguments) from its
    last complete checkpoint: the model and optimizer are loaded from it, `opt.recorder.t` is the
    step it continues at, and the loader hands out the batches from there (fast-forward your lr
    scheduler by that many steps). `autocast` "bf16" / "fp16": mixed precision (see
    `_mixed_precision`). `exact=True`: exact mode (`pol.step.exact`): the loader hands out
    float64 batches and the model computes in float64 between the first batch of a step and
    `opt.step()`, which rounds to float32 with the rounding log, so the proof replays bitwise on
    other hardware (compute the loss from the model's output as it is: no `.float()`)."""
    model = uncompiled(model)  # torch.compile: the module underneath (or ConfigError)
    _check_optimizer(model, optimizer)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers={num_workers!r}: an integer >= 0")
    features = _features(clip_grad_norm, norm_type, clip_grad_value, accumulation,
                         label_smoothing, loss)
    features = _mixed_precision(features, autocast, grad_scaler, model, optimizer, schedule)
    if exact:
        import dataclasses
        try:
            features = dataclasses.replace(features, exact=True)
        except ValueError as e:
            raise ConfigError(f"exact=True: {e}") from None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: a positive integer (the micro-batch)")
    rec = Recorder(out, model=model, optimizer=optimizer, data=data, model_spec=model_spec,
                   batch_size=batch_size * features.accumulation, epochs=epochs, k=k, seed=seed,
                   loss=loss, prepare=prepare, augment=augment, precision=precision,
                   schedule=schedule, data_name=data_name, data_params=data_params,
                   overwrite=overwrite, durable=durable, init=init, compress=compress,
                   data_order="seed", features=features, resume=resume,
                   drop_last=features.accumulation > 1 if drop_last is None else drop_last,
                   allow_nondeterministic=allow_nondeterministic)
    run = _Run(rec, optimizer)
    return AttachedOptimizer(optimizer, run), AttachedLoader(run, num_workers)
