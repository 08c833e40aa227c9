"""Initialization: apply_init and expected_distributions come from one table and must agree."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from pol.step.init import INIT_STRATEGIES, InitDist, apply_init, expected_distributions
from pol.models import build_model

MODELS = {
    "mlp": {"in_features": 64, "num_classes": 10, "hidden": [128, 64]},
    "lenet": {},
    "resnet20": {},
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ks_p(values: torch.Tensor, dist: InitDist) -> float:
    return stats.kstest(values.detach().flatten().double().numpy(), dist.cdf().cdf).pvalue


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("strategy", INIT_STRATEGIES)
def test_deterministic_per_seed(strategy):
    model = build_model("lenet")
    apply_init(model, strategy, _gen(7))
    first = _state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # scramble, then re-init: must reproduce bit for bit
    apply_init(model, strategy, _gen(7))
    for k, v in model.state_dict().items():
        assert torch.equal(v, first[k]), k
    apply_init(model, strategy, _gen(8))
    random_params = [n for n, d in expected_distributions(model, strategy).items()
                     if d.kind != "const"]
    assert random_params
    sd = model.state_dict()
    assert all(not torch.equal(sd[n], first[n]) for n in random_params)


def test_global_rng_untouched():
    model = build_model("mlp", in_features=8, num_classes=2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    apply_init(model, "kaiming-normal", _gen(0))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_torch_default_matches_pytorch_constructor():
    # With the same seed, torch-default reproduces PyTorch's own Linear/Conv init bit for bit.
    torch.manual_seed(5)
    ref = nn.Sequential(nn.Linear(20, 7), nn.Conv2d(3, 4, 3))
    model = nn.Sequential(nn.Linear(20, 7), nn.Conv2d(3, 4, 3))
    apply_init(model, "torch-default", _gen(5))
    for (n, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("strategy, ref", [
    ("kaiming-uniform", lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)),
    ("kaiming-normal", lambda w, g: nn.init.kaiming_normal_(w, mode="fan_out",
                                                            nonlinearity="relu", generator=g)),
    ("xavier-uniform", lambda w, g: nn.init.xavier_uniform_(w, generator=g)),
    ("xavier-normal", lambda w, g: nn.init.xavier_normal_(w, generator=g)),
])
def test_matches_torch_nn_init(strategy, ref):
    conv = nn.Conv2d(3, 16, 3, bias=False)
    apply_init(conv, strategy, _gen(1))
    w = torch.empty_like(conv.weight)
    ref(w, _gen(1))
    assert torch.equal(w, conv.weight)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("strategy", INIT_STRATEGIES)
def test_ks_accepts_fresh_and_rejects_shifted(arch, strategy):
    model = build_model(arch, **MODELS[arch])
    apply_init(model, strategy, _gen(2024))
    dists = expected_distributions(model, strategy)
    params = dict(model.named_parameters())
    assert list(dists) == list(params)  # every parameter, same names, same order
    tested = 0
    for name, dist in dists.items():
        p = params[name].detach()
        if dist.kind == "const":
            assert torch.all(p == dist.a), name
            continue
        if p.numel() < 200:
            continue
        tested += 1
        assert _ks_p(p, dist) > 1e-4, (name, dist)
        # A "trained-looking" tensor: shifted by half the scale of the distribution.
        scale = dist.b  # the bound (uniform) or the std (normal)
        assert _ks_p(p + 0.5 * scale, dist) < 1e-6, name
    assert tested >= 2


@pytest.mark.parametrize("strategy", INIT_STRATEGIES)
def test_rules_per_strategy(strategy):
    model = build_model("resnet20")
    dists = expected_distributions(model, strategy)
    conv = dists["conv1.weight"]  # 16x3x3x3: fan_in 27, fan_out 144
    fc_b = dists["fc.bias"]
    expected = {
        "torch-default": InitDist("uniform", -1 / math.sqrt(27), 1 / math.sqrt(27)),
        "kaiming-uniform": InitDist("uniform", -math.sqrt(6 / 27), math.sqrt(6 / 27)),
        "kaiming-normal": InitDist("normal", 0.0, math.sqrt(2 / 144)),
        "xavier-uniform": InitDist("uniform", -math.sqrt(6 / 171), math.sqrt(6 / 171)),
        "xavier-normal": InitDist("normal", 0.0, math.sqrt(2 / 171)),
        "gpt2-normal": InitDist("normal", 0.0, 0.02),
    }[strategy]
    assert conv.kind == expected.kind
    assert conv.a == pytest.approx(expected.a) and conv.b == pytest.approx(expected.b)
    if strategy == "torch-default":
        assert fc_b == InitDist("uniform", -1 / 8, 1 / 8)  # fan_in 64
    else:
        assert fc_b == InitDist("const", 0.0)
    assert dists["bn1.weight"] == InitDist("const", 1.0)
    assert dists["bn1.bias"] == InitDist("const", 0.0)


def test_norm_layers_exact_and_running_stats_reset():
    model = nn.Sequential(nn.Linear(10, 300), nn.LayerNorm(300), nn.BatchNorm1d(300))
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[2].bias.fill_(-2.0)
        model[2].running_mean.fill_(5.0)
    apply_init(model, "xavier-uniform", _gen(0))
    assert torch.equal(model[1].weight, torch.ones(300))
    assert torch.equal(model[1].bias, torch.zeros(300))
    assert torch.equal(model[2].weight, torch.ones(300))
    assert torch.equal(model[2].bias, torch.zeros(300))
    assert torch.equal(model[2].running_mean, torch.zeros(300))
    assert torch.equal(model[0].bias, torch.zeros(300))


def test_unknown_strategy():
    model = build_model("logreg", in_features=4, num_classes=3)
    with pytest.raises(ValueError, match="unknown init strategy"):
        apply_init(model, "orthogonal", _gen(0))
    with pytest.raises(ValueError, match="unknown init strategy"):
        expected_distributions(model, "orthogonal")


def test_uncovered_module_rejected_before_any_change():
    model = nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 4))
    before = _state(model)
    with pytest.raises(ValueError, match="GRU"):
        apply_init(model, "torch-default", _gen(0))
    with pytest.raises(ValueError, match="GRU"):
        expected_distributions(model, "torch-default")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # nothing half-initialized


def test_parameter_free_modules_and_missing_bias_ok():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Dropout(0.1),
                          nn.LayerNorm(4, elementwise_affine=False), nn.MaxPool1d(1))
    assert list(expected_distributions(model, "kaiming-uniform")) == ["1.weight"]
    apply_init(model, "kaiming-uniform", _gen(0))


def test_shared_parameter_named_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    dists = expected_distributions(model, "torch-default")
    assert list(dists) == [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]


def test_initdist_validation_and_cdf():
    assert InitDist("const", 1.0).cdf() is None
    u = InitDist("uniform", -1.0, 3.0).cdf()
    assert u.cdf(1.0) == pytest.approx(0.5)
    n = InitDist("normal", 2.0, 0.5).cdf()
    assert n.cdf(2.0) == pytest.approx(0.5) and n.std() == pytest.approx(0.5)
    for bad in [("uniform", 1.0, 1.0), ("normal", 0.0, 0.0), ("beta", 0.0, 1.0),
                ("uniform", 0.0, float("nan"))]:
        with pytest.raises(ValueError):
            InitDist(*bad)


def test_dtype_preserved_and_deterministic_float64():
    a = build_model("mlp", in_features=16, num_classes=4).double()
    b = build_model("mlp", in_features=16, num_classes=4).double()
    apply_init(a, "kaiming-normal", _gen(9))
    apply_init(b, "kaiming-normal", _gen(9))
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert pa.dtype == torch.float64 and torch.equal(pa, pb), n


def test_requires_generator():
    with pytest.raises(TypeError):
        apply_init(build_model("lenet"), "torch-default", 0)  # type: ignore[arg-type]


def test_embedding_rules():
    model = nn.Sequential(nn.Embedding(10, 4))
    assert expected_distributions(model, "torch-default")["0.weight"] == InitDist("normal", 0.0, 1.0)
    assert expected_distributions(model, "gpt2-normal")["0.weight"] == InitDist("normal", 0.0, 0.02)
