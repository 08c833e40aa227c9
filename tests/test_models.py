"""Built-in architectures: build, forward shapes, parameter counts, registry errors."""

from __future__ import annotations

import pytest
import torch

from pol.models import ARCHITECTURES, build_model


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "arch, kwargs, shape, out",
    [
        ("mlp", {"in_features": 64, "num_classes": 10}, (5, 64), (5, 10)),
        ("mlp", {"in_features": 64, "num_classes": 3, "hidden": [32, 16], "dropout": 0.2},
         (5, 1, 8, 8), (5, 3)),
        ("mlp", {"in_features": 4, "num_classes": 3, "hidden": []}, (5, 4), (5, 3)),
        ("logreg", {"in_features": 4, "num_classes": 3}, (7, 4), (7, 3)),
        ("logreg", {"in_features": 64, "num_classes": 10}, (7, 8, 8), (7, 10)),
        ("lenet", {}, (4, 1, 8, 8), (4, 10)),
        ("lenet", {}, (4, 64), (4, 10)),
        ("lenet", {"dropout": 0.5}, (4, 8, 8), (4, 10)),
        ("lenet", {"in_channels": 3, "num_classes": 10, "image_size": 32}, (2, 3, 32, 32), (2, 10)),
        ("resnet20", {}, (2, 3, 32, 32), (2, 10)),
    ],
)
def test_forward_shapes(arch, kwargs, shape, out):
    model = build_model(arch, **kwargs)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(*shape)).shape == out


def test_resnet50_forward():
    model = build_model("resnet50")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert 23e6 < _nparams(model) < 24.5e6  # 23.7M for CIFAR-100 head


def test_resnet20_param_count():
    n = _nparams(build_model("resnet20"))
    assert 260_000 <= n <= 280_000, n
    # option-A shortcuts are parameter-free: the 19 convs are all 3x3 (no 1x1 projections)
    model = build_model("resnet20")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)


def test_resnet20_backward_reaches_every_parameter():
    model = build_model("resnet20", num_classes=100)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    loss = out.logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registry_names():
    assert set(ARCHITECTURES) >= {"mlp", "lenet", "logreg", "resnet20", "resnet50"}


def test_unknown_arch():
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg'.*known: .*resnet20"):
        build_model("vgg")


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("mlp", {"in_features": 64}),  # missing num_classes
        ("mlp", {"in_features": 64, "num_classes": 10, "width": 3}),  # unknown kwarg
        ("mlp", {"in_features": 64, "num_classes": 10, "hidden": "64"}),
        ("mlp", {"in_features": 64, "num_classes": 10, "hidden": [0]}),
        ("mlp", {"in_features": 64, "num_classes": 10, "dropout": 1.5}),
        ("mlp", {"in_features": True, "num_classes": 10}),
        ("lenet", {"image_size": 8.0}),
        ("resnet20", {"num_classes": -1}),
        ("resnet20", {"depth": 56}),
        ("logreg", {"in_features": "4", "num_classes": 3}),
    ],
)
def test_bad_kwargs(arch, kwargs):
    with pytest.raises(ValueError):
        build_model(arch, **kwargs)


def test_no_custom_init_in_constructors():
    # Constructors leave init to pol.init.apply_init: same global seed -> same (torch default) init.
    torch.manual_seed(3)
    a = build_model("lenet")
    torch.manual_seed(3)
    b = build_model("lenet")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_gpt_task_trains_and_verifies_exactly(tmp_path):
    from pol.prover.trainer import train_task
    from pol.verifier import verify
    r = train_task("synthetic-gpt", tmp_path / "p", k=8, batch_size=16,
                   dataset_params={"n_train": 64, "n_test": 16, "block_size": 16})
    assert r.total_steps == 4
    rep = verify(tmp_path / "p", all_segments=True)
    assert rep.valid and all(s.exact for s in rep.segments), rep.render()
