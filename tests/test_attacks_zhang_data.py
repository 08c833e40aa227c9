"""zhang-data (Zhang et al. 2022, Attacks I/II with per-step data perturbation) on iris-logreg.

Recorded verdicts (target: iris-logreg, 3 epochs, k = 5, seed 1, T = 24; default cheap settings:
T' = T/4 = 6 steps, forged dataset of 6 × 16 perturbed samples, one claimed epoch, each step's
L-BFGS stopped at relative residual 0.4 (last step 0.3), warm-started, re-aimed at W_T):
  paper policy: ACCEPTED — every replayed segment lands within δ (the published finding), also
  with every segment replayed;
  hardened: REJECTED by "init regeneration" (the rank-matched, class-sum-shifted W_0 is not the
  seed's init; its Spearman ρ stays under the rank-correlation bound) and by exact mode ("replay":
  the checkpoints are the solver's float32 predictions, not bitwise update() results).
Cost: 48 solver calls = 2.0× honest with the default forger seed; 0.58–2.6× (median 0.6×) over
forger seeds 1–6 — was 43× with full convergence (maxiter 40, T' = T).
"""

from __future__ import annotations

import numpy as np
import pytest

from pol.proof.reader import open_proof
from pol.verifier import verify


@pytest.fixture(scope="module")
def spoof(tmp_path_factory):
    from pol.attacks.zhang_data import attack_zhang_data
    from pol.prover.trainer import train_task
    base = tmp_path_factory.mktemp("zhang-data")
    train_task("iris-logreg", base / "target", epochs=3, k=5, seed=1, overwrite=True)
    res = attack_zhang_data(base / "target", base / "spoof", measure_honest=False)
    return res, base / "spoof", base / "spoof-data.npz"


def _failed(report) -> set[str]:
    return {c.name for c in report.checks if c.failed}


def test_forged_proof_and_dataset(spoof):
    res, out, npz = spoof
    assert npz.is_file() and any(str(npz) in n for n in res.notes)
    m = open_proof(out).manifest
    assert m.spec.data.name == "user" and m.total_steps == 6 and m.k == 5
    with np.load(npz) as z:
        assert z["x"].shape == (6 * 16, 4) and len(z["y"]) == m.spec.data.size == 96
    assert res.honest_grad_evals == 24 and res.grad_evals < 3 * 24  # was ≈ 43× (1036 calls)
    r = res.settings["residuals"]
    assert r["final_gap"] < 1.5 * r["step_norm"]


def test_paper_policy_accepts(spoof):
    _, out, npz = spoof
    for kw in ({}, {"all_segments": True}):
        rep = verify(out, data=str(npz), policy="paper", entropy=b"x", **kw)
        assert rep.valid, (kw, _failed(rep))


def test_cheap_settings_below_honest_cost_for_some_forger_seed(tmp_path, spoof):
    """The forger picks its seed; with seed 1 the cheap settings cost < 1× honest (14 calls)."""
    from pol.attacks.zhang_data import attack_zhang_data
    target = spoof[1].parent / "target"
    res = attack_zhang_data(target, tmp_path / "s1", seed=1, measure_honest=False)
    assert res.cost_ratio < 1.0, res.notes
    rep = verify(tmp_path / "s1", data=str(tmp_path / "s1-data.npz"), policy="paper")
    assert rep.valid, _failed(rep)


def test_hardened_rejects_by_init_regeneration(spoof):
    _, out, npz = spoof
    rep = verify(out, data=str(npz), entropy=b"x")
    assert not rep.valid
    assert "init regeneration" in _failed(rep)
