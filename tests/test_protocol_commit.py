"""Commit at start: signed commitment before training, proof entry after, verifier's check."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import assert_unusable, check, failed_checks, run_cli
from pol.crypto import Ledger, load_signing_key
from pol.protocol.commit import seed_commitment, spec_digest
from pol.prover.trainer import train_task
from pol.proof.reader import read_manifest
from pol.verifier import verify


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("commit")
    for who in ("alice", "mallory"):
        assert run_cli("keygen", "--out", d / who).exit_code == 0
    db = d / "ledger.db"
    r = run_cli("train", "--task", "iris-logreg", "--epochs", "2", "--k", "5", "--seed", "7",
                "--out", d / "a", "--ledger", db, "--sign-with", d / "alice" / "signing.key")
    assert r.exit_code == 0, r.output
    return d, db


def test_entries_written(world):
    d, db = world
    m = read_manifest(d / "a")
    side = json.loads((d / "a" / "commitment.json").read_text())
    with Ledger(db, create=False) as led:
        assert led.verify().ok
        (c,) = led.entries("commitment")
        (p,) = led.entries("proof")
    assert c.payload["spec_digest"] == spec_digest(m.spec)
    assert c.payload["data_root"] == m.spec.data.root
    assert c.payload["seed_commitment"] == seed_commitment(7, side["salt"])
    assert c.payload["prover"] == c.signer_key_id
    assert p.payload == {"root_digest": m.root_digest, "commitment_seq": c.seq}
    assert c.seq < p.seq


def test_verify_with_ledger(world):
    d, db = world
    r = verify(d / "a", ledger=str(db))
    assert r.valid, r.render()
    ch = check(r, "commitment")
    assert ch.status == "pass" and ch.value["seed_opened"]
    assert "extra files" not in {c.name for c in r.checks}  # the sidecar is expected
    cli = run_cli("verify", d / "a", "--ledger", db)
    assert cli.exit_code == 0, cli.output


def test_no_commitment(world, tmp_path):
    d, _ = world
    train_task("iris-logreg", tmp_path / "b", epochs=1, k=5)
    empty = tmp_path / "l.db"
    Ledger(empty).close()
    r = verify(tmp_path / "b", ledger=str(empty))
    assert "commitment" in failed_checks(r)
    assert_unusable(run_cli("verify", tmp_path / "b", "--ledger", tmp_path / "none.db"),
                    "no such file")


def test_wrong_salt(world, proof_copy):
    d, db = world
    cp = proof_copy(d / "a")
    side = json.loads((cp / "commitment.json").read_text())
    side["salt"] = "00" * 32
    (cp / "commitment.json").write_text(json.dumps(side))
    r = verify(cp, ledger=str(db))
    assert "commitment" in failed_checks(r)
    assert "does not open" in check(r, "commitment").reason


def _copy_ledger(db, tmp_path):
    out = tmp_path / "copy.db"
    src = sqlite3.connect(db)
    dst = sqlite3.connect(out)
    src.backup(dst)
    src.close()
    dst.close()
    return out


def test_replayed_commitment_by_thief(world, tmp_path):
    """Mallory replays Alice's commitment payload under her own key and publishes Alice's proof."""
    d, db = world
    led_path = _copy_ledger(db, tmp_path)
    m = read_manifest(d / "a")
    mal = load_signing_key(d / "mallory" / "signing.key")
    with Ledger(led_path) as led:
        (c,) = led.entries("commitment")
        # remove Alice's proof entry? she cannot: append-only; Mallory adds her own pair
        c2 = led.append("commitment", c.payload, mal)
        led.append("proof", {"root_digest": m.root_digest, "commitment_seq": c2.seq}, mal)
        rep = led.verify()
    assert rep.ok  # the entries are well-formed: the replay is a protocol-level problem
    # Alice's entries still win
    r = verify(d / "a", ledger=str(led_path))
    assert check(r, "commitment").value["prover"] == c.signer_key_id
    # a ledger holding only Mallory's replayed pair (Alice's proof entry never published)
    only = tmp_path / "only.db"
    with Ledger(only) as led:
        alice = load_signing_key(d / "alice" / "signing.key")
        ca = led.append("commitment", c.payload, alice)
        cm = led.append("commitment", c.payload, mal)
        led.append("proof", {"root_digest": m.root_digest, "commitment_seq": cm.seq}, mal)
    r = verify(d / "a", ledger=str(only))
    assert "commitment" in failed_checks(r)
    assert "replays" in check(r, "commitment").reason
    assert ca.seq < cm.seq


def test_proof_entry_by_other_key_or_before_commitment(world, tmp_path):
    d, db = world
    m = read_manifest(d / "a")
    alice = load_signing_key(d / "alice" / "signing.key")
    mal = load_signing_key(d / "mallory" / "signing.key")
    side = json.loads((d / "a" / "commitment.json").read_text())
    payload = {k: side[k] for k in ("spec_digest", "seed_commitment", "data_root", "prover")}
    l1 = tmp_path / "l1.db"
    with Ledger(l1) as led:
        c = led.append("commitment", payload, alice)
        led.append("proof", {"root_digest": m.root_digest, "commitment_seq": c.seq}, mal)
    r = verify(d / "a", ledger=str(l1))
    assert "signed by" in check(r, "commitment").reason and "commitment" in failed_checks(r)
    l2 = tmp_path / "l2.db"
    with Ledger(l2) as led:
        led.append("proof", {"root_digest": m.root_digest, "commitment_seq": 2}, alice)
        led.append("commitment", payload, alice)
    r = verify(d / "a", ledger=str(l2))
    assert "does not precede" in check(r, "commitment").reason


def test_replayed_row_copied_into_other_ledger(world, tmp_path):
    """Copying a signed row verbatim into another ledger breaks its hash chain."""
    d, db = world
    alice = load_signing_key(d / "alice" / "signing.key")
    other = tmp_path / "other.db"
    with Ledger(other) as led:
        led.append("note", {"x": 1}, alice)
    src = sqlite3.connect(db)
    rows = src.execute("SELECT * FROM entries ORDER BY seq").fetchall()
    src.close()
    dst = sqlite3.connect(other)
    for row in rows:
        row = list(row)
        row[0] += 1
        dst.execute(f"INSERT INTO entries VALUES ({','.join('?' * len(row))})", row)
    dst.commit()
    dst.close()
    r = verify(d / "a", ledger=str(other))
    assert "commitment" in failed_checks(r)
    assert "does not verify" in check(r, "commitment").reason
    cli = run_cli("verify", d / "a", "--ledger", other)
    assert cli.exit_code == 1


def test_cli_sign_with_needs_ledger(tmp_path):
    r = run_cli("train", "--task", "iris-logreg", "--out", tmp_path / "x", "--sign-with",
                tmp_path / "k")
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = run_cli("train", "--task", "iris-logreg", "--epochs", "1", "--out", tmp_path / "x",
                "--ledger", tmp_path / "l.db", "--sign-with", tmp_path / "missing.key")
    assert_unusable(r)
