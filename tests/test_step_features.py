"""Step features beyond clipping and accumulation, each recorded around a user loop and verified
VALID with every segment bitwise exact, a tampered copy rejected: bf16 autocast on the CPU (through
`pol.attach` and through the Recorder), fp16 autocast with a GradScaler including skipped steps,
Adam/AdamW with amsgrad, RMSprop, Adagrad, and parameter groups that differ in weight decay (no
decay on biases). Their spec fields are absent at their defaults and strict when read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import pol
from pol.errors import ConfigError, ProofFormatError
from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.spec import ModelSpec, OptimizerSpec, StepSpec, TrainingSpec
from pol.verifier import verify
from pol.verifier import soundness

from conftest import (USER_MODEL_KWARGS, bump_weight, load_manifest, make_user_data, save_npz,
                      tampered_copy, user_model)

EPOCHS, K = 2, 4
MODEL_SPEC = ModelSpec("mlp", dict(USER_MODEL_KWARGS))


def _attach(tmp_path, opt_fn, **kw):
    model = user_model()
    opt = opt_fn(model)
    x, y = make_user_data()
    args = dict(model=model, optimizer=opt, data=(x, y), out=tmp_path / "proof",
                model_spec=MODEL_SPEC, batch_size=32, epochs=EPOCHS, k=K, seed=3,
                init="from-seed")
    args.update(kw)
    return model, pol.attach(**args)


def _train(model, opt, loader) -> None:
    for _ in range(EPOCHS):
        for x, y in loader:
            with opt.autocast():
                loss = F.cross_entropy(model(x), y)
            opt.backward(loss)
            opt.step(loss=loss)


def _tampered(tmp_path, proof, change) -> str:
    """A copy of `proof` with checkpoint 2K changed by `change(tensors)`, digests recomputed."""
    return str(tampered_copy(proof, tmp_path / "tampered", K * 2, change))


def _check_proof(tmp_path, proof, root_digest=None) -> str:
    """VALID and bitwise exact on every segment; a perturbed checkpoint (rehashed) is rejected.
    Returns the data file."""
    x, y = make_user_data()
    npz = str(save_npz(tmp_path / "data.npz", x, y))
    r = verify(proof, data=npz, all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)
    if root_digest is not None:
        assert r.root_digest == root_digest
    assert not verify(_tampered(tmp_path, proof, bump_weight), data=npz,
                      all_segments=True).valid
    return npz


# ---------------------------------------------------------------- mixed precision

def test_bf16_autocast_through_attach(tmp_path):
    model, (opt, loader) = _attach(
        tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        autocast="bf16", clip_grad_norm=0.5)
    seen = []
    for _ in range(EPOCHS):
        for x, y in loader:
            with opt.autocast():
                out = model(x)
                seen.append(out.dtype)
                loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step(loss=loss)
    assert set(seen) == {torch.bfloat16}
    assert load_manifest(opt.proof)["spec"]["step"] == {"clip_grad_norm": 0.5, "autocast": "bf16"}
    _check_proof(tmp_path, opt.proof, opt.root_digest)
    # the autocast is what makes it exact: the same proof declared without it fails
    plain = tmp_path / "fp32"
    shutil.copytree(opt.proof, plain)
    body = json.loads((plain / fmt.MANIFEST).read_text())
    body["spec"]["step"] = {"clip_grad_norm": 0.5}
    (plain / fmt.MANIFEST).write_text(json.dumps(body))
    rehash_manifest(plain)
    r = verify(plain, data=str(tmp_path / "data.npz"), all_segments=True)
    assert not r.valid


def test_bf16_autocast_through_the_recorder(tmp_path):
    x, y = make_user_data()
    model = user_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rec = pol.Recorder(tmp_path / "proof", model=model, optimizer=opt, data=(x, y),
                       model_spec=MODEL_SPEC, batch_size=32, epochs=EPOCHS, k=K, seed=3,
                       init="from-seed", features=StepSpec(autocast="bf16"))
    for epoch in range(EPOCHS):
        for idx in rec.epoch_batches(epoch):
            rec.record_batch(idx)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            opt.step()
            rec.step(loss)
    digest = rec.close()
    _check_proof(tmp_path, rec.path, digest)


def _fp16_run(tmp_path):
    # a GradScaler that grows every 2 steps overflows the fp16 backward pass now and then: those
    # steps are skipped (Adam's step counter stays), and the replay skips them too
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**17, growth_interval=2)
    model, (opt, loader) = _attach(tmp_path, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
                                   autocast="fp16", grad_scaler=scaler, clip_grad_norm=1.0)
    assert opt.scaler is scaler
    _train(model, opt, loader)
    return opt


def test_fp16_autocast_with_grad_scaler_and_skipped_steps(tmp_path):
    opt = _fp16_run(tmp_path)
    spec = load_manifest(opt.proof)["spec"]
    assert spec["step"] == {"clip_grad_norm": 1.0, "autocast": "fp16",
                            "scaler_init_scale": 2.0**17, "scaler_growth_interval": 2}
    last = load_file(str(opt.proof / fmt.checkpoint_name(opt.recorder.t)))
    skipped = opt.recorder.t - int(last["optim.0.step"])
    assert skipped > 0, "no step was skipped: the test does not exercise skipping"
    assert set(last) >= {"scaler.scale", "scaler.growth_tracker"}
    first = load_file(str(opt.proof / fmt.checkpoint_name(0)))
    assert float(first["scaler.scale"]) == 2.0**17 and int(first["scaler.growth_tracker"]) == 0
    npz = _check_proof(tmp_path, opt.proof, opt.root_digest)

    # the scaler's state is checked: a changed scale no longer replays, an implausible one (or a
    # missing one) is refused before replay
    def double_scale(state):
        state["scaler.scale"] = state["scaler.scale"] * 2

    assert not verify(_tampered(tmp_path, opt.proof, double_scale), data=npz,
                      all_segments=True).valid
    for change in (lambda s: s.__setitem__("scaler.scale", torch.tensor(-1.0)),
                   lambda s: s.pop("scaler.growth_tracker")):
        bad = _tampered(tmp_path, opt.proof, change)
        try:
            assert not verify(bad, data=npz, all_segments=True).valid
        except ProofFormatError:
            pass


def test_fp16_scaler_refusals(tmp_path):
    used = torch.amp.GradScaler("cpu")
    used._lazy_init_scale_growth_tracker(torch.device("cpu"))
    used._scale.fill_(1024.0)
    for kw, named in ((dict(autocast="bf16", grad_scaler=torch.amp.GradScaler("cpu")),
                       "bf16 needs no loss scaling"),
                      (dict(autocast="fp16", grad_scaler=used), "stepped already"),
                      (dict(grad_scaler=torch.amp.GradScaler("cpu")), "needs autocast"),
                      (dict(autocast="fp8"), "autocast='fp8'")):
        with pytest.raises(ConfigError, match=named):
            _attach(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), **kw)
        assert not (tmp_path / "proof").exists()
    # pol's own loop (fit) and the Recorder need the scaler kept with the optimizer first
    from pol.step import step_context
    spec = _spec(step=StepSpec(autocast="fp16"))
    model = user_model()
    with pytest.raises(ConfigError, match="GradScaler kept with the optimizer"):
        step_context(spec, model, torch.optim.SGD(model.parameters(), lr=0.1))


def _spec(**changes) -> TrainingSpec:
    from pol.spec import DataSpec, ScheduleSpec
    fields = dict(model=MODEL_SPEC, optimizer=OptimizerSpec(), schedule=ScheduleSpec(),
                  data=DataSpec(name="user", size=200, root="0" * 64))
    return TrainingSpec(**{**fields, **changes})


# ---------------------------------------------------------------- optimizers

def _no_decay_groups(m, cls, **kw):
    """Weight decay on weights, none on biases (the usual split)."""
    decay = [p for n, p in m.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in m.named_parameters() if not n.endswith("weight")]
    # groups must hold the model's parameters in order: interleave as model.parameters() does
    groups = [{"params": [p], "weight_decay": 0.05 if any(p is q for q in decay) else 0.0}
              for p in m.parameters()]
    assert len(decay) + len(plain) == len(groups)
    return cls(groups, **kw)


OPTIMIZER_CASES = {
    "adam-amsgrad": (lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, amsgrad=True),
                     {"name": "adam", "amsgrad": True}),
    "adamw-amsgrad": (lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, amsgrad=True,
                                                  weight_decay=0.1),
                      {"name": "adamw", "amsgrad": True}),
    "rmsprop": (lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, alpha=0.95, momentum=0.5,
                                              centered=True),
                {"name": "rmsprop", "alpha": 0.95, "centered": True, "momentum": 0.5}),
    "rmsprop-plain": (lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3),
                      {"name": "rmsprop"}),
    "adagrad": (lambda m: torch.optim.Adagrad(m.parameters(), lr=5e-2, lr_decay=1e-3,
                                              initial_accumulator_value=0.1),
                {"name": "adagrad", "lr_decay": 1e-3, "initial_accumulator_value": 0.1}),
    "adamw-no-decay-on-biases": (lambda m: _no_decay_groups(m, torch.optim.AdamW, lr=1e-2),
                                 {"name": "adamw", "group_weight_decays": [0.05, 0.0, 0.05, 0.0]}),
    "sgd-groups-lr-and-decay": (
        lambda m: torch.optim.SGD([{"params": list(m.parameters())[:2], "lr": 0.05},
                                   {"params": list(m.parameters())[2:], "weight_decay": 1e-3}],
                                  lr=0.1, momentum=0.9),
        {"name": "sgd", "group_lrs": [0.05, 0.1], "group_weight_decays": [0.0, 1e-3]}),
}


@pytest.mark.parametrize("case", sorted(OPTIMIZER_CASES))
def test_optimizer_recorded_and_verified(tmp_path, case):
    opt_fn, want = OPTIMIZER_CASES[case]
    model, (opt, loader) = _attach(tmp_path, opt_fn)
    _train(model, opt, loader)
    got = load_manifest(opt.proof)["spec"]["optimizer"]
    assert {k: got.get(k) for k in want} == want
    _check_proof(tmp_path, opt.proof, opt.root_digest)


def test_optimizer_spec_fields_absent_at_defaults_and_strict():
    assert set(OptimizerSpec().to_dict()) == {"name", "lr", "momentum", "nesterov",
                                              "weight_decay", "betas", "eps"}
    assert "autocast" not in StepSpec(clip_grad_norm=1.0).to_dict()
    d = OptimizerSpec(name="rmsprop", alpha=0.9).to_dict()
    assert OptimizerSpec.from_dict(d) == OptimizerSpec(name="rmsprop", alpha=0.9)
    for bad in ({**OptimizerSpec().to_dict(), "amsgrad": True},  # an option of Adam, on SGD
                {**OptimizerSpec(name="adam").to_dict(), "amsgrad": False},  # a default written
                {**OptimizerSpec(name="rmsprop").to_dict(), "alpha": 1.0}):
        with pytest.raises(ProofFormatError):
            OptimizerSpec.from_dict(bad)
    with pytest.raises(ProofFormatError):
        StepSpec.from_dict({"scaler_init_scale": 8.0})  # a GradScaler without fp16
    with pytest.raises(ProofFormatError):
        StepSpec.from_dict({"autocast": "fp8"})


def test_still_unsupported_optimizer_settings_are_refused(tmp_path):
    for opt_fn, named in (
            (lambda m: torch.optim.Adamax(m.parameters()), "not supported"),
            (lambda m: torch.optim.RMSprop(m.parameters(), maximize=True), "maximize"),
            (lambda m: torch.optim.SGD([{"params": list(m.parameters())[:2], "momentum": 0.5},
                                        {"params": list(m.parameters())[2:]}], lr=0.1,
                                       momentum=0.9), "momentum")):
        with pytest.raises(ConfigError, match=named):
            _attach(tmp_path, opt_fn)
        assert not (tmp_path / "proof").exists()


def test_hardened_bounds_cover_the_new_hyperparameters():
    assert soundness.hyperparameter_problems(
        _spec(optimizer=OptimizerSpec(name="rmsprop", alpha=0.99, momentum=0.9))) == []
    near_one = _spec(optimizer=OptimizerSpec(name="rmsprop", alpha=1 - 1e-9))
    assert any("alpha" in p for p in soundness.hyperparameter_problems(near_one))
    fast = _spec(optimizer=OptimizerSpec(name="rmsprop", momentum=0.9999))
    assert any("momentum" in p for p in soundness.hyperparameter_problems(fast))


def test_implausible_new_optimizer_state_is_rejected():
    rms = _spec(optimizer=OptimizerSpec(name="rmsprop", centered=True))
    ok = {"optim.0.step": torch.tensor(3.0), "optim.0.square_avg": torch.full((2,), 4.0),
          "optim.0.grad_avg": torch.full((2,), 1.5)}
    assert soundness.state_problem(3, ok, rms) is None
    assert "square_avg" in soundness.state_problem(
        3, {**ok, "optim.0.square_avg": torch.tensor([4.0, -1.0])}, rms)
    assert "grad_avg" in soundness.state_problem(
        3, {**ok, "optim.0.grad_avg": torch.tensor([1.5, 3.0])}, rms)
    ada = _spec(optimizer=OptimizerSpec(name="adagrad", initial_accumulator_value=0.5))
    assert "sum" in soundness.state_problem(
        2, {"optim.0.step": torch.tensor(2.0), "optim.0.sum": torch.tensor([0.6, 0.1])}, ada)
    ams = _spec(optimizer=OptimizerSpec(name="adam", amsgrad=True))
    st = {"optim.0.step": torch.tensor(1.0), "optim.0.exp_avg": torch.zeros(2),
          "optim.0.exp_avg_sq": torch.ones(2), "optim.0.max_exp_avg_sq": torch.ones(2)}
    assert soundness.state_problem(1, st, ams) is None
    assert "max_exp_avg_sq" in soundness.state_problem(
        1, {**st, "optim.0.max_exp_avg_sq": torch.tensor([1.0, 0.5])}, ams)
    # a step counter behind the checkpoint's step: only with fp16 autocast (skipped steps)
    assert "step counter" in soundness.state_problem(3, ok | {"optim.0.step": torch.tensor(2.0)},
                                                     rms)
    fp16 = rms.with_(step=StepSpec(autocast="fp16"))
    scaler = {"scaler.scale": torch.tensor(1024.0), "scaler.growth_tracker":
              torch.tensor(0, dtype=torch.int32)}
    assert soundness.state_problem(3, ok | {"optim.0.step": torch.tensor(2.0)} | scaler,
                                   fp16) is None
    assert "init_scale" in soundness.state_problem(0, scaler, fp16)
    assert "missing" in soundness.state_problem(3, ok, fp16)


def test_fp16_attach_resume_continues_with_the_checkpoints_scaler(tmp_path):
    """An interrupted fp16 run resumed from its last checkpoint: the GradScaler's scale and
    growth tracker come from it, and the proof is the uninterrupted one file for file."""
    from pol.proof.reader import inspect_proof

    def run(out, crash_at=None, resume=False):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**17, growth_interval=2)
        model, (opt, loader) = _attach(
            tmp_path, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), out=out,
            autocast="fp16", grad_scaler=scaler, resume=resume)
        for _ in range(EPOCHS - opt.recorder.t // opt.recorder.steps_per_epoch):
            for x, y in loader:
                if opt.recorder.t == crash_at:
                    opt.recorder.abort()
                    return None
                with opt.autocast():
                    loss = F.cross_entropy(model(x), y)
                opt.backward(loss)
                opt.step(loss=loss)
        return opt

    full = run(tmp_path / "full")
    assert run(tmp_path / "cut", crash_at=10) is None  # after checkpoint 8, mid-epoch
    cut = run(tmp_path / "cut", resume=True)
    assert float(cut.scaler._scale) == float(full.scaler._scale)
    assert inspect_proof(tmp_path / "cut")["files"] == inspect_proof(tmp_path / "full")["files"]
    _check_proof(tmp_path, cut.proof)


def test_fp16_run_whose_first_steps_are_all_skipped(tmp_path):
    """A scale far too large: the first steps overflow and are skipped until the scale has
    backed off (whole segments move nothing). Skipped steps are recorded at lr 0, so the
    verifier's data-dependence probe takes the first step that moved; VALID and exact."""
    from pol.proof.reader import open_proof
    scaler = torch.amp.GradScaler("cpu", init_scale=1e8, growth_interval=2)
    model, (opt, loader) = _attach(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1,
                                                                       momentum=0.9),
                                   autocast="fp16", grad_scaler=scaler)
    _train(model, opt, loader)
    lrs = open_proof(opt.proof).lrs
    assert (lrs[:K] == 0).all() and (lrs > 0).any()  # the first segment: every step skipped
    _check_proof(tmp_path, opt.proof, opt.root_digest)


