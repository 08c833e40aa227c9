"""The replay state (model + optimizer, and an fp16 run's GradScaler) <-> the flat tensor dict a
checkpoint stores.

Names and shapes are checked exactly against the optimizer's table row (`pol.step.optimizers`) and
the settings of its param groups (RMSprop's momentum buffer only with momentum, Adam's
max_exp_avg_sq only with amsgrad): anything a proof holds beyond them is rejected. The GradScaler
kept with the optimizer (`pol.step.amp.scaler_of`) adds `scaler.scale` and `scaler.growth_tracker`
to every checkpoint, required like the model's entries.
"""

from __future__ import annotations

import torch
from torch import nn

from pol.errors import ProofFormatError
from pol.step.amp import SCALER_ENTRIES, load_scaler, scaler_of, scaler_problem, scaler_tensors
from pol.step.optimizers import MODEL_PREFIX, OPTIM_PREFIX, optimizer_row, storage_dtype_name

__all__ = ["state_tensors", "expected_state_shapes", "load_state", "storage_dtype", "storage_dtypes"]


def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The full replay state as a flat name -> tensor dict (no copies made here)."""
    out = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    i = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, val in optimizer.state.get(p, {}).items():
                if isinstance(val, torch.Tensor):
                    out[f"{OPTIM_PREFIX}{i}.{key}"] = val
            i += 1
    out.update(scaler_tensors(scaler_of(optimizer)))
    return out


def _params(optimizer: torch.optim.Optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def expected_state_shapes(model: nn.Module, optimizer: torch.optim.Optimizer,
                          opt_name: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple]]:
    """(required entries: the model's and a GradScaler's, optional optimizer entries) with their
    shapes."""
    model_shapes = {MODEL_PREFIX + k: tuple(v.shape) for k, v in model.state_dict().items()}
    if scaler_of(optimizer) is not None:
        model_shapes.update({name: () for name in SCALER_ENTRIES})
    opt_shapes: dict[str, tuple] = {}
    for i, p in enumerate(_params(optimizer)):
        for key, entry in _active_state(optimizer, opt_name).items():
            opt_shapes[f"{OPTIM_PREFIX}{i}.{key}"] = () if entry.shape == "scalar" else tuple(p.shape)
    return model_shapes, opt_shapes


def _active_state(optimizer: torch.optim.Optimizer, opt_name: str):
    """The optimizer's state entries that its param groups' settings make (all groups share
    them: `optimizer_spec_of` refuses groups that differ in anything but lr and weight decay)."""
    row = optimizer_row(opt_name)
    return {k: row.state[k] for k in row.keys_for(optimizer.param_groups[0])}


def storage_dtypes(model: nn.Module, optimizer: torch.optim.Optimizer, opt_name: str,
                   precision: str) -> dict[str, torch.dtype]:
    """The dtype every checkpoint entry of this model and optimizer is stored in by a proof of
    `precision` (what a verifier checks each stored tensor against). Optimizer entries: float32
    before rounding, as the verifier has always assumed."""
    out = {MODEL_PREFIX + k: storage_dtype(MODEL_PREFIX + k, v, precision)
           for k, v in model.state_dict().items()}
    if scaler_of(optimizer) is not None:
        out.update(SCALER_ENTRIES)
    state = _active_state(optimizer, opt_name)
    for i in range(len(_params(optimizer))):
        for key, entry in state.items():
            name = f"{OPTIM_PREFIX}{i}.{key}"
            out[name] = (torch.float32 if entry.shape == "scalar"
                         else getattr(torch, storage_dtype_name(name, "float32", precision)))
    return out


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, opt_name: str,
               tensors: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's tensors after checking names and shapes exactly; optimizer state must be
    either complete (every parameter, every key) or absent (before the first step)."""
    model_shapes, opt_shapes = expected_state_shapes(model, optimizer, opt_name)
    missing = [k for k in model_shapes if k not in tensors]
    extra = [k for k in tensors if k not in model_shapes and k not in opt_shapes]
    if missing or extra:
        raise ProofFormatError(f"checkpoint does not fit the model: missing {missing[:3]}, "
                               f"unexpected {extra[:3]}")
    for k, shape in {**model_shapes, **opt_shapes}.items():
        if k in tensors and tuple(tensors[k].shape) != shape:
            raise ProofFormatError(f"checkpoint entry {k} has shape {tuple(tensors[k].shape)}, "
                                   f"model needs {shape}")
    present = [k for k in opt_shapes if k in tensors]
    # SGD without momentum keeps no state at all.
    if present and len(present) != len(opt_shapes):
        raise ProofFormatError("checkpoint has partial optimizer state")
    sd = model.state_dict()
    row = optimizer_row(opt_name) if present else None
    opt_keys = [] if row is None else [
        (i, key) for i, _ in enumerate(_params(optimizer))
        for key in row.keys_for(optimizer.param_groups[0])]
    bad = first_nonfinite(tensors, [MODEL_PREFIX + k for k in sd]
                          + [f"{OPTIM_PREFIX}{i}.{key}" for i, key in opt_keys])
    if bad is not None:
        if bad.startswith(MODEL_PREFIX):
            raise ProofFormatError(f"checkpoint entry {bad} has NaN/Inf values")
        raise ProofFormatError(f"optimizer state {bad.removeprefix(OPTIM_PREFIX)} has NaN/Inf "
                               "values")
    with torch.no_grad():
        for k, v in sd.items():
            v.copy_(tensors[MODEL_PREFIX + k].to(v.dtype))
    scaler = scaler_of(optimizer)
    if scaler is not None:
        why = scaler_problem(tensors, _features_of(scaler))
        if why:
            raise ProofFormatError(f"checkpoint: {why}")
        load_scaler(scaler, tensors)
    optimizer.state.clear()
    if not present:
        return
    for i, p in enumerate(_params(optimizer)):
        st = {}
        for key in row.keys_for(optimizer.param_groups[0]):
            src = tensors[f"{OPTIM_PREFIX}{i}.{key}"]
            if key in row.cpu_fp32:
                st[key] = src.to(torch.float32).clone()  # Adam keeps step on CPU
            else:
                st[key] = src.to(device=p.device, dtype=p.dtype).clone()
        optimizer.state[p] = st


