"""The only constructors of a step context: everything a step depends on comes from the spec.

`build_context(spec, device)` rebuilds the model the spec names, draws W_0 from the seed and makes
its optimizer (the trainer, the verifier, its workers and the attacks); `step_context(spec, model,
optimizer, device)` wraps a caller's own model and optimizer (`fit`, `attach`). Both take every
other field (loss, preparation, augmentation and where it draws, seed, clipping and accumulation)
from the spec through `_step_fields`, so the context a prover trains with and the one a verifier
replays with cannot drift apart.

`uncompiled(model)` is the module a `torch.compile`d model trains, which the prover records and
the verifier replays eagerly: only for the backends whose step is the eager step, bitwise
(`REPLAYABLE_BACKENDS`); any other compilation is refused (ConfigError saying why).
"""

from __future__ import annotations

from typing import Any, Iterable

import sys

import torch
from torch import nn

from pol.errors import ConfigError, ProofFormatError
from pol.models import build_model as build_builtin_model
from pol.registry import build_factory_model
from pol.spec import ModelSpec, TrainingSpec
from pol.step.amp import make_grad_scaler, scaler_of, set_scaler
from pol.step.core import StepContext, make_loss
from pol.step.data import AUGMENT, PREPARE
from pol.step.exact import RoundingLog, check_model
from pol.step.init import draw_init
from pol.step.optimizers import make_optimizer

__all__ = ["build_context", "build_model", "step_context", "spec_device", "augment_rng_device",
           "uncompiled", "REPLAYABLE_BACKENDS"]

# torch.compile backends whose training step is the eager step, bitwise: they run the captured
# graph's own aten kernels in eager's order (measured on a CPU, every step of an MLP, a LeNet, a
# BatchNorm ResNet-20, a tied-embedding model and a GPT, dropout included). Inductor (the
# default) and the decomposing backends (aot_eager_decomp_partition) generate other kernels,
# reduction orders and dropout masks: no step of those models replayed bitwise, and inductor's
# embedding gradient (an atomic scatter-add on a CPU) differs between two runs of one step.
REPLAYABLE_BACKENDS = ("eager", "aot_eager")


def _backend(callback: Any) -> tuple[str, bool]:
    """(name, whether it replays) of the backend a torch.compile'd callable runs, from torch's
    wrapper chain; what cannot be identified does not replay."""
    if callback is None:
        return "unidentified", False
    try:
        w = callback
        for _ in range(16):
            inner = getattr(w, "_torchdynamo_orig_backend", None)
            if inner is None:
                break
            w = inner
        name = str(getattr(w, "compiler_name", None) or getattr(w, "__name__", None)
                   or type(w).__name__)
        if name not in REPLAYABLE_BACKENDS or getattr(w, "kwargs", None):
            return name + (" with mode/options" if getattr(w, "kwargs", None) else ""), False
        return name, getattr(w, "compiler_fn", w) is torch._dynamo.lookup_backend(name)
    except Exception:  # noqa: BLE001 - torch's internals moved: refuse, naming what is known
        return "unidentified", False


def _refuse_backend(callback: Any, where: str) -> None:
    name, replays = _backend(callback)
    if replays:
        return
    raise ConfigError(
        f"{where} is compiled with torch.compile backend {name!r}, whose training step is not "
        "the eager step pol replays, bitwise: inductor (the default) and the decomposing "
        "backends generate their own kernels, reduction orders and dropout masks (on a CPU no "
        "step of a compiled MLP, LeNet or GPT replayed bitwise, and inductor's embedding "
        "gradient differs even between two runs of one step), so the proof would fail "
        "verification. Record with the uncompiled model, or compile with "
        f"backend={REPLAYABLE_BACKENDS[1]!r} (or {REPLAYABLE_BACKENDS[0]!r}), whose steps "
        "replay bitwise")


def _compiled_fn_callback(fn: Any) -> Any:
    """The backend callback a torch.compile'd function closes over (None if not found)."""
    code = getattr(fn, "__code__", None)
    cells = dict(zip(code.co_freevars, fn.__closure__ or ())) if code is not None else {}
    cell = cells.get("callback")
    return cell.cell_contents if cell is not None else None


def uncompiled(model: Any) -> Any:
    """The module a `torch.compile`d model trains: `torch.compile(model, backend=...)` is an
    OptimizedModule over the same parameters whose state_dict names them `_orig_mod.*`; the
    prover records the module underneath, and the verifier replays it eagerly, bitwise, for the
    backends of `REPLAYABLE_BACKENDS` (in-place `module.compile(...)` and a compiled `forward`
    are checked alike). ConfigError for any other backend, mode or options, and for a compiled
    submodule (its parameters are named `<name>._orig_mod.*`, which the model_spec does not
    build). Anything that is not an nn.Module is returned as it is."""
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    if dynamo is None or not isinstance(model, nn.Module):  # torch.compile never ran here
        return model
    wrapper = dynamo.OptimizedModule
    while isinstance(model, wrapper):
        _refuse_backend(getattr(getattr(model, "dynamo_ctx", None), "callback", None),
                        "the model")
        model = model._orig_mod
    for name, m in model.named_modules():
        where = f"submodule {name!r}" if name else "the model"
        if isinstance(m, wrapper):
            raise ConfigError(f"{where} is torch.compile'd on its own: its parameters are named "
                              f"{name}._orig_mod.*, which the model_spec does not build. Compile "
                              f"the whole model (torch.compile(model, backend=\"aot_eager\")), "
                              f"or the submodule in place ({name}.compile(backend=\"aot_eager\"))")
        for fn in (m.__dict__.get("_compiled_call_impl"), m.__dict__.get("forward")):
            if fn is not None and hasattr(fn, "_torchdynamo_orig_callable"):
                _refuse_backend(_compiled_fn_callback(fn), where)
    return model


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
                micro_batch=spec.batch_size // spec.step.accumulation,
                exact=RoundingLog(spec.step.exact_window, spec.step.exact_noise,
                                  spec.step.exact_zone, spec.step.exact_grid)
                if spec.step.exact else None)


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
    if spec.step.exact:
        check_model(model)
    return StepContext(model=model, optimizer=optimizer, device=device, **fields)


def build_context(spec: TrainingSpec, device: torch.device | None = None,
                  trusted_modules: Iterable[str] = ()) -> StepContext:
    """Model (initialized from the run's seed), optimizer and step pieces for a spec, on `device`
    (default: the spec's). Shared by the trainer and the verifier, so both build exactly the same
    objects."""
    device = spec_device(spec) if device is None else device
    model = build_model(spec.model, trusted_modules)
    if spec.step.exact:
        check_model(model)
    draw_init(model, spec.model, spec.seed)
    model.to(device)
    fields = _step_fields(spec)
    optimizer = make_optimizer(spec.optimizer, model.parameters())
    set_scaler(optimizer, make_grad_scaler(spec.step, device))
    return StepContext(model=model, optimizer=optimizer, device=device, **fields)
