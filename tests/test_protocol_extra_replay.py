"""Replay of an old sealed proof: `pol open --ledger` / `pol.crypto.open_checked` accept only the
signer's latest, unrevoked sealed publication of a proof; `pol ledger revoke`."""

from __future__ import annotations

import pytest

from conftest import assert_unusable, run_cli
from pol.crypto import Ledger, load_encryption_key, load_signing_key, load_verify_key, open_checked
from pol.crypto.errors import LedgerError, LedgerInvalid, ReplayedSeal, RevokedSeal, SignerMismatch
from pol.crypto.replay import revoke
from pol.crypto.seal import seal
from pol.prover.trainer import train_task


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    for who in ("alice", "mallory", "verifier"):
        assert run_cli("keygen", "--out", d / who).exit_code == 0
    r = train_task("iris-logreg", d / "proof", epochs=2, k=5)
    return d, r.root_digest


def _seal(d, name, db, signer="alice"):
    r = run_cli("seal", d / "proof", "--to", d / "verifier" / "encryption.pub", "--sign-with",
                d / signer / "signing.key", "--out", d / name, "--ledger", db)
    assert r.exit_code == 0, r.output
    return d / name


def _open(d, f, out, db, *extra):
    return run_cli("open", f, "--key", d / "verifier" / "encryption.key", "--out", out,
                   "--ledger", db, *extra)


def _assert_invalid(r, *fragments):
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])


def test_latest_accepted_old_rejected(world, tmp_path):
    d, root = world
    db = tmp_path / "l.db"
    old = _seal(d, "old.pol", db)
    r = _open(d, old, tmp_path / "o1", db, "--from", d / "alice" / "signing.pub")
    assert r.exit_code == 0, r.output
    assert "latest publication" in r.output
    new = _seal(d, "new.pol", db)
    r = _open(d, old, tmp_path / "o2", db)
    _assert_invalid(r, "replayed (old) sealed proof", "superseded")
    assert not (tmp_path / "o2").exists()
    assert _open(d, new, tmp_path / "o3", db).exit_code == 0
    # without a ledger the old file still opens (nothing to compare with)
    r = run_cli("open", old, "--key", d / "verifier" / "encryption.key", "--out", tmp_path / "o4")
    assert r.exit_code == 0, r.output


def test_unpublished_and_foreign_publications(world, tmp_path):
    d, root = world
    db = tmp_path / "l.db"
    f = d / "unpub.pol"
    seal(d / "proof", load_encryption_key(d / "verifier" / "encryption.key").public_key(),
         load_signing_key(d / "alice" / "signing.key"), f, overwrite=True)
    with Ledger(db) as led:  # another signer publishing alice's root does not count
        led.append("proof", {"root_digest": root, "sealed_file_sha256": "0" * 64},
                   load_signing_key(d / "mallory" / "signing.key"))
    _assert_invalid(_open(d, f, tmp_path / "o", db), "not published")
    _seal(d, "pub.pol", db)
    _assert_invalid(_open(d, f, tmp_path / "o", db), "not the one published")
    # mallory cannot supersede or revoke alice's publication
    mallory = load_signing_key(d / "mallory" / "signing.key")
    with Ledger(db) as led:
        led.append("proof", {"root_digest": root, "sealed_file_sha256": "1" * 64}, mallory)
        led.append("revoke", {"root_digest": root}, mallory)
    assert _open(d, d / "pub.pol", tmp_path / "o2", db).exit_code == 0


def test_revoke(world, tmp_path):
    d, root = world
    db = tmp_path / "l.db"
    f = _seal(d, "r1.pol", db)
    key = d / "alice" / "signing.key"
    r = run_cli("ledger", "revoke", db, "--root-digest", root, "--sign-with", key,
                "--reason", "key leaked")
    assert r.exit_code == 0, r.output
    _assert_invalid(_open(d, f, tmp_path / "o", db), "revoked", "key leaked")
    assert not (tmp_path / "o").exists()
    # publishing again after the revocation is accepted
    f2 = _seal(d, "r2.pol", db)
    assert _open(d, f2, tmp_path / "o2", db).exit_code == 0
    _assert_invalid(_open(d, f, tmp_path / "o3", db), "replayed")
    # bad revocations are unusable input
    assert_unusable(run_cli("ledger", "revoke", db, "--root-digest", "abc", "--sign-with", key),
                    "root-digest")
    assert_unusable(run_cli("ledger", "revoke", db, "--root-digest", "f" * 64, "--sign-with", key),
                    "nothing to revoke")
    assert_unusable(run_cli("ledger", "revoke", tmp_path / "none.db", "--root-digest", root,
                            "--sign-with", key), "not found")


def test_open_checked_api(world, tmp_path):
    d, root = world
    db = tmp_path / "l.db"
    f = _seal(d, "api.pol", db)
    key_path = d / "verifier" / "encryption.key"
    got = open_checked(f, key_path, tmp_path / "o", d / "alice" / "signing.pub", ledger=db)
    assert got.root_digest == root and got.publication is not None
    assert (tmp_path / "o" / "manifest.json").is_file()
    got = open_checked(f, load_encryption_key(key_path), tmp_path / "o1",
                       load_verify_key(d / "alice" / "signing.pub"))
    assert got.publication is None
    with pytest.raises(SignerMismatch):
        open_checked(f, key_path, tmp_path / "o2", d / "mallory" / "signing.pub", ledger=db)
    with pytest.raises(LedgerError):
        open_checked(f, key_path, tmp_path / "o3", None, ledger=tmp_path / "missing.db")
    assert LedgerError.exit_code == 2
    revoke(db, root, load_signing_key(d / "alice" / "signing.key"))
    with pytest.raises(RevokedSeal) as e:
        open_checked(f, key_path, tmp_path / "o4", None, ledger=db)
    assert e.value.exit_code == 1 and not (tmp_path / "o4").exists()
    _seal(d, "api2.pol", db)
    with pytest.raises(ReplayedSeal):
        open_checked(f, key_path, tmp_path / "o5", None, ledger=db)


def test_tampered_ledger_rejected(world, tmp_path):
    import sqlite3
    d, root = world
    db = tmp_path / "l.db"
    f = _seal(d, "t.pol", db)
    con = sqlite3.connect(db)
    con.execute("UPDATE entries SET payload = replace(payload, 'root', 'rooT') WHERE seq = 1")
    con.commit()
    con.close()
    with pytest.raises(LedgerInvalid):
        open_checked(f, d / "verifier" / "encryption.key", tmp_path / "o", None, ledger=db)
    _assert_invalid(_open(d, f, tmp_path / "o", db), "does not verify")