def first_nonfinite(tensors: dict[str, torch.Tensor], names: list[str]) -> str | None:
    """The first of `names` whose tensor holds a NaN or an infinity, or None. One fused norm per
    dtype and device over all of them (a NaN or an infinity makes a tensor's norm NaN or
    infinite: about ten times faster on a CPU than an elementwise test per tensor, and one read
    per device rather than a wait per tensor on a GPU), the elementwise test only where a norm
    is not finite (a finite tensor's norm can overflow its dtype)."""
    groups: dict[tuple[torch.dtype, torch.device], list[str]] = {}
    for n in names:
        if tensors[n].is_floating_point():
            groups.setdefault((tensors[n].dtype, tensors[n].device), []).append(n)
    suspects = set()
    for keys in groups.values():
        norms = torch._foreach_norm([tensors[k] for k in keys])
        finite = torch.isfinite(torch.stack(norms)).tolist()
        suspects.update(k for k, ok in zip(keys, finite) if not ok)
    return next((n for n in names if n in suspects and not torch.isfinite(tensors[n]).all()),
                None)


def storage_dtype(name: str, tensor: torch.Tensor, precision: str) -> torch.dtype:
    """The dtype a proof of `precision` stores checkpoint entry `name` (this tensor) in."""
    return getattr(torch, storage_dtype_name(name, str(tensor.dtype).removeprefix("torch."),
                                             precision))


def _features_of(scaler):
    """The scaler's growth interval as a StepSpec-like object (what `scaler_problem` reads)."""
    from types import SimpleNamespace
    return SimpleNamespace(scaler_growth_interval=scaler._growth_interval)
