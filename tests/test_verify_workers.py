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


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_start_methods_same_report(mlp_proof, proof_copy, monkeypatch, method):
    """Forked workers (the parent's own state) and forkserver workers (state rebuilt from the job,
    data shared through it) replay exactly as the parent does, top-Q and --all."""
    import pol.verifier.parallel as par
    proof = proof_copy(mlp_proof)
    perturb_checkpoint(proof, 50, norm=0.5)
    monkeypatch.setattr(par, "FORCE_START_METHOD", method)
    for kw in ({"all_segments": True}, {"entropy": b"fixed", "q": 2}):
        one = verify(proof, **kw)
        two = verify(proof, workers=2, **kw)
        assert two.segments == one.segments and len(one.segments) > 2
        assert _checks(two) == _checks(one)


def test_workers_reload_large_data(mlp_proof, mlp_report_all, monkeypatch):
    """Above SHARE_DATA_MAX_BYTES a non-forked worker reloads the data and checks its digest."""
    import pol.verifier.parallel as par
    monkeypatch.setattr(par, "FORCE_START_METHOD", "forkserver")
    monkeypatch.setattr(par, "SHARE_DATA_MAX_BYTES", 0)
    two = verify(mlp_proof, all_segments=True, workers=2)
    assert two.segments == mlp_report_all.segments
    assert _checks(two) == _checks(mlp_report_all)


def test_workers_integrity_failure_closes_pool(mlp_proof, proof_copy):
    """--all starts replays before the streaming pass: a checkpoint that fails its digest still
    gives the integrity report (no replay results), and the pool is closed."""
    import multiprocessing

    from pol.proof import format as fmt
    proof = proof_copy(mlp_proof)
    m = json.loads((proof / "manifest.json").read_text())
    last = m["checkpoints"][-1]
    f = proof / fmt.checkpoint_name(last)
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    one = verify(proof, all_segments=True)
    two = verify(proof, all_segments=True, workers=2)
    assert not two.valid and _checks(two) == _checks(one) and not two.segments
    assert any(c.name == "checkpoint digests" and c.status == "fail" for c in two.checks)
    assert not multiprocessing.active_children()


def test_no_fork_on_a_gpu_build_of_torch(monkeypatch):
    """A CUDA build's autograd starts device threads at the first backward; a forked child then
    refuses autograd, so such builds start workers through the forkserver."""
    import torch

    from pol.verifier import parallel
    monkeypatch.setattr(parallel, "FORCE_START_METHOD", None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert parallel.start_method("cpu", threads=1) != "fork"


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_read_compressed_proofs(tmp_path, monkeypatch, method):
    """Format v2 (lossless codec): workers decode their segments' checkpoints themselves and
    replay bitwise exactly, as in one process."""
    import pol.verifier.parallel as par
    from pol.prover.trainer import train_task
    p = tmp_path / "z"
    train_task("iris-logreg", p, epochs=2, k=3, seed=5, compress=True)
    monkeypatch.setattr(par, "FORCE_START_METHOD", method)
    one = verify(p, all_segments=True)
    two = verify(p, all_segments=True, workers=2)
    assert one.valid and two.valid
    assert two.segments == one.segments and all(s.exact for s in two.segments)
