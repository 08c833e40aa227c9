"""The Recorder API around a hand-written training loop, and `fit`."""

from __future__ import annotations

import numpy as np
import json

import pytest
import torch
import torch.nn.functional as F

from pol.errors import ConfigError, IncompleteProofError, ProofWriteError
from pol.proof import format as fmt
from pol.prover.recorder import Recorder, fit
from pol.spec import ModelSpec, ScheduleSpec
from pol.verifier import verify

from conftest import (EPOCHS, USER_MODEL_KWARGS, check, failed_checks, load_manifest,
                      make_user_data, save_npz, user_model)


def _recorder(out, model=None, opt=None, data=None, **kw) -> Recorder:
    model = model or user_model()
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = data if data is not None else make_user_data()
    args = dict(model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                epochs=EPOCHS, k=3, seed=7, init="from-seed")
    args.update(kw)
    return Recorder(out, model=model, optimizer=opt, data=data, **args)


def _loop_step(rec, model, opt, x, y, idx, extra_rng_draw: bool = False):
    xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    rec.record_batch(idx, xb, yb)
    if extra_rng_draw:
        torch.rand(1)  # consumes global RNG between seeding and the dropout masks
    opt.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    rec.step(loss)


# ---------------------------------------------------------------- hand-written loop

def test_hand_written_loop_with_dropout_verifies_bitwise_exactly(user_proof):
    r = verify(user_proof.proof, data=str(user_proof.npz), all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)
    assert check(r, "exact replay").status == "pass"
    assert check(r, "dataset commitment").status == "pass"
    assert r.root_digest == user_proof.digest


