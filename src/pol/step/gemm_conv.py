"""Float64 convolutions on a GPU as matrix products, for exact mode's steps (`ExactStep`).

cuDNN's float64 convolutions are slow: on an H200 they took 24 of a float64 ResNet-20 step's 28 ms
of device time (the weight gradient alone 15 ms), against ~2 ms for the whole float32 step's
convolutions. A convolution is a matrix product of the weights with the input's patches
(`F.unfold`), and cuBLAS runs float64 matrix products on the tensor cores: so during an exact step
on a CUDA device, every plain `nn.Conv2d` (groups 1, zero padding) computes that way: the patches
are one copy of a strided view of the input, the forward pass one matrix product, the backward
pass two and a `F.fold` (the input's gradient).

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
    """`F.conv2d(x, weight, bias, stride, padding, dilation)` (groups 1, [N, C, H, W] input) as one
    matrix product of the input's patches with the weights; its backward pass two more and a
    `F.fold`. (`F.unfold` is not used: on CUDA it launches one kernel per sample.)"""
    if COMPOSITE:
        return _composite(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))
    return _GemmConv.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))


# which formulation `conv2d` uses: False, a custom autograd Function (the patches kept for the
# backward pass, the input's gradient by `F.fold`); True, the same products as torch operations
# that autograd differentiates itself (no Python in the backward pass). Both give the same
# products; their costs differ on the host (`benchmarks/diag_gemm_conv.py`).
COMPOSITE = False


def _composite(x, weight, bias, stride, padding, dilation):
    n, o = x.shape[0], weight.shape[0]
    cols, oh, ow = _patches(x, tuple(weight.shape[2:]), stride, padding, dilation)
    out = torch.mm(cols, weight.reshape(o, -1).t()) if bias is None else \
        torch.addmm(bias, cols, weight.reshape(o, -1).t())
    return out.view(n, oh, ow, o).permute(0, 3, 1, 2).contiguous()


def _patches(x: torch.Tensor, k: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """(the input's patches as a [N·OH·OW, C·KH·KW] matrix, OH, OW): rows in `F.unfold`'s
    position order, columns in its (channel, kernel row, kernel column) order; one copy of a
    strided view."""
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    v = xp.unfold(2, dilation[0] * (k[0] - 1) + 1, stride[0])
    v = v.unfold(3, dilation[1] * (k[1] - 1) + 1, stride[1])  # [N, C, OH, OW, kh', kw']
    v = v[..., ::dilation[0], ::dilation[1]]
    n, c, oh, ow = v.shape[:4]
    return v.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k[0] * k[1]), oh, ow


class _GemmConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        n, _, h, w = x.shape
        o, _, kh, kw = weight.shape
        cols, oh, ow = _patches(x, (kh, kw), stride, padding, dilation)
        out = torch.mm(cols, weight.reshape(o, -1).t())  # [N·OH·OW, O]
        if bias is not None:
            out += bias
        ctx.save_for_backward(cols, weight)
        ctx.geometry = (n, h, w, oh, ow, stride, padding, dilation)
        return out.view(n, oh, ow, o).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad):
        cols, weight = ctx.saved_tensors
        n, h, w, oh, ow, stride, padding, dilation = ctx.geometry
        o, _, kh, kw = weight.shape
        g = grad.permute(0, 2, 3, 1).reshape(n * oh * ow, o)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gcols = torch.mm(g, weight.reshape(o, -1)).view(n, oh * ow, -1).transpose(1, 2)
            gx = F.fold(gcols, (h, w), (kh, kw), dilation=dilation, padding=padding,
                        stride=stride)
        if ctx.needs_input_grad[1]:
            gw = torch.mm(g.t(), cols).view(weight.shape)
        if ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None, None, None


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
