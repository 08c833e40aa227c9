"""`pol.attach` around real user loops (clipping, a torch lr scheduler, accumulation, label
smoothing): each proof verifies VALID with every segment bitwise exact, and a copy with one
checkpoint perturbed (digests recomputed) is rejected. Unsupported features are refused at attach
time, naming what; the spec's `step` field is strict and absent when default."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pol
from pol.errors import ConfigError, ProofFormatError
from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.spec import ModelSpec, StepSpec, TrainingSpec
from pol.verifier import verify

from conftest import (USER_MODEL_KWARGS, load_manifest, make_user_data, save_npz,
                      tampered_copy, train_attached, user_model)

EPOCHS, K = 2, 3


def _attach(tmp_path, opt_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
            **kw):
    model = user_model()
    opt = opt_fn(model)
    x, y = make_user_data()
    args = dict(model=model, optimizer=opt, data=(x, y), out=tmp_path / "proof",
                model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                epochs=EPOCHS, k=K, seed=3, init="from-seed")
    args.update(kw)
    return model, pol.attach(**args)


def _check_proof(tmp_path, opt) -> None:
    """VALID and bitwise exact on every segment; a perturbed checkpoint (rehashed) is rejected."""
    assert opt.root_digest is not None  # finished at the last step
    x, y = make_user_data()
    npz = save_npz(tmp_path / "data.npz", x, y)
    r = verify(opt.proof, data=str(npz), all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)
    assert r.root_digest == opt.root_digest
    bad = tampered_copy(opt.proof, tmp_path / "tampered", K * 2)
    r = verify(bad, data=str(npz), all_segments=True)
    assert not r.valid


def test_sgd_with_clip_grad_norm(tmp_path):
    model, (opt, loader) = _attach(tmp_path, clip_grad_norm=0.25)
    assert isinstance(opt, torch.optim.Optimizer)
    train_attached(model, opt, loader, EPOCHS)
    spec = load_manifest(opt.proof)["spec"]
    assert spec["step"] == {"clip_grad_norm": 0.25} and spec["data"]["order"] == "seed"
    _check_proof(tmp_path, opt)
    # the clipping is what makes the replay exact: the same proof declared without it fails
    plain = tmp_path / "unclipped"
    shutil.copytree(opt.proof, plain)
    body = json.loads((plain / fmt.MANIFEST).read_text())
    del body["spec"]["step"]
    (plain / fmt.MANIFEST).write_text(json.dumps(body))
    rehash_manifest(plain)
    r = verify(plain, data=str(tmp_path / "data.npz"), all_segments=True)
    assert not r.valid


def test_adamw_with_warmup_and_cosine_scheduler(tmp_path):
    model, (opt, loader) = _attach(
        tmp_path, opt_fn=lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.05))
    total = EPOCHS * len(loader)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - 3)], milestones=[3])
    train_attached(model, opt, loader, EPOCHS, after_step=sched.step)
    m = load_manifest(opt.proof)
    assert m["spec"]["schedule"]["name"] == "recorded" and m["spec"]["optimizer"]["lr"] == 3e-3
    lrs = np.load(opt.proof / fmt.LRS)[:, 0]
    assert lrs[0] == pytest.approx(3e-4) and lrs[3] == pytest.approx(3e-3) and lrs[-1] < 1e-3
    _check_proof(tmp_path, opt)


def test_gradient_accumulation_x4(tmp_path):
    model, (opt, loader) = _attach(tmp_path, batch_size=8, accumulation=4, clip_grad_norm=1.0)
    assert len(loader) == 4 * (200 // 32)  # drop_last with accumulation: every step has 4
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(loader):
            assert len(x) == 8
            loss = F.cross_entropy(model(x), y) / 4
            loss.backward()
            opt.record_loss(loss)
            if (i + 1) % 4 == 0:
                opt.step()
                opt.zero_grad()
    m = load_manifest(opt.proof)
    assert m["spec"]["batch_size"] == 32 and m["spec"]["drop_last"]
    assert m["spec"]["step"] == {"accumulation": 4, "clip_grad_norm": 1.0}
    assert np.load(opt.proof / fmt.INDICES).shape == (EPOCHS * 6, 32)
    _check_proof(tmp_path, opt)


def test_label_smoothing_with_clip_by_value(tmp_path):
    model, (opt, loader) = _attach(tmp_path, label_smoothing=0.1, clip_grad_value=0.05)
    train_attached(model, opt, loader, EPOCHS,
                   loss_fn=functools.partial(F.cross_entropy, label_smoothing=0.1))
    assert load_manifest(opt.proof)["spec"]["step"] == {"clip_grad_value": 0.05,
                                                        "label_smoothing": 0.1}
    _check_proof(tmp_path, opt)


# ---------------------------------------------------------------- refused at attach time

@pytest.mark.parametrize("opt_fn,named", [
    (lambda m: torch.optim.Adamax(m.parameters(), lr=0.01), "Adamax"),
    (lambda m: torch.optim.Adam(m.parameters(), lr=0.01, maximize=True), "maximize"),
    (lambda m: torch.optim.Adam(m.parameters(), lr=0.01, foreach=True), "foreach"),
    (lambda m: torch.optim.SGD(list(m.parameters())[:2], lr=0.1), "parameters are not the model"),
    (lambda m: torch.optim.SGD([{"params": list(m.parameters())[:2]},
                                {"params": list(m.parameters())[2:], "momentum": 0.5}], lr=0.1),
     "parameter groups differ in 'momentum'"),
])
def test_unsupported_optimizer_refused_before_anything_is_written(tmp_path, opt_fn, named):
    with pytest.raises(ConfigError, match=named):
        _attach(tmp_path, opt_fn=opt_fn)
    assert not (tmp_path / "proof").exists()


@pytest.mark.parametrize("kw,named", [
    (dict(norm_type=float("inf"), clip_grad_norm=1.0), "norm_type=inf"),
    (dict(clip_grad_norm=1.0, clip_grad_value=1.0), "not both"),
    (dict(label_smoothing=0.1, loss="mse"), "label smoothing"),
    (dict(clip_grad_norm=-1.0), "clip_grad_norm"),
])
def test_unsupported_feature_refused(tmp_path, kw, named):
    with pytest.raises(ConfigError, match=named):
        _attach(tmp_path, **kw)
    assert not (tmp_path / "proof").exists()


def test_step_before_all_micro_batches_is_refused(tmp_path):
    model, (opt, loader) = _attach(tmp_path, batch_size=8, accumulation=4)
    x, y = next(iter(loader))
    loss = F.cross_entropy(model(x), y) / 4
    loss.backward()
    with pytest.raises(ConfigError, match="1 of the step's 4 micro-batches"):
        opt.step(loss=loss)


# ---------------------------------------------------------------- the spec's step field

def test_step_spec_absent_when_default_and_strict():
    base = TrainingSpec.from_dict(json.loads(json.dumps(_spec_dict())))
    assert "step" not in base.to_dict()
    d = _spec_dict()
    d["step"] = {"accumulation": 2, "clip_grad_norm": 1.5}
    spec = TrainingSpec.from_dict(d)
    assert spec.step == StepSpec(accumulation=2, clip_grad_norm=1.5)
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    for bad in ({}, {"accumulation": 1}, {"clip_grad_norm": -1}, {"accumulation": 3},
                {"label_smoothing": 1.5}, {"clip_grad_norm": 1, "clip_grad_value": 1},
                {"momentum": 0.9}, {"accumulation": 2.0}):
        d["step"] = bad
        with pytest.raises(ProofFormatError):
            TrainingSpec.from_dict(d)


def _spec_dict() -> dict:
    return {"model": {"arch": "mlp", "kwargs": {}}, "optimizer": {"name": "sgd", "lr": 0.1},
            "schedule": {"name": "constant"},
            "data": {"name": "user", "size": 10, "root": "0" * 64, "prepare": "float",
                     "augment": "none"},
            "loss": "cross_entropy", "batch_size": 4, "epochs": 1, "k": 2, "precision": "fp32",
            "seed": 0, "device": "cpu"}


def test_fit_and_the_recorder_take_the_same_features(tmp_path):
    """`fit(features=...)`: pol's own loop runs update() with the spec's features; exact."""
    x, y = make_user_data()
    model = user_model()
    res = pol.fit(tmp_path / "fit", model=model, data=(x, y),
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                  model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                  epochs=EPOCHS, k=K, seed=3, init="from-seed",
                  features=StepSpec(accumulation=2, clip_grad_norm=0.5, label_smoothing=0.05))
    r = verify(res.proof, data=str(save_npz(tmp_path / "d.npz", x, y)), all_segments=True)
    assert r.valid and all(s.exact for s in r.segments), r.render(verbose=True)
    assert load_manifest(res.proof)["spec"]["step"]["accumulation"] == 2


def test_a_step_in_eval_mode_is_refused(tmp_path):
    model, (opt, loader) = _attach(tmp_path)
    x, y = next(iter(loader))
    model.eval()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with pytest.raises(ConfigError, match="eval mode"):
        opt.step(loss=loss)
