"""`pol.step`: the only constructor of a step context, one optimizer table, numerics restored, and
a Recorder that never changes the caller's weights."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import pol.prover.recorder as recorder_mod
from pol.errors import ConfigError
from pol.proof import format as fmt
from pol.prover.recorder import Recorder, fit
from pol.spec import ModelSpec, OptimizerSpec, ScheduleSpec, current_tf32
from pol.step import (OPTIMIZERS, build_context, draw_init, lr_table, lrs_at, make_optimizer,
                      numerics, optimizer_spec_of, state_keys, storage_dtype)

from conftest import USER_MODEL_KWARGS, make_user_data, user_model

# every StepContext field that changes a step, besides the model and optimizer themselves
STEP_FIELDS = ("augment", "rng_device", "prepare", "loss_fn", "seed", "device")


class _Stop(Exception):
    pass


def _image_data(n: int = 64):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("augment", ["none", "flip", "crop-flip"])
def test_fit_trains_with_the_context_build_context_gives(tmp_path, monkeypatch, augment):
    """The context `fit` runs its loop with equals `build_context(spec)` in every field that
    affects a step (it once drew augmentation on the model's device while the spec said CPU)."""
    seen = {}

    def capture(rec, ctx, *a, **kw):
        seen["rec"], seen["ctx"] = rec, ctx
        raise _Stop

    monkeypatch.setattr(recorder_mod, "run_loop", capture)
    x, y = _image_data()
    kwargs = {"in_features": 16, "num_classes": 3, "hidden": [8]}
    model = nn.Sequential(nn.Flatten(1), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(_Stop):
        fit(tmp_path / "p", model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
            data=(x, y), model_spec=ModelSpec("mlp", kwargs), batch_size=16, epochs=1, k=2,
            seed=11, loss="cross_entropy", augment=augment, init="from-seed")
    spec, ctx = seen["rec"].spec, seen["ctx"]
    ref = build_context(spec)
    for field in STEP_FIELDS:
        assert getattr(ctx, field) == getattr(ref, field), field
    assert spec.augment_rng == "cpu" and ctx.rng_device == torch.device("cpu")
    assert ctx.generator(5).device.type == "cpu"
    assert ctx.model is model and type(ctx.optimizer) is type(ref.optimizer)
    assert optimizer_spec_of(ctx.optimizer) == optimizer_spec_of(ref.optimizer)
    # W_0: the same init the verifier's build_context draws
    for (n, p), (_, q) in zip(ctx.model.named_parameters(), ref.model.named_parameters()):
        assert torch.equal(p, q), n


def _numerics_state():
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), current_tf32(),
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            torch.utils.deterministic.fill_uninitialized_memory)


@pytest.mark.parametrize("env", [None, ":16:8"])
def test_numerics_sets_what_the_spec_records_and_restores_everything(monkeypatch, env):
    from pol.tasks import build_spec
    if env is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", env)
    spec, _, _ = build_spec("digits-mlp")
    threads = 2 if torch.get_num_threads() != 2 else 3
    spec = spec.with_(cpu_threads=threads, deterministic=True, tf32="on")
    before = _numerics_state()
    assert not before[1], "the test needs deterministic algorithms off to start with"
    for raise_inside in (False, True):
        try:
            with numerics(spec, torch.device("cpu")):
                assert torch.get_num_threads() == threads
                assert torch.are_deterministic_algorithms_enabled()
                assert current_tf32() == "on"
                assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == (env or ":4096:8")
                # no fill kernel per new tensor: the step reads no memory it did not write
                assert not torch.utils.deterministic.fill_uninitialized_memory
                if raise_inside:
                    raise _Stop
        except _Stop:
            pass
        assert _numerics_state() == before