def test_fp16_with_a_declared_schedule_is_refused(tmp_path):
    from pol.spec import ScheduleSpec
    with pytest.raises(ConfigError, match="declared schedule with fp16"):
        _attach(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), autocast="fp16",
                schedule=ScheduleSpec(name="constant"))
    assert not (tmp_path / "proof").exists()


def test_recording_on_a_gpu_needs_deterministic_algorithms(monkeypatch):
    """The check the Recorder and attach run first: on a GPU without deterministic algorithms a
    proof replays only approximately, so recording is refused (unless allowed); the CPU and a
    GPU with them on pass."""
    from pol.step.runtime import check_recordable_numerics
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    with pytest.raises(ConfigError, match="use_deterministic_algorithms.*allow_nondeterministic"):
        check_recordable_numerics("cuda")
    check_recordable_numerics("cuda", allow_nondeterministic=True)
    check_recordable_numerics("cpu")
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    check_recordable_numerics("cuda")


def test_a_scheduler_that_cycles_momentum_is_refused(tmp_path):
    """OneCycleLR's default cycle_momentum changes Adam's betas every step; pol records only the
    lr per step, so the run is stopped with a ConfigError naming the setting (not recorded into
    a proof the verifier would reject); with cycle_momentum=False it records and verifies."""
    for cycle in (True, False):
        model, (opt, loader) = _attach(
            tmp_path / str(cycle), lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=100,
                                                    cycle_momentum=cycle)

        def run():
            for _ in range(EPOCHS):
                for x, y in loader:
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step(loss=loss)
                    sched.step()
        if cycle:
            with pytest.raises(ConfigError, match="'betas'.*cycle_momentum=False"):
                run()
        else:
            run()
            _check_proof(tmp_path / str(cycle), opt.proof, opt.root_digest)
