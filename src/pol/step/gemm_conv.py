"""Float64 convolutions on a GPU as matrix products, for exact mode's steps (`ExactStep`).

cuDNN's float64 convolutions are slow: on an H200 they took 24 of a float64 ResNet-20 step's 28 ms
of device time (the weight gradient alone 15 ms), against ~2 ms for the whole float32 step's
convolutions. A convolution is a matrix product of the weights with the input's patches
(`F.unfold`), and cuBLAS runs float64 matrix products on the tensor cores: so during an exact step
on a CUDA device, every plain `nn.Conv2d` (groups 1, zero padding) computes that way, its
backward pass through autograd (the product's, and `F.fold` for the input's gradient).

The values differ from cuDNN's only in the order of float64 additions, ~1e-16 relative: the noise
exact mode absorbs between any two devices (a CPU's float64 convolution is itself an unfold and a
matrix product). What pol sets on a module it restores at the step's end (`uninstall`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv2d", "install", "uninstall", "eligible"]


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int]) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding, dilation)` (groups 1, [N, C, H, W] input) as a
    batched matrix product of the weights with the input's patches."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if (kh, kw) == (1, 1) and padding == (0, 0) and stride == (1, 1):
        cols = x.reshape(n, x.shape[1], h * w)
    else:
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    out = torch.matmul(weight.reshape(o, -1), cols).view(n, o, oh, ow)
    if bias is not None:
        out = out + bias.view(1, o, 1, 1)
    return out


def eligible(m: nn.Module) -> bool:
    """A torch `nn.Conv2d` this module computes as a matrix product: groups 1, zero padding given
    as numbers, and no `_conv_forward` of its own already set on the instance."""
    return (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and "_conv_forward" not in m.__dict__)


def _forward(m: nn.Conv2d):
    def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if x.dim() != 4 or x.dtype != torch.float64 or not x.is_cuda:
            return nn.Conv2d._conv_forward(m, x, weight, bias)
        return conv2d(x, weight, bias, tuple(m.stride), tuple(m.padding), tuple(m.dilation))
    return conv_forward


def install(model: nn.Module) -> list[nn.Conv2d]:
    """Make `model`'s eligible `nn.Conv2d` modules compute as matrix products (a float64 CUDA
    input; anything else as before) until `uninstall`; returns the modules changed."""
    mods = [m for m in model.modules() if eligible(m)]
    for m in mods:
        m._conv_forward = _forward(m)  # an instance attribute over the class's method
    return mods


def uninstall(mods: list[nn.Conv2d]) -> None:
    """The modules `install` changed back to their class's `_conv_forward`."""
    for m in mods:
        m.__dict__.pop("_conv_forward", None)
