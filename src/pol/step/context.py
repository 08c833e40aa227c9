"""The only constructors of a step context: everything a step depends on comes from the spec.

`build_context(spec, device)` rebuilds the model the spec names, draws W_0 from the seed and makes
its optimizer (the trainer, the verifier, its workers and the attacks); `step_context(spec, model,
optimizer, device)` wraps a caller's own model and optimizer (`fit`, `attach`). Both take every
other field (loss, preparation, augmentation and where it draws, seed, clipping and accumulation)
from the spec through `_step_fields`, so the context a prover trains with and the one a verifier
replays with cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pol.errors import ConfigError, ProofFormatError
from pol.models import build_model as build_builtin_model
from pol.registry import build_factory_model
from pol.spec import ModelSpec, TrainingSpec
from pol.step.amp import make_grad_scaler, scaler_of, set_scaler
from pol.step.core import StepContext, make_loss
from pol.step.data import AUGMENT, PREPARE
from pol.step.init import draw_init
from pol.step.optimizers import make_optimizer

__all__ = ["build_context", "build_model", "step_context", "spec_device", "augment_rng_device"]


def build_model(ms: ModelSpec, trusted_modules: Iterable[str] = ()) -> nn.Module:
    """Instantiate the spec's architecture: a built-in name (`pol.models`) or a `module:callable`
    factory from a trusted module (`pol.registry`); no init beyond the constructor's own."""
    if ":" in ms.arch:
        return build_factory_model(ms, trusted_modules)
    try:
        return build_builtin_model(ms.arch, **ms.kwargs)
    except ValueError as e:
        raise ProofFormatError(f"model: {e}") from None


def spec_device(spec: TrainingSpec) -> torch.device:
    return torch.device(spec.device)


def augment_rng_device(spec: TrainingSpec) -> torch.device | None:
    """Where the spec says augmentation draws (None: on the step's device, for proofs made before
    `augment_rng` existed)."""
    return torch.device(spec.augment_rng) if spec.augment_rng else None


def _step_fields(spec: TrainingSpec) -> dict[str, Any]:
    if spec.data.prepare not in PREPARE:
        raise ConfigError(f"unknown data preparation {spec.data.prepare!r}")
    if spec.data.augment != "none" and spec.data.augment not in AUGMENT:
        raise ConfigError(f"unknown augmentation {spec.data.augment!r}")
    return dict(loss_fn=make_loss(spec.loss, spec.step.label_smoothing),
                prepare=PREPARE[spec.data.prepare],
                augment=None if spec.data.augment == "none" else AUGMENT[spec.data.augment],
                seed=spec.seed, rng_device=augment_rng_device(spec), features=spec.step,
                micro_batch=spec.batch_size // spec.step.accumulation)


def step_context(spec: TrainingSpec, model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device | None = None) -> StepContext:
    """A step context around the caller's model and optimizer (on `device`, default: where the
    model's parameters are). fp16 autocast: the GradScaler kept with the optimizer
    (`pol.step.set_scaler`, as `pol.attach` does) before the first checkpoint was taken, since
    every checkpoint holds its state; refused without one."""
    if device is None:
        device = next(iter(model.parameters())).device
    fields = _step_fields(spec)
    if spec.step.autocast == "fp16" and scaler_of(optimizer) is None:
        raise ConfigError("fp16 autocast needs its GradScaler kept with the optimizer before "
                          "recording starts (every checkpoint holds its state): use pol.attach("
                          "autocast='fp16'), or pol.step.set_scaler(optimizer, "
                          "pol.step.make_grad_scaler(features, device)) before the Recorder")
    if spec.step.autocast != "fp16" and scaler_of(optimizer) is not None:
        raise ConfigError("the optimizer has a GradScaler, the spec declares no fp16 autocast")
    return StepContext(model=model, optimizer=optimizer, device=device, **fields)


def build_context(spec: TrainingSpec, device: torch.device | None = None,
                  trusted_modules: Iterable[str] = ()) -> StepContext:
    """Model (initialized from the run's seed), optimizer and step pieces for a spec, on `device`
    (default: the spec's). Shared by the trainer and the verifier, so both build exactly the same
    objects."""
    device = spec_device(spec) if device is None else device
    model = build_model(spec.model, trusted_modules)
    draw_init(model, spec.model, spec.seed)
    model.to(device)
    fields = _step_fields(spec)
    optimizer = make_optimizer(spec.optimizer, model.parameters())
    set_scaler(optimizer, make_grad_scaler(spec.step, device))
    return StepContext(model=model, optimizer=optimizer, device=device, **fields)