def test_numerics_leaves_alone_what_the_spec_does_not_record():
    from pol.tasks import build_spec
    spec, _, _ = build_spec("digits-mlp")
    spec = spec.with_(cpu_threads=0, deterministic=False, tf32="")
    before = _numerics_state()
    with numerics(spec):
        assert _numerics_state() == before
    assert _numerics_state() == before


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_table_round_trips_spec_and_torch(name):
    params = [nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(2))]
    if name == "sgd":
        spec = OptimizerSpec(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    elif name == "rmsprop":
        spec = OptimizerSpec(name=name, lr=1e-3, alpha=0.9, eps=1e-7, weight_decay=0.01,
                             momentum=0.5, centered=True)
    elif name == "adagrad":
        spec = OptimizerSpec(name=name, lr=1e-2, lr_decay=1e-3, eps=1e-10, weight_decay=0.01,
                             initial_accumulator_value=0.1)
    else:
        spec = OptimizerSpec(name=name, lr=1e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.01,
                             amsgrad=True)
    opt = make_optimizer(spec, params)
    assert type(opt).__name__ == OPTIMIZERS[name].torch_class
    assert optimizer_spec_of(opt) == spec
    # torch -> spec -> torch: the same class and hyperparameters
    again = make_optimizer(optimizer_spec_of(opt), [nn.Parameter(p.detach().clone()) for p in params])
    keep = ("lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "amsgrad", "alpha",
            "centered", "lr_decay", "initial_accumulator_value")
    assert type(again) is type(opt)
    assert {k: v for k, v in again.param_groups[0].items() if k in keep} == \
        {k: v for k, v in opt.param_groups[0].items() if k in keep}
    # the table's state keys are the ones torch creates, in torch's order
    sum((p ** 2).sum() for p in params).backward()
    opt.step()
    assert tuple(opt.state[params[0]]) == state_keys(name)
    # and its storage dtypes are the proof format's
    for key, val in opt.state[params[0]].items():
        for precision in ("fp32", "fp16"):
            entry = f"optim.0.{key}"
            assert storage_dtype(entry, val, precision) == fmt.storage_dtype(entry, val, precision)


def test_unsupported_optimizers_are_refused():
    p = [nn.Parameter(torch.randn(2))]
    with pytest.raises(ValueError, match="not supported"):
        optimizer_spec_of(torch.optim.Adamax(p))

    class MySGD(torch.optim.SGD):  # a subclass may change the step: not the table's class
        pass

    with pytest.raises(ValueError, match="not supported"):
        optimizer_spec_of(MySGD(p, lr=0.1))
    with pytest.raises(ValueError, match="maximize"):
        optimizer_spec_of(torch.optim.Adam(p, maximize=True))


def test_lr_schedule_is_expanded_in_one_place():
    from pol.tasks import build_spec
    spec, _, _ = build_spec("digits-mlp", warmup=3)
    spec = spec.with_(schedule=ScheduleSpec(name="cosine", total_steps=40, warmup_steps=3))
    table = lr_table(spec, 40)
    assert table.shape == (40,)
    assert [lrs_at(spec.schedule, [spec.optimizer.lr] * 2, t, 40) for t in range(40)] == \
        [[v, v] for v in table.tolist()]


def test_step_things_live_in_the_step_package_only():
    import pol.datasets
    import pol.registry
    import pol.step
    assert not hasattr(pol.registry, "build_context") and not hasattr(pol.datasets, "PREPARE")
    for name in pol.step.__all__:
        assert getattr(pol.step, name) is not None, name


# ---------------------------------------------------------------- the Recorder and W_0

def _recorder(out, model, **kw):
    x, y = make_user_data()
    return Recorder(out, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    data=(x, y), model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)),
                    batch_size=32, epochs=1, k=3, seed=7, **kw)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recorder_refuses_weights_that_are_not_the_seeded_init_and_leaves_them(tmp_path):
    model = user_model()
    before = _weights(model)
    with pytest.raises(ConfigError) as e:
        _recorder(tmp_path / "p", model)
    msg = str(e.value)
    assert 'init="from-seed"' in msg and 'init="external"' in msg and "parent" in msg
    assert _same(_weights(model), before)
    assert not (tmp_path / "p").exists()
    with pytest.raises(ConfigError, match="init="):
        _recorder(tmp_path / "q", model, init="random")


def test_recorder_records_a_model_that_holds_the_seeded_init(tmp_path):
    model = user_model()
    draw_init(model, ModelSpec("mlp", dict(USER_MODEL_KWARGS)), 7)
    before = _weights(model)
    rec = _recorder(tmp_path / "p", model)
    assert rec.init == {"kind": "strategy", "strategy": "torch-default"}
    assert _same(_weights(model), before)
    rec.abort()


def test_recorder_from_seed_draws_the_init_build_context_draws(tmp_path):
    model = user_model()
    rec = _recorder(tmp_path / "p", model, init="from-seed")
    ref = build_context(rec.spec).model
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    rec.abort()
    # the older spelling
    model = user_model()
    _recorder(tmp_path / "q", model, init_from_seed=True).abort()
    assert torch.equal(next(model.parameters()), next(ref.parameters()))


def test_recorder_records_external_weights_as_they_are(tmp_path):
    from conftest import record_until
    model = user_model()
    before = _weights(model)
    x, y = make_user_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(tmp_path / "p", model=model, optimizer=opt, data=(x, y),
                   model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32, epochs=1,
                   k=3, seed=7, init="external")
    assert _same(_weights(model), before)
    record_until(rec, model, opt, x, y)
    init = json.loads((tmp_path / "p" / fmt.MANIFEST).read_text())["init"]
    assert init == {"kind": "strategy", "strategy": "torch-default", "external": True}
    from pol.proof.reader import open_proof
    stored = open_proof(tmp_path / "p").load_checkpoint(0)
    assert all(torch.equal(stored["model." + k], v) for k, v in before.items())


def test_the_optimizer_table_imports_without_torch():
    """`pol.proof.format` reads the storage dtypes from the table: importing it costs no torch."""
    import subprocess
    import sys
    code = ("import sys, pol.step.optimizers as o\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print(o.storage_dtype_name('optim.0.exp_avg_sq', 'float32', 'fp16'),"
            " o.storage_dtype_name('optim.0.step', 'float32', 'fp16'),"
            " o.storage_dtype_name('model.w', 'float32', 'fp32'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["bfloat16", "float32", "float32"]


def test_build_context_draws_w0_where_the_recorder_does():
    from pol.step import build_model
    from pol.tasks import build_spec
    spec, _, _ = build_spec("digits-mlp", seed=5)
    ctx = build_context(spec)
    model = build_model(spec.model)
    draw_init(model, spec.model, spec.seed)
    assert ctx.device == torch.device(spec.device)
    for (n, p), (_, q) in zip(ctx.model.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), n
