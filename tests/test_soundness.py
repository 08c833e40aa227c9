"""Each channel of the zero-gradient forgery (issue 10 §1) is closed by a named check.

The forged proofs here change one thing each and recompute every digest, as a forger would, so
that only the semantic check under test can catch them.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.verifier import verify
from pol.verifier import soundness

from conftest import check, checkpoint_path, failed_checks, load_manifest


def _edit_checkpoint(proof, t, fn) -> None:
    path = checkpoint_path(proof, t)
    tensors = load_file(str(path))
    fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    rehash_manifest(proof)


def _edit_manifest(proof, fn) -> None:
    body = load_manifest(proof)
    fn(body)
    body["root_digest"] = fmt.root_digest(body)
    (proof / fmt.MANIFEST).write_text(json.dumps(body, indent=1, sort_keys=True))


def _edit_npy(proof, name, fn) -> None:
    arr = np.load(proof / name, allow_pickle=False).copy()
    arr = fn(arr)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    (proof / name).write_bytes(buf.getvalue())
    rehash_manifest(proof)


# --------------------------------------------------------------------- optimizer state channel

def test_optimizer_state_in_checkpoint0_fails(mlp_proof, proof_copy):
    # a zero momentum buffer replays exactly like none (buf = 0.9·0 + g = g), so only the check
    # of checkpoint 0 itself can see that state was put there
    p = proof_copy(mlp_proof)
    ref = load_file(str(checkpoint_path(p, load_manifest(p)["checkpoints"][1])))
    bufs = {k: torch.zeros_like(v) for k, v in ref.items() if k.endswith("momentum_buffer")}
    assert bufs
    _edit_checkpoint(p, 0, lambda t: t.update(bufs))
    r = verify(p, all_segments=True)
    assert "initial optimizer state" in failed_checks(r)
    assert check(r, "integrity").status == "pass"


def test_adam_step_counter_not_t_fails(cnn_proof, proof_copy):
    p = proof_copy(cnn_proof)
    t = load_manifest(p)["checkpoints"][2]
    _edit_checkpoint(p, t, lambda s: s.update(
        {k: v + 1000 for k, v in s.items() if k.endswith(".step")}))
    r = verify(p)
    assert "optimizer state" in failed_checks(r)
    assert "step counter" in check(r, "optimizer state").reason


def test_adam_moment_beyond_any_gradient_fails(cnn_proof, proof_copy):
    p = proof_copy(cnn_proof)
    t = load_manifest(p)["checkpoints"][2]

    def blow(s):
        k = next(k for k in s if k.endswith(".exp_avg"))
        s[k] = s[k].clone()
        s[k].view(-1)[0] = 1e6
    _edit_checkpoint(p, t, blow)
    r = verify(p)
    assert "optimizer state" in failed_checks(r)
    assert "exceeds what any gradients can produce" in check(r, "optimizer state").reason


def test_the_optimizer_state_check_at_once_agrees_with_the_per_tensor_one():
    """`state_problem`'s fast form (all tensors at once, in the stored precision with a margin)
    passes honest Adam state without the per-tensor form, and never passes a state that form
    rejects: every forged state below reaches it (its message)."""
    from types import SimpleNamespace
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (300, 40)]
    opt = torch.optim.Adam(ps, lr=1e-3)
    for _ in range(3):
        for q in ps:
            q.grad = torch.randn_like(q)
        opt.step()
    state = {f"optim.{i}.{k}": v.clone() for i, q in enumerate(ps)
             for k, v in opt.state[q].items()}
    spec = SimpleNamespace(optimizer=SimpleNamespace(name="adam", betas=(0.9, 0.999)),
                           step=None)
    keys = soundness.optimizer_entries(state)
    C = soundness.moment_bound(0.9, 0.999)
    assert soundness._plausible_at_once(3, state, keys, spec.optimizer, C)
    assert soundness.state_problem(3, state, spec) is None
    m = state["optim.1.exp_avg"]
    edge = C * (1 + soundness.BOUNDS.moment_slack) * (state["optim.1.exp_avg_sq"][5].double()
                                                      .sqrt() + 2 * 2.0 ** -63)
    forged = {
        "NaN/Inf": {"optim.0.exp_avg": torch.where(torch.arange(300) == 7, torch.nan,
                                                   state["optim.0.exp_avg"])},
        "step counter": {"optim.1.step": torch.tensor(4.0)},
        "exceeds what any gradients": {"optim.1.exp_avg": m.index_fill(0, torch.tensor([5]),
                                                                       float(edge) * 1.001)},
        "negative entries": {"optim.0.exp_avg_sq": -state["optim.0.exp_avg_sq"]},
    }
    for why, change in forged.items():
        bad = state | change
        assert not soundness._plausible_at_once(3, bad, keys, spec.optimizer, C), why
        assert why in soundness.state_problem(3, bad, spec), why
    # finite values whose sum overflows: not decided at once, passed by the per-tensor form
    big = state | {"optim.0.exp_avg_sq": torch.full((300,), 3e38),
                   "optim.0.exp_avg": torch.zeros(300)}
    assert not soundness._plausible_at_once(3, big, keys, spec.optimizer, C)
    assert soundness.state_problem(3, big, spec) is None


def test_moment_bound_holds_for_honest_adam():
    # |m| ≤ C·√v after any gradient sequence: drive Adam with wild gradients and check
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.999))
    C = soundness.moment_bound(0.9, 0.999)
    worst = 0.0
    for i in range(300):
        p.grad = torch.randn(1000) * (10.0 ** torch.randint(-6, 6, (1000,)).float())
        if i % 7 == 0:
            p.grad = torch.full((1000,), 5.0)  # a run of identical gradients is the extreme case
        opt.step()
        st = opt.state[p]
        worst = max(worst, float((st["exp_avg"].abs() / st["exp_avg_sq"].sqrt()).max()))
    assert worst <= C


def test_optimizer_state_that_replays_elsewhere_fails_in_exact_mode(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    t = load_manifest(p)["checkpoints"][3]

    def nudge(s):
        k = next(k for k in s if k.endswith("momentum_buffer"))
        s[k] = s[k] * (1 + 1e-3)
    _edit_checkpoint(p, t, nudge)
    r = verify(p, all_segments=True)
    assert not r.valid
    assert "optimizer replay" in failed_checks(r)
    assert check(r, "tolerance").status == "pass"  # exact mode


# ------------------------------------------------------------------------------ recorded losses

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_recorded_loss_fails(mlp_proof, proof_copy, bad):
    p = proof_copy(mlp_proof)

    def spoil(a):
        a[5] = bad
        return a
    _edit_npy(p, fmt.LOSSES, spoil)
    r = verify(p, all_segments=True)
    assert "loss replay" in failed_checks(r)
    assert "NaN or infinite" in check(r, "loss replay").reason


# ------------------------------------------------------------------------------ epoch structure

def test_one_long_epoch_fails(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)

    def one_epoch(b):
        b["steps_per_epoch"] = b["total_steps"]
        b["epochs"] = 1
        b["spec"]["epochs"] = 1
    _edit_manifest(p, one_epoch)
    r = verify(p)
    assert "epoch structure" in failed_checks(r)
    assert "steps_per_epoch" in check(r, "epoch structure").reason


def test_sample_used_twice_in_an_epoch_fails(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)

    def dup(a):
        a[1, 0] = a[0, 0]
        return a
    _edit_npy(p, fmt.INDICES, dup)
    r = verify(p)
    assert "epoch structure" in failed_checks(r)
    assert "twice" in check(r, "epoch structure").reason


def test_padding_before_the_last_batch_fails(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)

    def pad(a):
        a[3, -1] = -1
        return a
    _edit_npy(p, fmt.INDICES, pad)
    r = verify(p)
    assert "epoch structure" in failed_checks(r)


def test_epoch_structure_of_honest_proofs(mlp_proof, iris_proof, cnn_proof):
    from pol.proof.reader import open_proof
    for proof in (mlp_proof, iris_proof, cnn_proof):
        assert soundness.epoch_structure_problem(open_proof(proof)) is None


# ------------------------------------------------------------------------- hyperparameter bounds

def test_beta_that_rounds_to_one_fails(cnn_proof, proof_copy):
    p = proof_copy(cnn_proof)
    _edit_manifest(p, lambda b: b["spec"]["optimizer"].update(betas=[0.9, 0.999999999]))
    r = verify(p)
    assert "hyperparameters" in failed_checks(r)
    assert "beta2" in check(r, "hyperparameters").reason


def test_hyperparameter_bounds_accept_builtin_tasks():
    from types import SimpleNamespace

    from pol.spec import StepSpec
    from pol.tasks import TASKS
    for task in TASKS.values():
        spec = SimpleNamespace(optimizer=task.optimizer, step=StepSpec())
        assert soundness.hyperparameter_problems(spec) == [], task.name


# --------------------------------------------------------------------------- tolerance reported

def test_tolerant_mode_is_reported_and_can_be_refused(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    _edit_manifest(p, lambda b: b["spec"].update(device="cuda", deterministic=True))
    r = verify(p)
    tol = check(r, "tolerance")
    assert tol.status == "warn" and "tolerant mode" in tol.reason and "cuda" in tol.reason
    r2 = verify(p, require_exact=True)
    assert "tolerance" in failed_checks(r2)


def test_require_exact_on_the_command_line(mlp_proof, proof_copy):
    from conftest import run_cli
    p = proof_copy(mlp_proof)
    assert run_cli("verify", str(p), "--require-exact").exit_code == 0  # made here: exact mode
    _edit_manifest(p, lambda b: b["spec"].update(device="cuda", deterministic=True))
    r = run_cli("verify", str(p), "--require-exact")
    assert r.exit_code == 1 and "tolerance" in r.output


def test_batch_order_other_than_the_seeds_fails_where_the_spec_says_seed(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    assert load_manifest(p)["spec"]["data"]["order"] == "seed"

    def swap(a):
        a[[1, 2]] = a[[2, 1]]
        return a
    _edit_npy(p, fmt.INDICES, swap)  # still a permutation; hashes swapped along
    _edit_npy(p, fmt.BATCH_HASHES, swap)
    r = verify(p)
    assert "epoch structure" in failed_checks(r)
    assert "seed" in check(r, "epoch structure").reason


def _record_user_loop(out, make_opt, scheduler=None, k=1, epochs=1):
    from conftest import USER_MODEL_KWARGS, make_user_data, record_until, user_model
    from pol.prover.recorder import Recorder
    from pol.spec import ModelSpec
    x, y = make_user_data(n=96)
    model = user_model()
    opt = make_opt(model)
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y),
                   model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                   epochs=epochs, k=k, init="from-seed")
    record_until(rec, model, opt, x, y, scheduler=scheduler(opt) if scheduler else None)
    return x, y


def test_honest_parameter_groups_with_their_own_lrs_verify(tmp_path):
    """Groups that differ in lr replay with their own lrs (they used to replay with the first
    group's lr and fail)."""
    from conftest import save_npz

    def two_groups(model):
        ps = list(model.parameters())
        return torch.optim.SGD([{"params": ps[:2], "lr": 0.1}, {"params": ps[2:], "lr": 0.01}],
                               lr=0.1, momentum=0.9)
    x, y = _record_user_loop(tmp_path / "p", two_groups, k=2, epochs=2)
    r = verify(tmp_path / "p", data=str(save_npz(tmp_path / "d.npz", x, y)), all_segments=True)
    assert r.valid and all(s.exact for s in r.segments), r.render()
    assert load_manifest(tmp_path / "p")["spec"]["optimizer"]["group_lrs"] == [0.1, 0.01]


def test_groups_out_of_model_order_are_refused(tmp_path):
    from pol.errors import ConfigError

    def reversed_groups(model):
        ps = list(model.parameters())
        return torch.optim.SGD([{"params": ps[2:]}, {"params": ps[:2]}], lr=0.1)
    with pytest.raises(ConfigError, match="model.parameters\\(\\) order"):
        _record_user_loop(tmp_path / "p", reversed_groups)


def test_warm_up_from_lr_zero_verifies(tmp_path):
    """A scheduler whose lr is 0 at step 0: that step cannot depend on its data, so data
    dependence is probed at the segment's first step with a positive lr (k = 1: a segment of
    that one step alone has nothing to probe)."""
    from conftest import save_npz
    for k in (1, 3):
        out = tmp_path / f"k{k}"
        x, y = _record_user_loop(
            out, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
            scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: min(t / 4, 1.0)),
            k=k)
        r = verify(out, data=str(save_npz(tmp_path / "d.npz", x, y)), all_segments=True)
        assert r.valid, r.render()
        assert check(r, "data dependence").status == "pass"


def test_data_dependence_bound_is_any_movement_where_the_segment_replays_bitwise():
    """An honest step whose gradient is small against SGD's momentum moves by 2‖g‖ ÷ ‖μm + g‖
    of its update: 0.0004–0.0006 was measured on honest, bitwise-exact digits-mlp segments, below
    the tolerant bound 1e-3. Replayed bitwise, any movement proves the gradient was computed; an
    absorbed gradient (0) and an unmeasured one (NaN) fail either way."""
    from types import SimpleNamespace as Seg
    from pol.verifier.checks.replay import flip_passes
    b = soundness.BOUNDS
    assert flip_passes(Seg(exact=True, flip=4e-4), b)
    assert not flip_passes(Seg(exact=False, flip=4e-4), b)
    assert flip_passes(Seg(exact=False, flip=b.flip_min), b)
    for exact in (True, False):
        assert not flip_passes(Seg(exact=exact, flip=0.0), b)
        assert not flip_passes(Seg(exact=exact, flip=float("nan")), b)
