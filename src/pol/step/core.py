"""The one training step, shared by the prover, the verifier's replay and the attacks.

Everything that changes a step is an input here or in the recorded state: the batch (raw samples
gathered by index), the learning rate of every parameter group, the step's random seed (dropout and
augmentation), the model and optimizer state. The verifier never re-implements training; it calls
`update()` with what the proof recorded. A `StepContext` is made by `pol.step.build_context` (a
model rebuilt from the spec) or `pol.step.step_context` (the caller's model and optimizer): never by
hand, so that every field that changes a step comes from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from pol.step.randomness import augment_generator, seed_step

__all__ = ["LOSSES", "StepContext", "make_loss", "update"]


def _lm_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token loss: logits [B, T, V], targets [B, T]."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


# The spec's loss names. One function object per name, so two contexts of one spec hold the same.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": nn.functional.cross_entropy,
    "mse": nn.functional.mse_loss,
    "lm_cross_entropy": _lm_cross_entropy,
}


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}") from None


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

    def generator(self, t: int) -> torch.Generator:
        return augment_generator(self.seed, t, self.rng_device or self.device)


def update(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, lrs: Sequence[float],
           t: int) -> torch.Tensor:
    """One SGD-family step at global step `t` on the raw batch (x, y). Returns the loss (detached,
    on device, not synchronized)."""
    for group, lr in zip(ctx.optimizer.param_groups, lrs):
        group["lr"] = float(lr)
    seed_step(ctx.seed, t)
    inputs = ctx.prepare(x.to(ctx.device, non_blocking=True))
    if ctx.augment is not None:
        inputs = ctx.augment(inputs, ctx.generator(t))
    targets = y.to(ctx.device, non_blocking=True)
    ctx.model.train()
    ctx.optimizer.zero_grad(set_to_none=True)
    loss = ctx.loss_fn(ctx.model(inputs), targets)
    loss.backward()
    ctx.optimizer.step()
    return loss.detach()
