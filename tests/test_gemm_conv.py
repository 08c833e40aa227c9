"""Exact mode's float64 convolution as a matrix product (`pol.step.gemm_conv`): the values and
gradients of `F.conv2d` to float64 rounding, on the module shapes pol's models use; what it sets on
a model is restored; a CUDA exact step computes its convolutions that way (GPU only)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pol.step import gemm_conv

CASES = [  # (in, out, kernel, stride, padding, dilation, bias, H)
    (3, 16, 3, 1, 1, 1, False, 8),
    (16, 32, 3, 2, 1, 1, False, 9),
    (4, 6, 1, 1, 0, 1, True, 5),
    (4, 6, 1, 2, 0, 1, False, 6),
    (5, 7, (3, 2), (2, 1), (1, 0), (2, 1), True, 11),
]


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_match_conv2d(case):
    c, o, k, s, p, d, bias, h = case
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c, o, k, stride=s, padding=p, dilation=d, bias=bias).double()
    x = torch.randn(3, c, h, h + 1, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    got = gemm_conv.conv2d(x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding),
                           tuple(conv.dilation))
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(ref, [x, conv.weight] + ([conv.bias] if bias else []), up)
    have = torch.autograd.grad(got, [x, conv.weight] + ([conv.bias] if bias else []), up)
    for a, b in zip(have, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_install_and_uninstall_restore_the_modules():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, groups=2),
                          nn.Conv2d(4, 4, 3, padding="same"), nn.ReLU())
    mods = gemm_conv.install(model)
    assert mods == [model[0]]  # grouped and "same"-padded ones keep cuDNN's
    assert "_conv_forward" in model[0].__dict__
    x = torch.randn(2, 3, 6, 6)  # float32 on the CPU: the module's own path, same bits
    want = nn.Conv2d._conv_forward(model[0], x, model[0].weight, model[0].bias)
    assert torch.equal(model[0](x), want)
    gemm_conv.uninstall(mods)
    assert all("_conv_forward" not in m.__dict__ for m in model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_exact_step_uses_the_matrix_product_and_restores():
    from pol.step.exact import ExactStep, RoundingLog
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 36, 2)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ex = ExactStep(RoundingLog(2.0 ** -12), model, opt, 0)
    assert ex.convs == [model[0]]
    x = torch.randn(4, 3, 6, 6, device="cuda", dtype=torch.float64)
    want = F.conv2d(x, model[0].weight, model[0].bias, padding=1)
    torch.testing.assert_close(model[0](x), want, rtol=1e-12, atol=1e-12)
    model(x).sum().backward()
    ex.round_grads()
    opt.step()
    ex.finish(None)
    assert "_conv_forward" not in model[0].__dict__
    assert model[0].weight.dtype == torch.float32


@pytest.mark.parametrize("case", CASES)
def test_composite_formulation_matches_too(case, monkeypatch):
    monkeypatch.setattr(gemm_conv, "COMPOSITE", True)
    test_values_and_gradients_match_conv2d(case)
