"""Linear lr warm-up is part of the schedule: recorded, checked by the verifier, and absent from
the spec of proofs that do not use it (older proofs keep their bytes and digests)."""

import pytest

from pol.errors import ProofFormatError
from pol.prover.trainer import train_task
from pol.spec import ScheduleSpec, TrainingSpec
from pol.tasks import build_spec
from pol.verifier import verify


def test_warmup_scales_the_first_steps():
    s = ScheduleSpec(name="multistep", milestones=(100,), gamma=0.1, warmup_steps=4)
    assert [s.lr_at(0.4, t, 200) for t in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert s.lr_at(0.4, 150, 200) == pytest.approx(0.04)
    assert ScheduleSpec(name="constant").lr_at(0.4, 0, 10) == 0.4


def test_spec_round_trip_and_old_specs_unchanged():
    spec, _, _ = build_spec("iris-logreg", warmup=7)
    assert spec.schedule.warmup_steps == 7
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    plain, _, _ = build_spec("iris-logreg")
    assert "warmup_steps" not in plain.to_dict()["schedule"]
    bad = spec.to_dict()
    bad["schedule"]["warmup_steps"] = -1
    with pytest.raises(ProofFormatError, match="warmup_steps"):
        TrainingSpec.from_dict(bad)


def test_proof_with_warmup_verifies_and_a_wrong_lr_does_not(tmp_path):
    p = tmp_path / "w"
    r = train_task("iris-logreg", p, epochs=2, k=4, warmup=5)
    assert r.spec.schedule.warmup_steps == 5
    rep = verify(p)
    assert rep.valid, rep.render()
    lr_check = next(c for c in rep.checks if c.name == "learning rates")
    assert lr_check.status == "pass"
