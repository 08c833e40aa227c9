"""Mixed precision as the spec's `step.autocast` declares it: the autocast context of a step's
forward pass and loss, and (fp16) the `torch.amp.GradScaler` that scales the backward pass, skips
steps whose gradients overflow and adapts its scale.

The scaler is part of the replay state: its scale and growth tracker decide whether the next steps
are skipped, so every checkpoint holds them (`scaler.scale`, `scaler.growth_tracker`, through
`pol.step.state`). It is kept with the optimizer it steps (`scaler_of(optimizer)`), so the
state functions, which take the model and the optimizer, save and load it without any caller
knowing about it.

`pol.attach(autocast="fp16")` does all of it. A loop on the low-level Recorder keeps the scaler
with its optimizer before the Recorder is made (`set_scaler(opt, make_grad_scaler(features,
device))`, so that checkpoint 0 holds it), steps through `pol.step.optimizer_step(features, opt)`
and records a step it reports skipped at lr 0 (the verifier probes data dependence at a step that
moved).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from pol.errors import ConfigError
from pol.spec import StepSpec
from pol.step.optimizers import SCALER_PREFIX

__all__ = ["AUTOCAST_DTYPES", "SCALER_ENTRIES", "autocast", "make_grad_scaler", "scaler_of",
           "set_scaler", "scaler_settings", "scaler_problem"]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# the scaler's checkpoint entries: name -> dtype (shape ())
SCALER_ENTRIES = {SCALER_PREFIX + "scale": torch.float32,
                  SCALER_PREFIX + "growth_tracker": torch.int32}
_ATTR = "_pol_grad_scaler"


def autocast(features: StepSpec, device: torch.device) -> ContextManager:
    """The autocast context of a micro-batch's forward pass and loss (a no-op when off)."""
    if not features.autocast:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[features.autocast])


def scaler_settings(features: StepSpec) -> dict:
    return dict(init_scale=features.scaler_init_scale,
                growth_factor=features.scaler_growth_factor,
                backoff_factor=features.scaler_backoff_factor,
                growth_interval=features.scaler_growth_interval)


def make_grad_scaler(features: StepSpec, device: torch.device):
    """The spec's GradScaler on `device`, its scale and growth tracker made now (torch makes them
    at the first `scale()`), so that checkpoint 0 holds them. None without fp16 autocast."""
    if features.autocast != "fp16":
        return None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"fp16 autocast with a GradScaler on {device.type} is not supported "
                          "(cpu, cuda)")
    scaler = torch.amp.GradScaler(device.type, **scaler_settings(features))
    scaler._lazy_init_scale_growth_tracker(device)
    return scaler


def check_user_scaler(scaler, features: StepSpec, device: torch.device) -> None:
    """A user's own GradScaler can step an attached run only if it is the spec's: enabled, fresh,
    on the model's device, with the declared settings."""
    if not isinstance(scaler, torch.amp.GradScaler) or not scaler.is_enabled():
        raise ConfigError("grad_scaler must be an enabled torch.amp.GradScaler")
    if getattr(scaler, "_scale", None) is not None and not (
            float(scaler._scale) == features.scaler_init_scale
            and int(scaler._growth_tracker) == 0):
        raise ConfigError("the GradScaler has stepped already: a proof starts from a fresh one")
    if scaler._device != device.type:
        raise ConfigError(f"the GradScaler is for {scaler._device}, the model is on "
                          f"{device.type}")
    if scaler._growth_interval != features.scaler_growth_interval or any(
            float(getattr(scaler, "_" + k)) != v for k, v in scaler_settings(features).items()
            if k != "growth_interval"):
        raise ConfigError("the GradScaler's settings differ from the declared ones")


def set_scaler(optimizer: torch.optim.Optimizer, scaler) -> None:
    """Keep `scaler` with the optimizer it steps (None: no scaler)."""
    if scaler is not None and scaler._scale is None:
        scaler._lazy_init_scale_growth_tracker(
            next(p.device for g in optimizer.param_groups for p in g["params"]))
    setattr(optimizer, _ATTR, scaler)


def scaler_of(optimizer: torch.optim.Optimizer):
    """The GradScaler kept with this optimizer, or None."""
    return getattr(optimizer, _ATTR, None)


def scaler_tensors(scaler) -> dict[str, torch.Tensor]:
    if scaler is None:
        return {}
    return {SCALER_PREFIX + "scale": scaler._scale,
            SCALER_PREFIX + "growth_tracker": scaler._growth_tracker}


def load_scaler(scaler, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's scaler entries into the scaler, in place (checked by `scaler_problem`
    first)."""
    with torch.no_grad():
        scaler._scale.copy_(tensors[SCALER_PREFIX + "scale"].reshape(()))
        scaler._growth_tracker.copy_(tensors[SCALER_PREFIX + "growth_tracker"].reshape(()))
    scaler._per_optimizer_states.clear()


def scaler_problem(tensors: dict[str, torch.Tensor], features: StepSpec) -> str | None:
    """What is wrong with a checkpoint's scaler entries, or None: a finite positive scale and a
    growth tracker in [0, growth_interval)."""
    scale = tensors.get(SCALER_PREFIX + "scale")
    tracker = tensors.get(SCALER_PREFIX + "growth_tracker")
    if scale is None or tracker is None:
        return "the GradScaler's state (scaler.scale, scaler.growth_tracker) is missing"
    for name, t in ((SCALER_PREFIX + "scale", scale), (SCALER_PREFIX + "growth_tracker", tracker)):
        if t.dtype != SCALER_ENTRIES[name] or t.numel() != 1:
            return f"{name} must be one {SCALER_ENTRIES[name]}"
    s, g = float(scale.reshape(())), int(tracker.reshape(()))
    if not (0 < s < float("inf")):
        return f"the GradScaler's scale {s!r} is not a finite positive number"
    if not 0 <= g < features.scaler_growth_interval:
        return (f"the GradScaler's growth tracker {g} is outside [0, "
                f"{features.scaler_growth_interval})")
    return None
