"""Resuming an interrupted user loop (README "Resuming an interrupted loop"): record half, crash
(abort: no manifest), resume with the user's lr scheduler fast-forwarded, finish; the proof is the
uninterrupted one file for file, and verifies. Also `attach(resume=True)`, and the Recorder's
target check run off the training thread."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pol import ModelSpec, Recorder, attach
from pol.errors import ConfigError, IncompleteProofError
from pol.models import mlp
from pol.proof.reader import inspect_proof, open_proof
from pol.verifier import verify

README = Path(__file__).resolve().parents[1] / "README.md"
ARCH = {"in_features": 8, "num_classes": 3, "hidden": [16], "dropout": 0.2}


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_resume_example_gives_the_uninterrupted_proof(tmp_path, monkeypatch, capsys):
    blocks = _blocks()
    resume = [b for b in blocks if "resume=True" in b]
    assert len(resume) == 1 and "sched.step()" in resume[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # X, Y, arch, mlp, ... and the data file
    capsys.readouterr()
    exec(compile(resume[0], "README.md", "exec"), ns)
    assert capsys.readouterr().out.strip() == "valid"
    assert ns["digest"] and ns["train"]("proof-full")  # (the manifests differ in `created`)
    assert inspect_proof("proof-resume")["files"] == inspect_proof("proof-full")["files"]


def _data():
    x = np.random.default_rng(1).normal(size=(120, 8)).astype(np.float32)
    return x, (np.argmax(x[:, :3], axis=1)).astype(np.int64)


def _fast_forward(sched, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            sched.step()


def _warmup_cosine(opt, total):
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[5])


def _recorder_run(out, crash_at=None, resume=False, fast_forward=True):
    """A user's loop: AdamW, warm-up + cosine, the README's Recorder calls."""
    x, y = _data()
    model = mlp(**ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y), model_spec=ModelSpec("mlp", ARCH),
                   batch_size=16, epochs=3, k=3, seed=5, init="from-seed", resume=resume)
    sched = _warmup_cosine(opt, rec.total_steps)
    if fast_forward:
        _fast_forward(sched, rec.t)
    for epoch in range(rec.epochs):
        for s, idx in enumerate(rec.epoch_batches(epoch)):
            if epoch * rec.steps_per_epoch + s < rec.t:
                continue
            if rec.t == crash_at:
                rec.abort()
                return None
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            rec.record_batch(idx, xb, yb)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            rec.step(loss)
            sched.step()
    return rec.close()


def _verify(proof, tmp_path):
    x, y = _data()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return verify(proof, data=str(tmp_path / "d.npz"), all_segments=True)


def test_recorder_resume_with_a_scheduler_is_bitwise_the_uninterrupted_proof(tmp_path):
    _recorder_run(tmp_path / "full")
    assert _recorder_run(tmp_path / "cut", crash_at=13) is None  # after checkpoint 12
    with pytest.raises(IncompleteProofError):
        open_proof(tmp_path / "cut")
    assert _recorder_run(tmp_path / "cut", resume=True)
    assert inspect_proof(tmp_path / "cut")["files"] == inspect_proof(tmp_path / "full")["files"]
    r = _verify(tmp_path / "cut", tmp_path)
    assert r.valid and all(s.exact for s in r.segments), r.render()


def test_a_scheduler_not_fast_forwarded_gives_another_proof(tmp_path):
    """The lrs are recorded as the optimizer holds them: forgetting the fast-forward changes the
    proof (it records the restarted schedule), it does not silently match the uninterrupted one."""
    _recorder_run(tmp_path / "full")
    _recorder_run(tmp_path / "cut", crash_at=13)
    _recorder_run(tmp_path / "cut", resume=True, fast_forward=False)
    cut, full = (inspect_proof(tmp_path / d)["files"] for d in ("cut", "full"))
    assert cut != full and cut["checkpoints/step_000000012.safetensors"] == full[
        "checkpoints/step_000000012.safetensors"]


def _attach_run(out, crash_at=None, resume=False):
    x, y = _data()
    model = mlp(**ARCH)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt, batches = attach(model=model, optimizer=opt, data=(x, y), out=out,
                          model_spec=ModelSpec("mlp", ARCH), batch_size=16, epochs=3, k=4,
                          seed=2, clip_grad_norm=1.0, init="from-seed", resume=resume)
    sched = _warmup_cosine(opt, opt.recorder.total_steps)
    _fast_forward(sched, opt.recorder.t)
    while opt.root_digest is None:
        for xb, yb in batches:  # one epoch per `for`, from the step the proof is at
            if opt.recorder.t == crash_at:
                opt.recorder.abort()
                return None
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step(loss=loss)
            sched.step()
    return opt.root_digest


def test_attach_resume_is_bitwise_the_uninterrupted_proof(tmp_path):
    _attach_run(tmp_path / "full")
    assert _attach_run(tmp_path / "cut", crash_at=10) is None  # mid-epoch, after checkpoint 8
    assert _attach_run(tmp_path / "cut", resume=True)
    assert inspect_proof(tmp_path / "cut")["files"] == inspect_proof(tmp_path / "full")["files"]
    r = _verify(tmp_path / "cut", tmp_path)
    assert r.valid and all(s.exact for s in r.segments), r.render()


def test_a_resume_with_another_spec_is_refused(tmp_path):
    _recorder_run(tmp_path / "cut", crash_at=7)
    x, y = _data()
    model = mlp(**ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    with pytest.raises(ConfigError, match="different spec"):
        Recorder(tmp_path / "cut", model=model, optimizer=opt, data=(x, y),
                 model_spec=ModelSpec("mlp", ARCH), batch_size=16, epochs=3, k=4, seed=5,
                 init="from-seed", resume=True)


# ----- the target check off the training thread (the path device targets take) -----

def _deferred_recorder(out, **kw):
    x, y = _data()
    model = mlp(**ARCH)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y), model_spec=ModelSpec("mlp", ARCH),
                   batch_size=16, epochs=1, init="from-seed", **kw)
    rec._targets.defer_host = True  # host targets take the device targets' way
    return rec, model, opt, x, y


def _steps(rec, model, opt, x, y, wrong_at=None):
    for idx in rec.epoch_batches(0):
        xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        given = (yb + 1) % 3 if rec.t == wrong_at else yb
        rec.record_batch(idx, xb, given)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        rec.step(loss)


def test_deferred_target_check_raises_by_close_and_aborts(tmp_path):
    rec, model, opt, x, y = _deferred_recorder(tmp_path / "p", k=100)  # one checkpoint: the last
    with pytest.raises(ConfigError, match="step 2: targets differ"):
        _steps(rec, model, opt, x, y, wrong_at=2)
        rec.close()
    with pytest.raises(IncompleteProofError):
        open_proof(tmp_path / "p")


def test_deferred_target_check_raises_at_a_later_checkpoint(tmp_path):
    rec, model, opt, x, y = _deferred_recorder(tmp_path / "p", k=1)
    with pytest.raises(ConfigError, match="step 1: targets differ"):
        _steps(rec, model, opt, x, y, wrong_at=1)  # raised by a later step's checkpoint ...
        rec.close()  # ... or at the latest here
    with pytest.raises(IncompleteProofError):
        open_proof(tmp_path / "p")


def test_deferred_target_check_passes_right_targets(tmp_path):
    rec, model, opt, x, y = _deferred_recorder(tmp_path / "p", k=2)
    _steps(rec, model, opt, x, y)
    assert rec.close()
    assert _verify(tmp_path / "p", tmp_path).valid
