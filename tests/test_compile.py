"""`torch.compile`d models: the backends whose training step is the eager step, bitwise
(`aot_eager`, `eager`) are recorded through the module underneath (`_orig_mod`) and replay
eagerly, bitwise: the proof is file for file the uncompiled run's. Every other compilation
(inductor, the default; a mode or options; a decomposing or custom backend; a submodule compiled
on its own) is refused at attach / Recorder time, before anything is written, saying why."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import pol
from pol.errors import ConfigError
from pol.proof import format as fmt
from pol.spec import ModelSpec
from pol.verifier import verify

from conftest import (USER_MODEL_KWARGS, load_manifest, make_user_data, save_npz,
                      tampered_copy, train_attached, user_model)

EPOCHS, K = 2, 3


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch; nothing compiled here outlives it."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _attached_run(out, compile_backend: str | None):
    """The same attached loop (SGD with momentum, dropout, clipping), its forward pass compiled
    with `compile_backend` (None: eager); returns the attached optimizer."""
    model = user_model()
    forward = model if compile_backend is None else torch.compile(model, backend=compile_backend)
    opt, loader = pol.attach(
        model=forward, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        data=make_user_data(), out=out, model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)),
        batch_size=32, epochs=EPOCHS, k=K, seed=3, init="from-seed", clip_grad_norm=1.0)
    train_attached(forward, opt, loader, EPOCHS)
    return opt


def test_aot_eager_records_the_uncompiled_proof_and_replays_bitwise(tmp_path):
    from torch._dynamo.utils import counters
    plain = _attached_run(tmp_path / "plain", None)
    counters.clear()
    opt = _attached_run(tmp_path / "proof", "aot_eager")
    assert counters["stats"]["unique_graphs"] >= 1  # the loop ran compiled graphs
    m = load_manifest(opt.proof)
    assert "compile" not in m["spec"].get("step", {})  # eager replay: nothing to record
    state = load_file(str(opt.proof / fmt.checkpoint_name(K)))
    assert state and not any("_orig_mod" in k for k in state)
    # the compiled run's proof is the eager run's, file for file (the same steps, bitwise)
    assert m["files"] == load_manifest(plain.proof)["files"]

    npz = save_npz(tmp_path / "data.npz", *make_user_data())
    r = verify(opt.proof, data=str(npz), all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)
    bad = tampered_copy(opt.proof, tmp_path / "tampered", K * 2)
    r = verify(bad, data=str(npz), all_segments=True)
    assert not r.valid, r.render(verbose=True)


def test_the_recorder_takes_an_eager_compiled_model(tmp_path):
    """The low-level Recorder unwraps too: names are the model_spec's, the proof verifies exact."""
    x, y = make_user_data()
    model = user_model()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.Adam(compiled.parameters(), lr=1e-2)
    rec = pol.Recorder(tmp_path / "proof", model=compiled, optimizer=opt, data=(x, y),
                       model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=50,
                       epochs=1, k=2, seed=5, init="from-seed")
    assert rec.model is model
    for idx in rec.epoch_batches(0):
        xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        rec.record_batch(idx, xb, yb)
        opt.zero_grad()
        loss = F.cross_entropy(compiled(xb), yb)
        loss.backward()
        opt.step()
        rec.step(loss)
    rec.close()
    r = verify(rec.path, data=str(save_npz(tmp_path / "d.npz", x, y)), all_segments=True)
    assert r.valid and r.segments and all(s.exact for s in r.segments), r.render(verbose=True)


# ---------------------------------------------------------------- refused up front

def _in_place(model, **kw):
    model.compile(**kw)  # sets the module's _compiled_call_impl; state_dict names unchanged
    return model


def _compiled_forward(model, **kw):
    model.forward = torch.compile(model.forward, **kw)
    return model


def _compiled_submodule(model):
    model[1] = torch.compile(model[1], backend="aot_eager")
    return model


REFUSED = [  # (how the model is compiled, what the ConfigError names); none of these compiles yet
    (lambda m: torch.compile(m), "backend 'inductor'"),
    (lambda m: torch.compile(m, mode="max-autotune"), "backend 'inductor'"),
    (lambda m: torch.compile(m, backend="aot_eager_decomp_partition"),
     "'aot_eager_decomp_partition'"),
    (lambda m: torch.compile(m, backend=lambda gm, inputs: gm.forward), "'<lambda>'"),
    (lambda m: torch.compile(m, backend="aot_eager", mode="max-autotune"),
     "'aot_eager with mode/options'"),
    (lambda m: _in_place(m), "the model is compiled with torch.compile backend 'inductor'"),
    (lambda m: _compiled_forward(m), "backend 'inductor'"),
    (_compiled_submodule, "submodule '1' is torch.compile'd on its own"),
]


@pytest.mark.parametrize("compile_model,named", REFUSED)
@pytest.mark.parametrize("entry", ["attach", "Recorder"])
def test_a_compilation_that_does_not_replay_is_refused_before_anything_is_written(
        tmp_path, compile_model, named, entry):
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = dict(model=compile_model(model), optimizer=opt, data=make_user_data(),
                model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                epochs=1, k=2, init="from-seed")
    with pytest.raises(ConfigError, match=named) as e:
        if entry == "attach":
            pol.attach(out=tmp_path / "proof", **args)
        else:
            pol.Recorder(tmp_path / "proof", **args)
    assert "uncompiled model" in str(e.value) or "whole model" in str(e.value)
    assert not (tmp_path / "proof").exists()


def test_the_refusal_says_why_and_what_to_do(tmp_path):
    model = user_model()
    with pytest.raises(ConfigError) as e:
        pol.attach(model=torch.compile(model), optimizer=torch.optim.SGD(model.parameters(),
                                                                          lr=0.1),
                   data=make_user_data(), out=tmp_path / "proof",
                   model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                   epochs=1, k=2, init="from-seed")
    msg = str(e.value)
    for part in ("not the eager step pol replays", "Record with the uncompiled model",
                 "backend='aot_eager'"):
        assert part in msg, msg
