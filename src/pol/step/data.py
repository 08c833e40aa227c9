"""Input preparation and augmentation: how a raw batch of committed bytes becomes model input.

* `PREPARE` turns a raw batch into model input with no randomness at all, so the verifier can
  recompute it from the committed bytes.
* `AUGMENT` draws every random choice from an explicit `torch.Generator` whose seed is recorded
  (`pol.step.randomness.augment_generator`), so a verifier replaying a step gets bit-identical
  augmented inputs.

(Moved from `pol.datasets`, which still re-exports both tables; which preparation fits which
dataset stays there, as `DEFAULT_PREPARE`.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pol.datasets import CIFAR_MEAN, CIFAR_STD

__all__ = ["PREPARE", "AUGMENT"]


# --------------------------------------------------------------------------------------------------
# Deterministic preparation (no randomness)
# --------------------------------------------------------------------------------------------------


def _prepare_float(x: torch.Tensor) -> torch.Tensor:
    return x.float()


def _prepare_digits(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 16.0


def _prepare_image_hwc_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1], normalized with the CIFAR-10 channel statistics."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"image-hwc-uint8 expects a uint8 [N, H, W, 3] batch, got "
                         f"{x.dtype} {tuple(x.shape)}")
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    out = x.permute(0, 3, 1, 2).float() / 255.0
    return ((out - mean) / std).contiguous()


PREPARE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "float": _prepare_float,
    "digits": _prepare_digits,
    "image-hwc-uint8": _prepare_image_hwc_uint8,
    "tokens": lambda x: x.long(),
}


# --------------------------------------------------------------------------------------------------
# Augmentation (all randomness from the given generator)
# --------------------------------------------------------------------------------------------------


def _check_nchw(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"augmentation {what!r} expects a prepared [N, C, H, W] batch, got shape "
                         f"{tuple(x.shape)}")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; from the host to a GPU through pinned memory, without waiting for the
    GPU's queued work (a plain copy from pageable memory waits for it)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _coin_flips(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # Drawn on the generator's device, then moved: the draw depends only on the generator.
    return to_device(torch.randint(0, 2, (n,), generator=generator, device=generator.device),
                  device) == 1


def _augment_none(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


def _augment_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each sample with probability 1/2."""
    _check_nchw(x, "flip")
    flip = _coin_flips(x.shape[0], generator, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _augment_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation: zero-pad by 4, random crop back to HxW, random h-flip.

    Offsets are drawn first ([N, 2], row then column offset in [0, 2*pad]), then the flips ([N]).
    The crop is one advanced-indexing gather (pure data movement, so it is exact on any device).
    """
    _check_nchw(x, "crop-flip")
    n, c, h, w = x.shape
    offs = to_device(torch.randint(0, 2 * pad + 1, (n, 2), generator=generator,
                                device=generator.device), x.device)
    flip = _coin_flips(n, generator, x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offs[:, 0:1] + torch.arange(h, device=x.device)  # [n, h]
    cols = offs[:, 1:2] + torch.arange(w, device=x.device)  # [n, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


AUGMENT: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "none": _augment_none,
    "crop-flip": _augment_crop_flip,
    "flip": _augment_flip,
}
