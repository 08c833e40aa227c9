"""The one training step, shared by the prover, the verifier's replay and the attacks.

Everything that changes a step is an input here or in the recorded state: the batch (raw samples
gathered by index), the learning rate of every parameter group, the step's random seed (dropout and
augmentation), the model and optimizer state. The verifier never re-implements training; it calls
`update()` with what the proof recorded. A `StepContext` is made by `pol.step.build_context` (a
model rebuilt from the spec) or `pol.step.step_context` (the caller's model and optimizer): never by
hand, so that every field that changes a step comes from the spec.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from pol.spec import StepSpec
from pol.step.amp import autocast, scaler_of
from pol.step.data import to_device
from pol.step.exact import ExactStep, RoundingLog
from pol.step.randomness import augment_generator, seed_step

__all__ = ["LOSSES", "StepContext", "backward", "clip_gradients", "make_loss", "micro_batches",
           "optimizer_step", "step_inputs", "update"]


def _lm_cross_entropy(logits: torch.Tensor, y: torch.Tensor,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token loss: logits [B, T, V], targets [B, T]."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       label_smoothing=label_smoothing)


def _causal_lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                             label_smoothing: float = 0.0) -> torch.Tensor:
    """Causal-LM loss as Hugging Face transformers computes it from `labels` (ForCausalLMLoss,
    without num_items_in_batch): logits [B, T, V] in float32, labels [B, T] of the input
    positions, position i predicting labels[i + 1], -100 ignored, the mean over the rest."""
    shifted = nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    return nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]),
                                       shifted.view(-1), ignore_index=-100,
                                       label_smoothing=label_smoothing)


# The spec's loss names. One function object per name, so two contexts of one spec hold the same.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": nn.functional.cross_entropy,
    "mse": nn.functional.mse_loss,
    "lm_cross_entropy": _lm_cross_entropy,
    "causal_lm_cross_entropy": _causal_lm_cross_entropy,
}


@functools.lru_cache(maxsize=None)
def make_loss(name: str, label_smoothing: float = 0.0
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The spec's loss (with cross-entropy's label smoothing): one object per (name, smoothing)."""
    try:
        fn = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}") from None
    if not label_smoothing:
        return fn
    if name not in ("cross_entropy", "lm_cross_entropy", "causal_lm_cross_entropy"):
        raise ValueError(f"label smoothing needs a cross-entropy loss, not {name!r}")
    return functools.partial(fn, label_smoothing=float(label_smoothing))


@dataclass
class StepContext:
    """A model with its optimizer and the fixed parts of a step (loss, data preparation)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    prepare: Callable[[torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None
    seed: int
    device: torch.device
    # where augmentation draws its random numbers: CUDA's Philox and the CPU's Mersenne Twister
    # give different numbers for one seed, so a GPU proof replayed on a CPU would augment
    # differently. New proofs draw on the CPU everywhere (a few integers a step); None = on
    # `device` (proofs made before spec.augment_rng existed)
    rng_device: torch.device | None = None
    # clipping and accumulation (the spec's `step`; label smoothing is in `loss_fn`); the
    # micro-batch size is the spec's batch size / accumulation
    features: StepSpec = field(default_factory=StepSpec)
    micro_batch: int = 0  # 0: the whole batch at once (accumulation 1)
    # exact mode (`features.exact`): the rounding log the steps record (prover) or replay
    # (verifier, `RoundingLog.replay`); None otherwise
    exact: RoundingLog | None = None
    # exact mode recorded on a GPU: the step's CUDA graphs (`pol.step.graphed`), made by `update()`
    graphs: Any = field(default=None, repr=False, compare=False)

    def generator(self, t: int) -> torch.Generator:
        return augment_generator(self.seed, t, self.rng_device or self.device)


def micro_batches(ctx: StepContext, n: int) -> Iterator[slice]:
    """The micro-batches of a step's batch of `n` samples: one slice of the whole batch without
    accumulation, else consecutive slices of `ctx.micro_batch` (the last may be short)."""
    size = ctx.micro_batch if ctx.features.accumulation > 1 else n
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def step_inputs(ctx: StepContext, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Model input and targets of a raw (micro-)batch: on the step's device, prepared, augmented
    from `generator` (the step's, `ctx.generator(t)`; None when the spec does not augment).
    Exact mode prepares on the CPU, then moves the input: a GPU's kernels may round the
    preparation's float32 arithmetic otherwise (CUDA divides by a scalar as a multiplication by
    its reciprocal, so `x / 255` differs from the CPU's in the last bit)."""
    if ctx.exact is not None:
        inputs = to_device(ctx.prepare(x.cpu()), ctx.device)  # no wait for the GPU's queue
    else:
        inputs = ctx.prepare(x.to(ctx.device, non_blocking=True))
    if ctx.augment is not None:
        inputs = ctx.augment(inputs, generator)
    return inputs, y.to(ctx.device, non_blocking=True)


