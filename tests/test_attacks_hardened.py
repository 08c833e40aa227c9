"""Pin the verdict of every attack under both verifiers on a small task (iris-logreg), so that a
regression in a defence fails CI. Findings against the paper's verifier are pinned too: they are
the published weaknesses that the hardened verifier exists to close."""

import pytest

from pol.attacks import run_attack
from pol.prover.trainer import train_task
from pol.verifier import verify

ENTROPY = b"pinned"

# attack, settings, paper verdict (True = accepted), checks the hardened verifier must fail
CASES = [
    ("retrain", {}, False, {"replay"}),
    ("concatenate", {}, False, {"replay"}),
    ("directed-retrain", {"lam": 1.0}, False, {"replay"}),
    ("finetune", {}, True, {"init regeneration"}),
    ("fineprune", {"prune": 0.5}, True, {"init regeneration"}),
    ("inverse-gradient", {"method": "newton_krylov"}, True, {"init regeneration"}),
    ("inverse-gradient", {"method": "newton_krylov", "claim_device": "cuda"}, True,
     {"init regeneration"}),
    ("zhang-init", {}, False, {"init regeneration", "relative error"}),
    ("fang", {}, False, {"relative error"}),
    ("fang", {"anchor_lr": 0.5}, True, {"relative error"}),
    ("fang", {"anchor_lr": 0.5, "claim_device": "cuda"}, True, {"relative error"}),
]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    p = tmp_path_factory.mktemp("target") / "iris"
    train_task("iris-logreg", p, epochs=3, k=5, seed=1)
    return p


@pytest.mark.parametrize("name,settings,paper_accepts,hardened_fails", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_attack_verdicts_are_pinned(target, tmp_path, name, settings, paper_accepts,
                                    hardened_fails):
    spoof = tmp_path / "spoof"
    res = run_attack(name, target, spoof, measure_honest=False, **settings)
    assert res.grad_evals >= 0
    paper = verify(spoof, policy="paper", entropy=ENTROPY)
    hard = verify(spoof, entropy=ENTROPY)
    assert paper.valid == paper_accepts, paper.render()
    assert not hard.valid, hard.render()
    assert hardened_fails <= {c.name for c in hard.checks if c.failed}, hard.render()


def test_honest_proofs_pass_both_verifiers(tmp_path):
    for seed in range(3):
        p = tmp_path / f"h{seed}"
        train_task("iris-logreg", p, epochs=3, k=5, seed=seed)
        assert verify(p, policy="paper").valid
        assert verify(p).valid
