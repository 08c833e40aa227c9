"""Everything that can change a training step, and the only constructor of a step context.

| module | holds |
|---|---|
| `core` | `update()` — the one step shared by training, replay and the attacks (micro-batches, clipping, autocast); `StepContext`; losses |
| `exact` | exact mode: the float64 step rounded to float32 with the rounding log (`ExactStep`, `RoundingLog`), the layers it supports (`check_model`) |
| `graphed` | exact mode's step recorded on a GPU as two CUDA graphs around the eager optimizer step (`update()` uses it; same kernels, same proof) |
| `gemm_conv` | exact mode's float64 convolutions on a GPU as matrix products |
| `amp` | mixed precision: the spec's autocast context and the fp16 GradScaler kept with its optimizer |
| `context` | `build_context(spec, device)` (model rebuilt from the spec) and `step_context(spec, model, optimizer)` (the caller's own): every field of a step from the spec |
| `optimizers` | one table row per optimizer (factory, spec_of, state keys, storage dtypes; torch-free) |
| `randomness` | seed derivation, data order, dropout seeding, augmentation and init generators |
| `data` | input preparation (`PREPARE`) and augmentation (`AUGMENT`) |
| `init` | init strategies: drawing W_0 (`draw_init`) and the distributions the KS test uses |
| `state` | model + optimizer state <-> a checkpoint's flat tensor dict |
| `schedule` | the lr of every step from the spec's schedule |
| `runtime` | `with numerics(spec, device):` threads, deterministic algorithms, TF32 (restored on exit) |

The names below are loaded on first use, so that `pol.step.optimizers` (the table the proof format
reads) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # core
    "update": "core", "StepContext": "core", "make_loss": "core", "LOSSES": "core",
    "clip_gradients": "core", "micro_batches": "core", "step_inputs": "core",
    "backward": "core", "optimizer_step": "core",
    # amp
    "autocast": "amp", "make_grad_scaler": "amp", "scaler_of": "amp", "set_scaler": "amp",
    # context
    "build_context": "context", "build_model": "context", "step_context": "context", "spec_device": "context",
    "augment_rng_device": "context",
    # optimizers
    "OPTIMIZERS": "optimizers", "make_optimizer": "optimizers",
    "optimizer_spec_of": "optimizers", "optimizer_row": "optimizers", "state_keys": "optimizers",
    "storage_dtype_name": "optimizers", "MODEL_PREFIX": "optimizers",
    "OPTIM_PREFIX": "optimizers", "SCALER_PREFIX": "optimizers",
    "clear_fresh_state": "optimizers",
    # randomness
    "derive_seed": "randomness", "epoch_order": "randomness", "seed_step": "randomness",
    "augment_generator": "randomness", "init_generator": "randomness",
    # data
    "PREPARE": "data", "AUGMENT": "data",
    # init
    "INIT_STRATEGIES": "init", "InitDist": "init", "apply_init": "init",
    "expected_distributions": "init", "draw_init": "init", "seeded_init_mismatch": "init",
    # state
    "state_tensors": "state", "expected_state_shapes": "state", "load_state": "state",
    "storage_dtype": "state", "storage_dtypes": "state",
    # schedule
    "lrs_at": "schedule", "lr_table": "schedule",
    # runtime
    "numerics": "runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what a type checker and an IDE see (the same names, imported eagerly)
    from pol.step.context import (augment_rng_device, build_context, build_model, spec_device,
                                  step_context)
    from pol.step.amp import autocast, make_grad_scaler, scaler_of, set_scaler
    from pol.step.core import (LOSSES, StepContext, backward, clip_gradients, make_loss,
                               micro_batches, optimizer_step, step_inputs, update)
    from pol.step.data import AUGMENT, PREPARE
    from pol.step.init import (INIT_STRATEGIES, InitDist, apply_init, draw_init,
                               expected_distributions, seeded_init_mismatch)
    from pol.step.optimizers import (MODEL_PREFIX, OPTIM_PREFIX, OPTIMIZERS, SCALER_PREFIX,
                                     clear_fresh_state, make_optimizer, optimizer_row,
                                     optimizer_spec_of, state_keys, storage_dtype_name)
    from pol.step.randomness import (augment_generator, derive_seed, epoch_order,
                                     init_generator, seed_step)
    from pol.step.runtime import numerics
    from pol.step.schedule import lr_table, lrs_at
    from pol.step.state import (expected_state_shapes, load_state, state_tensors,
                                storage_dtype, storage_dtypes)