def clip_gradients(features: StepSpec, optimizer: torch.optim.Optimizer) -> None:
    """The spec's gradient clipping over the optimizer's parameters, in param_groups order (the
    prover's wrapped optimizer and the replay both call this)."""
    if not (features.clip_grad_norm or features.clip_grad_value):
        return
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if features.clip_grad_norm:
        nn.utils.clip_grad_norm_(params, features.clip_grad_norm,
                                 norm_type=features.clip_norm_type)
    else:
        nn.utils.clip_grad_value_(params, features.clip_grad_value)


def backward(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """A micro-batch's backward pass: through the GradScaler kept with the optimizer (fp16
    autocast), else plain."""
    scaler = scaler_of(optimizer)
    (loss if scaler is None else scaler.scale(loss)).backward()


def optimizer_step(features: StepSpec, optimizer: torch.optim.Optimizer) -> bool:
    """After the backward passes: the spec's clipping and the optimizer's step. With a GradScaler
    (fp16 autocast): unscale (before clipping, as torch's recipe says), clip, `scaler.step`
    (which skips the step when a gradient is inf/NaN) and `scaler.update()`. The prover's
    wrapped optimizer and the replay both call this. Returns whether the GradScaler skipped the
    step (read from what `scaler.step` synchronized already: no extra host sync)."""
    scaler = scaler_of(optimizer)
    if scaler is None:
        clip_gradients(features, optimizer)
        optimizer.step()
        return False
    if features.clip_grad_norm or features.clip_grad_value:
        scaler.unscale_(optimizer)
        clip_gradients(features, optimizer)
    scaler.step(optimizer)
    found = scaler._per_optimizer_states[id(optimizer)].get("found_inf_per_device", {})
    skipped = any(bool(v.item()) for v in found.values())
    scaler.update()
    return skipped


def update(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, lrs: Sequence[float],
           t: int) -> torch.Tensor:
    """One SGD-family step at global step `t` on the raw batch (x, y): its micro-batches' forward
    and backward passes (each loss / accumulation; forward and loss under the spec's autocast),
    clipping, the optimizer's step (through the GradScaler with fp16). Returns the step's loss
    (the sum of the micro-batches' scaled losses, unscaled by any GradScaler; detached, on
    device, not synchronized). Exact mode (`ctx.exact`): the step in float64, rounded to float32
    at its boundaries with the rounding log (`pol.step.exact`); the loss returned in float32."""
    for group, lr in zip(ctx.optimizer.param_groups, lrs):
        group["lr"] = float(lr)
    seed_step(ctx.seed, t)
    gen = ctx.generator(t) if ctx.augment is not None else None
    ctx.model.train()
    if ctx.exact is not None and ctx.device.type == "cuda":
        # exact mode on a GPU: the step as CUDA graphs where it can be (`pol.step.graphed`)
        from pol.step.graphed import graphed_step
        parts = [step_inputs(ctx, x[part], y[part], gen) for part in micro_batches(ctx, len(x))]
        # (the optimizer step as a partial: a closure over ctx, kept by ctx's graphs, would make
        # a reference cycle whose collection, inside a later capture, frees a graph's memory)
        return graphed_step(ctx, parts, t, lambda: _step(ctx, parts, t),
                            functools.partial(optimizer_step, ctx.features, ctx.optimizer))
    return _step(ctx, (step_inputs(ctx, x[part], y[part], gen)
                       for part in micro_batches(ctx, len(x))), t)


def _step(ctx: StepContext, parts: Iterable[tuple[torch.Tensor, torch.Tensor]],
          t: int) -> torch.Tensor:
    """`update()`'s step, eagerly, on its micro-batches' model inputs and targets (`parts`, on
    the device, made as they are iterated)."""
    ctx.optimizer.zero_grad(set_to_none=True)
    ex = ExactStep(ctx.exact, ctx.model, ctx.optimizer, t) if ctx.exact is not None else None
    try:
        n_acc = ctx.features.accumulation
        total = None
        for inputs, targets in parts:
            if ex is not None:
                inputs, targets = ex.inputs(inputs, targets)
            with autocast(ctx.features, ctx.device):
                loss = ctx.loss_fn(ctx.model(inputs), targets)
            if n_acc > 1:
                loss = loss / n_acc
            backward(ctx.optimizer, loss)
            total = loss.detach() if total is None else total + loss.detach()
        if ex is not None:
            ex.round_grads()
        optimizer_step(ctx.features, ctx.optimizer)
        if ex is not None:
            total = ex.finish(total)
    except BaseException:
        if ex is not None:
            ex.restore()
        raise
    return total
