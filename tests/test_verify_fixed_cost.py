"""A verification's fixed cost: the verifier's data and its commitment are checked on a thread
while the step context is built, and the first checkpoint is read meanwhile; no replay starts
before the commitment check passed, a wrong dataset still stops the verification (whatever the
context's build did), the report's checks keep their order; no scipy.stats import before the first
replayed step."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from pol.errors import ProofFormatError
from pol.verifier import core, verify
from pol.verifier import parallel as par
from pol.verifier.checks import inputs


@pytest.fixture
def events(monkeypatch):
    """Records the commitment check (made slow: it must still come first) and every replay."""
    seen: list[str] = []
    commit, replay = inputs.dataset_commitment, par.replay_segment

    def slow_commitment(*a, **kw):
        time.sleep(0.3)
        seen.append("commitment")
        return commit(*a, **kw)

    def replay_logged(*a, **kw):
        seen.append("replay")
        return replay(*a, **kw)
    monkeypatch.setattr(inputs, "dataset_commitment", slow_commitment)
    monkeypatch.setattr(par, "replay_segment", replay_logged)
    return seen


def _wrong_data(monkeypatch):
    load = core.load_verifier_data

    def other(spec, data):
        d = load(spec, data)
        y = d.y.copy()
        y[0] = (y[0] + 1) % 10
        return type(d)(d.x, y)
    monkeypatch.setattr(core, "load_verifier_data", other)


def test_commitment_before_any_replay(mlp_proof, events):
    threads = []
    build = core.build_step_context

    def build_noting_threads(*a, **kw):
        threads.append(sorted(t.name for t in threading.enumerate()))
        return build(*a, **kw)
    core.build_step_context, saved = build_noting_threads, build
    try:
        r = verify(mlp_proof, entropy=b"e")
    finally:
        core.build_step_context = saved
    assert r.valid
    assert events[0] == "commitment" and events.count("replay") >= 1
    assert "pol-verifier-data" in threads[0]  # the data was checked beside the build
    assert not [t for t in threading.enumerate() if t.name.startswith("pol-verifier-data")]


def test_wrong_data_stops_before_the_context_matters(mlp_proof, events, monkeypatch):
    _wrong_data(monkeypatch)
    r = verify(mlp_proof, entropy=b"e")
    assert [c.name for c in r.checks] == ["integrity", "dataset commitment"]
    assert r.checks[-1].failed and "replay" not in events

    def unbuildable(*a, **kw):
        raise ProofFormatError("the proof's model cannot be built: no")
    monkeypatch.setattr(core, "build_step_context", unbuildable)
    r = verify(mlp_proof, entropy=b"e")  # the data's verdict, not the context's error
    assert [c.name for c in r.checks] == ["integrity", "dataset commitment"]


def test_unbuildable_context_raises_once_the_data_passed(mlp_proof, monkeypatch):
    def unbuildable(*a, **kw):
        raise ProofFormatError("the proof's model cannot be built: no")
    monkeypatch.setattr(core, "build_step_context", unbuildable)
    with pytest.raises(ProofFormatError, match="cannot be built"):
        verify(mlp_proof, entropy=b"e")


def test_data_errors_are_raised(mlp_proof, monkeypatch):
    def missing(spec, data):
        raise ProofFormatError("no such dataset here")
    monkeypatch.setattr(core, "load_verifier_data", missing)
    with pytest.raises(ProofFormatError, match="no such dataset"):
        verify(mlp_proof, entropy=b"e")


def test_checks_keep_their_order(mlp_proof, mlp_report_all):
    names = [c.name for c in mlp_report_all.checks]
    assert names[:5] == ["integrity", "dataset commitment", "learning rates", "hyperparameters",
                         "epoch structure"]


def test_first_checkpoint_read_early_still_checked(mlp_proof, proof_copy):
    """Checkpoint 0 is read beside the model's build; a bad digest is still reported."""
    from conftest import checkpoint_path
    bad = proof_copy(mlp_proof)
    p = checkpoint_path(bad, 0)
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1
    p.write_bytes(bytes(raw))
    r = verify(bad, entropy=b"e")
    c = [c for c in r.checks if c.name == "checkpoint digests"]
    assert c and c[0].failed and "SHA-256" in c[0].reason and not r.valid


_FIRST_REPLAY = """
import json, sys
import pol.verifier.parallel as par
from pol.cli import main
seen = []
replay = par.replay_segment
def first(*a, **kw):
    if not seen:
        seen.append(sorted(m for m in ("scipy.stats",) if m in sys.modules))
    return replay(*a, **kw)
par.replay_segment = first
try:
    main(["verify", sys.argv[1], "--data", sys.argv[2]], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(seen))
"""


def test_no_scipy_stats_before_the_first_replay(user_proof):
    out = subprocess.run([sys.executable, "-c", _FIRST_REPLAY, str(user_proof.proof),
                          str(user_proof.npz)],
                         capture_output=True, text=True, check=True, timeout=120)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen and "scipy.stats" not in seen[0]


def test_a_small_proofs_checkpoints_are_read_once_even_for_random_segments(mlp_proof,
                                                                             monkeypatch):
    """Top-Q with the hardened policy's random segments (chosen after the pass, once their
    epoch's top-Q is known): a small model's checkpoints stay in memory (`KEEP_BYTES`), so each
    is read from disk once; with nothing kept beyond the last two, the random segments read
    theirs again."""
    from pol.proof.reader import Proof
    from pol.verifier import session as sess
    reads: list[int] = []
    orig = Proof.load_checkpoint

    def counted(self, t):
        reads.append(t)
        return orig(self, t)
    monkeypatch.setattr(Proof, "load_checkpoint", counted)
    rep = verify(mlp_proof, entropy=b"fixed", policy="hardened")
    assert rep.valid and any(s.why == "random" for s in rep.segments)
    assert sorted(reads) == sorted(set(reads))  # none read twice
    reads.clear()
    monkeypatch.setattr(sess, "KEEP_BYTES", 0)
    assert verify(mlp_proof, entropy=b"fixed", policy="hardened").valid
    assert len(reads) > len(set(reads))
