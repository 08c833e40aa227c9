"""Golden fixtures of every versioned format beyond the proof itself (tests/golden/README.md): a
file written by a released version must stay readable forever.

Each fixture was made once from the golden proof v2/iris-logreg-fp32-z (tests/golden/
make_fixtures.py, never run by CI) and is read here with the current code: the keys load, the
archive unpacks to the proof, the sealed file opens with the stored key (and verifies from the
CLI against the ledger), the ledger's hash chain and signatures verify, the report JSON has the
`pol-report/1` shape, the commitment opens to the proof's seed on the ledger, and the data
request and the reveal match the proof and finish a lazy verification.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import check, run_cli

GOLDEN = Path(__file__).parent / "golden"
INDEX = json.loads((GOLDEN / "FORMATS.json").read_text())
PROOF = GOLDEN / INDEX["proof"]
ROOT = INDEX["root_digest"]
KEYS = GOLDEN / "keys"
SEALED = GOLDEN / "sealed" / "iris-logreg-fp32-z.polseal"
ARCHIVE = GOLDEN / "archive" / "iris-logreg-fp32-z.polarc"
REPORT = GOLDEN / "report" / "iris-logreg-fp32-z.json"
REQUEST = GOLDEN / "request" / "request.json"
REVEAL = GOLDEN / "reveal" / "reveal.npz"
COMMITMENT = GOLDEN / "commitment" / "commitment.json"


@pytest.fixture
def ledger(tmp_path) -> Path:
    """A copy of the golden ledger: SQLite writes (WAL mode) even when only reading."""
    dst = tmp_path / "ledger.db"
    shutil.copyfile(GOLDEN / "ledger" / "ledger.db", dst)
    return dst


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _spec():
    from pol.proof.reader import read_manifest
    return read_manifest(PROOF).spec


def test_the_fixtures_are_the_committed_bytes_and_small():
    total = 0
    for name, digest in INDEX["files"].items():
        data = (GOLDEN / name).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} was modified: never rewrite it"
    assert total < 1 << 20


def test_keys_load():
    from pol.crypto import (key_id, load_encryption_key, load_encryption_pub, load_signing_key,
                            load_verify_key)
    sk = load_signing_key(KEYS / "signing.key")
    assert key_id(sk.public_key()) == key_id(load_verify_key(KEYS / "signing.pub")) \
        == INDEX["signing_key_id"]
    xk = load_encryption_key(KEYS / "encryption.key")
    assert key_id(xk.public_key()) == key_id(load_encryption_pub(KEYS / "encryption.pub")) \
        == INDEX["encryption_key_id"]


def test_archive_unpacks_to_the_golden_proof(tmp_path):
    import io

    from pol.crypto.archive import MAGIC, pack, unpack
    with open(ARCHIVE, "rb") as f:
        stats = unpack(f, tmp_path / "proof")
    assert _files(tmp_path / "proof") == _files(PROOF)
    assert stats.entries == len(_files(PROOF))
    if MAGIC == ARCHIVE.read_bytes()[:len(MAGIC)]:  # same version: packing is deterministic
        buf = io.BytesIO()
        pack(PROOF, buf)
        assert buf.getvalue() == ARCHIVE.read_bytes()


def test_sealed_file_opens_with_the_stored_key(tmp_path, ledger):
    from pol.crypto import open_checked, read_header
    h = read_header(SEALED)
    assert (h.version, h.root_digest, h.sender_key_id, h.recipient_key_id) == \
        (1, ROOT, INDEX["signing_key_id"], INDEX["encryption_key_id"])
    assert h.created.startswith("2026-12-01T12:00:00")
    opened = open_checked(SEALED, KEYS / "encryption.key", tmp_path / "proof",
                          KEYS / "signing.pub", ledger=ledger)
    assert opened.root_digest == ROOT and opened.sealed_sha256 == INDEX["sealed_sha256"]
    assert opened.publication is not None and opened.publication.seq == 3
    assert _files(tmp_path / "proof") == _files(PROOF)


def test_sealed_file_verifies_from_the_cli_and_the_report_keeps_its_schema(tmp_path, ledger):
    out = tmp_path / "report.json"
    r = run_cli("verify", SEALED, "--key", KEYS / "encryption.key", "--from",
                KEYS / "signing.pub", "--ledger", ledger, "--json", out)
    assert r.exit_code == 0, r.output
    now, golden = json.loads(out.read_text()), json.loads(REPORT.read_text())
    assert now["schema"] == golden["schema"] == "pol-report/1"
    assert set(now) == set(golden)
    assert {k for c in now["checks"] for k in c} == {k for c in golden["checks"] for k in c}
    assert {k for s in now["segments"] for k in s} == {k for s in golden["segments"] for k in s}
    assert {c["name"] for c in golden["checks"]} <= {c["name"] for c in now["checks"]}, \
        "a check of the golden report is no longer reported (renamed?)"
    assert {c["name"]: c["status"] for c in now["checks"]}["commitment"] == "pass"


def test_report_json_reads_as_pol_report_1():
    from pol.verifier.report import SCHEMA
    rep = json.loads(REPORT.read_text())
    assert rep["schema"] == SCHEMA
    assert set(rep) == {"schema", "proof", "root_digest", "verdict", "policy", "metrics", "d1",
                        "deltas", "delta_rule", "checks", "segments", "stats"}
    assert (rep["root_digest"], rep["verdict"], rep["policy"]) == (ROOT, "valid", "hardened")
    assert set(rep["deltas"]) == set(rep["metrics"]) and rep["d1"] in rep["metrics"]
    for c in rep["checks"]:
        assert set(c) == {"name", "status", "value", "bound", "reason"}
        assert c["status"] in ("pass", "fail", "warn", "skip") and isinstance(c["name"], str)
    assert rep["segments"]
    for s in rep["segments"]:
        assert set(s) == {"start", "end", "epoch", "d1", "update", "error", "passed", "exact",
                          "why"}
        assert 0 <= s["start"] < s["end"] and set(s["error"]) == set(rep["metrics"])
    assert rep["stats"]["replayed_steps"] <= rep["stats"]["total_steps"]


def test_ledger_chain_and_signatures_verify(ledger):
    from pol.crypto import Ledger, load_verify_key
    from pol.protocol.chain import registry_lookup
    pub = load_verify_key(KEYS / "signing.pub")
    head = tuple(INDEX["ledger_head"])
    with Ledger(ledger, create=False) as led:
        rep = led.verify(anchors=[head], trusted_keys=[pub])
        assert rep.ok, rep.summary()
        assert led.export_head() == head
        entries = list(led.entries())
    assert [e.kind for e in entries] == ["commitment", "proof", "proof", "verdict"]
    assert {e.signer_key_id for e in entries} == {INDEX["signing_key_id"]}
    assert entries[1].payload == {"root_digest": ROOT, "commitment_seq": 1}
    assert entries[2].payload == {"root_digest": ROOT, "sealed_file_sha256": INDEX["sealed_sha256"]}
    entry, problem = registry_lookup(str(ledger), ROOT)
    assert entry is not None and entry.seq == 4, problem


def test_commitment_opens_to_the_proofs_seed_on_the_ledger(ledger):
    from pol.protocol.commit import (find_commitment, read_commitment_file, seed_commitment,
                                     spec_digest)
    spec = _spec()
    side = read_commitment_file(COMMITMENT)
    assert side["format"] == "pol-commitment/1" and side["root_digest"] == ROOT
    assert side["spec_digest"] == spec_digest(spec) and side["data_root"] == spec.data.root
    assert side["seed_commitment"] == seed_commitment(spec.seed, side["salt"])
    ok, reason, info = find_commitment(str(ledger), ROOT, spec, side)
    assert ok, reason
    assert info["seed_opened"] and (info["commitment_seq"], info["proof_seq"]) == (1, 2)


def test_data_request_matches_the_proof():
    from pol.proof.reader import open_proof
    from pol.protocol.lazy import REQUEST_FORMAT, read_request
    req = read_request(str(REQUEST))
    proof = open_proof(PROOF)
    m = proof.manifest
    assert req["format"] == REQUEST_FORMAT
    assert (req["root_digest"], req["data_root"], req["dataset_size"]) == \
        (ROOT, m.spec.data.root, m.spec.data.size)
    pairs = set(zip(m.checkpoints, m.checkpoints[1:]))
    assert req["segments"] and all(tuple(s) in pairs for s in req["segments"])
    need = sorted({int(i) for a, b in req["segments"] for t in range(a, b) for i in proof.batch(t)})
    assert req["indices"] == need
    assert 0 < len(need) < m.spec.data.size  # a strict subset: the point of the lazy protocol


def test_reveal_loads_and_finishes_the_lazy_verification():
    from pol.proof.reader import read_manifest
    from pol.protocol.lazy import load_reveal
    from pol.verifier import verify
    _, _, idx, problems = load_reveal(str(REVEAL), read_manifest(PROOF))
    assert problems == []
    assert sorted(int(i) for i in idx) == json.loads(REQUEST.read_text())["indices"]
    with np.load(REVEAL, allow_pickle=False) as z:
        assert str(z["nonce"]) == json.loads(REQUEST.read_text())["nonce"]
    r = verify(PROOF, reveal=str(REVEAL))
    assert r.valid and not r.pending, r.render()
    assert check(r, "revealed data").status == "pass"