def test_hand_written_loop_proof_records_its_spec(user_proof):
    m = load_manifest(user_proof.proof)
    spec = m["spec"]
    assert spec["model"] == {"arch": "mlp", "kwargs": USER_MODEL_KWARGS,
                             "init": "torch-default", "source_sha256": ""}
    assert spec["optimizer"]["name"] == "sgd" and spec["optimizer"]["momentum"] == 0.9
    assert spec["data"]["name"] == "user" and spec["data"]["size"] == len(user_proof.x)
    assert spec["seed"] == 7 and m["k"] == 3
    T = m["total_steps"]
    assert T == EPOCHS * -(-len(user_proof.x) // 32)
    assert m["checkpoints"] == fmt.checkpoint_steps(T, 3)


def test_hand_written_loop_proof_verifies_from_the_cli(user_proof):
    from conftest import run_cli
    r = run_cli("verify", user_proof.proof, "--data", user_proof.npz, "--all",
                "--delta", "l2=0")
    assert r.exit_code == 0, r.output


def test_dropout_masks_drawn_from_other_randomness_do_not_replay(tmp_path):
    """Negative control: the replay does depend on the dropout masks. A loop that consumes the
    global RNG after record_batch (so its masks are not the recorded step's) fails replay."""
    x, y = make_user_data()
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = _recorder(tmp_path / "p", model=model, opt=opt, data=(x, y))
    for epoch in range(rec.epochs):
        for idx in rec.epoch_batches(epoch):
            _loop_step(rec, model, opt, x, y, idx, extra_rng_draw=True)
    rec.close()
    npz = str(save_npz(tmp_path / "d.npz", x, y))
    r = verify(tmp_path / "p", data=npz, all_segments=True)
    assert r.segments and not any(s.exact for s in r.segments)
    assert check(r, "exact replay").status == "warn"  # exactness was expected here
    exact_policy = {"l1": 0.0, "l2": 0.0, "linf": 0.0, "cos": 0.0}
    r = verify(tmp_path / "p", data=npz, all_segments=True, delta=exact_policy)
    assert "replay" in failed_checks(r)


def test_recorder_accepts_torch_tensor_data_and_index_tensors(tmp_path):
    x, y = make_user_data(n=96)
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = _recorder(tmp_path / "p", model=model, opt=opt,
                    data=(torch.from_numpy(x), torch.from_numpy(y)), epochs=1)
    for idx in rec.epoch_batches(0):
        xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        rec.record_batch(torch.from_numpy(idx), xb, yb)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        rec.step(loss)
    rec.close()
    r = verify(tmp_path / "p", data=str(save_npz(tmp_path / "d.npz", x, y)), all_segments=True)
    assert r.valid, r.render()
    losses = np.load(tmp_path / "p" / fmt.LOSSES)
    assert np.isfinite(losses).all()


def test_recorder_refuses_what_the_verifier_would_reject(tmp_path):
    """A step without its loss, a sample twice in an epoch, a short batch before the epoch's
    last, an optimizer that already holds state: refused when recorded, not at verification."""
    from pol.errors import ConfigError
    x, y = make_user_data(n=96)

    def fresh(name):
        model = user_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, opt, _recorder(tmp_path / name, model=model, opt=opt, data=(x, y),
                                     epochs=1)

    model, opt, rec = fresh("a")
    idx = next(rec.epoch_batches(0))
    rec.record_batch(idx)
    with pytest.raises(ConfigError, match="loss"):
        rec.step()
    model, opt, rec = fresh("b")
    batches = list(rec.epoch_batches(0))
    rec.record_batch(batches[0])
    rec.step(0.5)
    with pytest.raises(ConfigError, match="twice"):
        rec.record_batch(batches[0])
    with pytest.raises(ConfigError, match="expected"):
        rec.record_batch(batches[1][:3])
    dup = batches[1].copy()
    dup[-1] = dup[0]  # twice within one batch
    with pytest.raises(ConfigError, match="twice"):
        rec.record_batch(dup)
    rec.record_batch(batches[1])  # the same batch without the duplicate is fine
    model, opt, _ = fresh("c")
    opt.zero_grad()
    F.cross_entropy(model(torch.from_numpy(x[:8])), torch.from_numpy(y[:8])).backward()
    opt.step()
    with pytest.raises(ConfigError, match="already holds state"):
        _recorder(tmp_path / "d", model=model, opt=opt, data=(x, y), epochs=1)


# ---------------------------------------------------------------- fit

@pytest.fixture(scope="session")
def fit_proof(proofs_dir):
    x, y = make_user_data(n=160, seed=1)
    model = user_model(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    res = fit(proofs_dir / "fit", model=model, optimizer=opt, data=(x, y),
              model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=16,
              epochs=EPOCHS, k=4, seed=3, schedule=ScheduleSpec(name="cosine"), init="from-seed")
    return res, save_npz(proofs_dir / "fit-data.npz", x, y), (x, y)


def test_fit_writes_a_proof_that_verifies(fit_proof):
    res, npz, _ = fit_proof
    assert (res.proof / fmt.MANIFEST).is_file()
    assert np.isfinite(res.final_loss)
    r = verify(res.proof, data=str(npz), all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert all(s.exact for s in r.segments)
    assert check(r, "learning rates").status == "pass"  # the cosine lrs follow the schedule
    assert r.root_digest == res.root_digest


def test_fit_records_the_cosine_learning_rates(fit_proof):
    res, _, _ = fit_proof
    lrs = np.load(res.proof / fmt.LRS)
    assert lrs[0, 0] == pytest.approx(3e-3)
    assert np.all(np.diff(lrs[:, 0]) <= 0) and lrs[-1, 0] < lrs[0, 0]


def test_fit_proof_rejects_other_data(fit_proof, tmp_path):
    res, _, (x, y) = fit_proof
    npz = save_npz(tmp_path / "other.npz", x[::-1].copy(), y[::-1].copy())
    r = verify(res.proof, data=str(npz))
    assert "dataset commitment" in failed_checks(r)


# ---------------------------------------------------------------- misuse

def test_closing_early_raises_and_leaves_an_incomplete_proof(tmp_path):
    x, y = make_user_data()
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = _recorder(tmp_path / "p", model=model, opt=opt, data=(x, y))
    for idx in list(rec.epoch_batches(0))[:4]:
        _loop_step(rec, model, opt, x, y, idx)
    with pytest.raises(ProofWriteError, match="incomplete"):
        rec.close()
    p = tmp_path / "p"
    assert not (p / fmt.MANIFEST).exists()
    assert (p / fmt.PROGRESS).exists()
    with pytest.raises(IncompleteProofError):
        verify(p, data=str(save_npz(tmp_path / "d.npz", x, y)))
    from conftest import assert_unusable, run_cli
    assert_unusable(run_cli("verify", p), "incomplete proof")


def test_an_exception_in_the_loop_leaves_an_incomplete_proof(tmp_path):
    x, y = make_user_data()
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with _recorder(tmp_path / "p", model=model, opt=opt, data=(x, y)) as rec:
            for idx in rec.epoch_batches(0):
                _loop_step(rec, model, opt, x, y, idx)
                raise RuntimeError("boom")
    assert not (tmp_path / "p" / fmt.MANIFEST).exists()
    with pytest.raises(IncompleteProofError):
        verify(tmp_path / "p")


def test_record_batch_with_wrong_targets_raises_config_error(tmp_path):
    x, y = make_user_data()
    rec = _recorder(tmp_path / "p", data=(x, y))
    try:
        idx = next(rec.epoch_batches(0))
        wrong = torch.from_numpy((y[idx] + 1) % 3)
        with pytest.raises(ConfigError, match="targets"):
            rec.record_batch(idx, torch.from_numpy(x[idx]), wrong)
        # the correct batch is still accepted afterwards
        rec.record_batch(idx, torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
    finally:
        rec.abort()


@pytest.mark.parametrize("bad", [
    lambda n, B: np.array([0, n]),                      # outside the dataset
    lambda n, B: np.array([-1, 0]),                     # negative
    lambda n, B: np.arange(B + 1),                      # larger than the batch size
    lambda n, B: np.array([], dtype=np.int64),          # empty
    lambda n, B: np.array([[0, 1]]),                    # not 1-D
    lambda n, B: np.array([0.0, 1.0]),                  # not integers
], ids=["outside", "negative", "too-many", "empty", "2d", "float"])
def test_record_batch_with_bad_indices_raises_config_error(tmp_path, bad):
    x, y = make_user_data()
    rec = _recorder(tmp_path / "p", data=(x, y))
    try:
        with pytest.raises(ConfigError):
            rec.record_batch(bad(len(x), 32))
    finally:
        rec.abort()


def test_step_protocol_misuse_raises_config_error(tmp_path):
    rec = _recorder(tmp_path / "p")
    try:
        with pytest.raises(ConfigError):
            rec.step()  # no record_batch first
        rec.record_batch(np.arange(32))
        with pytest.raises(ConfigError):
            rec.record_batch(np.arange(32))  # twice without step
    finally:
        rec.abort()


def test_recording_more_steps_than_declared_raises_config_error(tmp_path):
    x, y = make_user_data(n=64)
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = _recorder(tmp_path / "p", model=model, opt=opt, data=(x, y), epochs=1)
    for idx in rec.epoch_batches(0):
        _loop_step(rec, model, opt, x, y, idx)
    with pytest.raises(ConfigError):
        rec.record_batch(np.arange(4))
    rec.close()
    assert (tmp_path / "p" / fmt.MANIFEST).is_file()


@pytest.mark.parametrize("spec", [
    ModelSpec("mlp", {**USER_MODEL_KWARGS, "hidden": [16]}),
    ModelSpec("mlp", {**USER_MODEL_KWARGS, "num_classes": 4}),
    ModelSpec("logreg", {"in_features": 12, "num_classes": 3}),
    ModelSpec("no-such-arch", {}),
], ids=["hidden", "classes", "other-arch", "unknown-arch"])
def test_model_spec_that_does_not_match_the_model_raises_config_error(tmp_path, spec):
    with pytest.raises(ConfigError, match="model_spec"):
        _recorder(tmp_path / "p", model_spec=spec)
    assert not (tmp_path / "p" / fmt.MANIFEST).exists()


def test_recorder_refuses_unsupported_optimizers(tmp_path):
    model = user_model()
    with pytest.raises(ConfigError):
        _recorder(tmp_path / "p", model=model, opt=torch.optim.Adamax(model.parameters()))


def test_recorder_refuses_a_non_empty_directory(tmp_path, user_proof):
    with pytest.raises(ProofWriteError, match="not empty"):
        _recorder(user_proof.proof)
    assert (user_proof.proof / fmt.MANIFEST).is_file()


def test_seed_order_is_declared_by_fit_and_held_by_the_recorder(tmp_path):
    from pol.errors import ConfigError
    from pol.prover.recorder import fit
    x, y = make_user_data(n=64)
    model = user_model()
    fit(tmp_path / "f", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data=(x, y), model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=16,
        epochs=1, k=2, init="from-seed")
    assert json.loads((tmp_path / "f" / fmt.MANIFEST).read_text())["spec"]["data"]["order"] \
        == "seed"
    assert verify(tmp_path / "f", data=str(save_npz(tmp_path / "d.npz", x, y))).valid
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = _recorder(tmp_path / "p", model=model, opt=opt, data=(x, y), epochs=1,
                    data_order="seed")
    first = next(rec.epoch_batches(0))
    with pytest.raises(ConfigError, match="seed"):
        rec.record_batch(first[::-1].copy())
    rec.abort()


def test_fp16_autocast_without_its_grad_scaler_is_refused(tmp_path):
    from pol.errors import ConfigError
    from pol.spec import StepSpec
    with pytest.raises(ConfigError, match="GradScaler"):
        _recorder(tmp_path / "p", features=StepSpec(autocast="fp16"))
    assert not (tmp_path / "p").exists()
