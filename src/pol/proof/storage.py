"""The torch dtype a checkpoint entry is stored in: `storage_dtype(name, tensor, precision)`.

A thin torch-side wrapper kept for its callers (`pol.proof.format.storage_dtype` resolves here):
the rule itself is a property of each optimizer's state entries and belongs to `pol.step`'s
optimizer table; the proof format only maps the resulting dtype name to its safetensors code
(`pol.proof.format.DTYPES`). This module imports nothing of `pol.proof`, so that `format` can hand
its old name over without an import cycle.
"""

from __future__ import annotations

import torch


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32": the names of `pol.proof.format.DTYPES`."""
    return str(dtype).removeprefix("torch.")


def _storage_dtype_name(name: str, dtype: str, precision: str) -> str:
    """fp16 storage rounds float weights and moments, never integer counters or Adam's step.
    Adam's moments go to bfloat16 instead: the second moment (~grad², often < 1e-8) underflows in
    fp16, and a zeroed moment changes the replayed update completely (measured: an Adam proof
    stored in fp16 failed its own verification; in bf16 it passes)."""
    if precision == "fp16" and dtype in ("float64", "float32", "float16", "bfloat16") \
            and not name.endswith(".step"):
        if name.endswith((".exp_avg", ".exp_avg_sq")):
            return "bfloat16"
        return "float16"
    return dtype


def storage_dtype(name: str, tensor: torch.Tensor, precision: str) -> torch.dtype:
    """The torch dtype a proof of `precision` stores the checkpoint entry `name` in."""
    stored = _storage_dtype_name(name, dtype_name(tensor.dtype), precision)
    return tensor.dtype if stored == dtype_name(tensor.dtype) else getattr(torch, stored)
