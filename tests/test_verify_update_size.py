"""The hardened verifier's "update size" check: a replay proves nothing when every claimed update
is smaller than the tolerance δ (ATTACKS.md: ‖W_{t+k} − W_t‖ ≥ c·δ)."""

import pytest

from pol.attacks import run_attack
from pol.prover.trainer import train_task
from pol.verifier import verify


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    p = tmp_path_factory.mktemp("us") / "mlp"
    # not exact: auto δ (fp16 trained on from its unrounded state, as replay on other hardware)
    train_task("digits-mlp", p, epochs=1, k=10, seed=3, precision="fp16",
               continue_from_stored=False)
    return p


def _check(report, name="update size"):
    return next(c for c in report.checks if c.name == name)


def test_honest_tolerant_proof_clears_update_size(honest):
    r = verify(honest)
    c = _check(r)
    assert r.valid and c.status == "pass" and c.value >= 1.0, r.render()


def test_delta_larger_than_every_update_fails(honest):
    r = verify(honest, delta={"l2": 1e6})
    c = _check(r)
    assert c.failed and not r.valid and c.value < 1.0, r.render()
    # the paper's verifier has no such check and accepts the same δ
    assert verify(honest, delta={"l2": 1e6}, policy="paper").valid


def test_threshold_is_configurable(honest):
    r = verify(honest, update_size_min=0.0)
    assert _check(r).status == "pass"
    r = verify(honest, update_size_min=1e9)
    assert _check(r).failed and not r.valid


def test_tiny_step_spoof_fails_update_size(tmp_path):
    target = tmp_path / "iris"
    train_task("iris-logreg", target, epochs=3, k=5, seed=1)
    spoof = tmp_path / "fang"
    # claims a CUDA device, so the CPU verifier cannot use exact mode and falls back to auto δ
    run_attack("fang", target, spoof, measure_honest=False, claim_device="cuda")
    r = verify(spoof, entropy=b"pinned")
    assert not r.valid and _check(r).failed, r.render()


def test_exact_mode_passes_trivially(tmp_path):
    p = tmp_path / "iris"
    train_task("iris-logreg", p, epochs=2, k=5, seed=2)
    r = verify(p)
    assert r.valid and _check(r).status == "pass" and r.deltas["l2"] == 0
