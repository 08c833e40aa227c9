"""`verify --workers N`: segments replayed in spawned worker processes give exactly the report that
an in-process replay gives (same segments, same order, same distances, same checks)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from pol.demo import perturb_checkpoint
from pol.errors import ConfigError
from pol.verifier import verify


def _checks(report) -> list[tuple[str, str, str]]:
    return [(c.name, c.status, c.reason) for c in report.checks]


def test_workers_perturbed_proof_same_report(mlp_proof, proof_copy):
    proof = proof_copy(mlp_proof)
    perturb_checkpoint(proof, 50, norm=0.5)
    one = verify(proof, all_segments=True)
    two = verify(proof, all_segments=True, workers=2)
    assert not one.valid and not two.valid
    assert two.segments == one.segments
    assert [s.start for s in two.segments] == sorted(s.start for s in two.segments)
    assert any(not s.passed for s in two.segments)
    assert _checks(two) == _checks(one)
    assert two.stats["replayed_steps"] == one.stats["replayed_steps"]


def test_cli_workers_honest_same_segments(mlp_proof, mlp_report_all, tmp_path):
    out = tmp_path / "report.json"
    r = run_cli("verify", mlp_proof, "--all", "--workers", "2", "--json", out)
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    want = json.loads(mlp_report_all.to_json())
    assert got["verdict"] == "valid"
    assert got["segments"] == want["segments"]
    assert len(got["segments"]) == len(mlp_report_all.segments) > 2
    assert [(c["name"], c["status"], c["reason"]) for c in got["checks"]] == \
        [(c["name"], c["status"], c["reason"]) for c in want["checks"]]


def test_workers_must_be_positive(mlp_proof):
    with pytest.raises(ConfigError, match="workers"):
        verify(mlp_proof, workers=0)
    r = run_cli("verify", mlp_proof, "--workers", "0")
    assert r.exit_code == 2
