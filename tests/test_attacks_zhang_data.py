"""zhang-data (Zhang et al. 2022, Attacks I/II with per-step data perturbation) on iris-logreg.

Recorded verdicts (target: iris-logreg, 3 epochs, k = 5, seed 1; T' = T = 24, forged dataset of
24 × 16 perturbed samples, one claimed epoch):
  paper policy: ACCEPTED — every replayed segment lands within δ (the published finding);
  hardened: REJECTED by "init regeneration" only (the rank-matched, class-sum-shifted W_0 is not
  the seed's init; its Spearman ρ stays under the rank-correlation bound, and the replayed
  segments are bitwise exact because the checkpoints are the chain of the verifier's own update()).
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
    res = attack_zhang_data(base / "target", base / "spoof", maxiter=40, measure_honest=False)
    return res, base / "spoof", base / "spoof-data.npz"


def _failed(report) -> set[str]:
    return {c.name for c in report.checks if c.failed}


def test_forged_proof_and_dataset(spoof):
    res, out, npz = spoof
    assert npz.is_file() and any(str(npz) in n for n in res.notes)
    m = open_proof(out).manifest
    assert m.spec.data.name == "user" and m.total_steps == 24 and m.k == 5
    with np.load(npz) as z:
        assert z["x"].shape == (24 * 16, 4) and len(z["y"]) == m.spec.data.size == 384
    assert res.grad_evals > res.honest_grad_evals == 24
    r = res.settings["residuals"]
    assert r["final_gap"] < 0.5 * r["step_norm"]


def test_paper_policy_accepts(spoof):
    _, out, npz = spoof
    rep = verify(out, data=str(npz), policy="paper", entropy=b"x")
    assert rep.valid, _failed(rep)


def test_hardened_rejects_by_init_regeneration(spoof):
    _, out, npz = spoof
    rep = verify(out, data=str(npz), entropy=b"x")
    assert not rep.valid
    assert "init regeneration" in _failed(rep)
