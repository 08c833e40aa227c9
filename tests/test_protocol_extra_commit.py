"""`pol commit` (a standalone, earlier commitment) and `pol train --commitment`; passphrase-protected
signing keys on train / commit / verify --record-to (--passphrase-env VAR)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from conftest import assert_unusable, check, run_cli
from pol.crypto import Ledger
from pol.errors import ConfigError
from pol.protocol.commit import read_commitment_file, spec_digest
from pol.proof.reader import read_manifest
from pol.prover.trainer import train_task
from pol.verifier import verify

IRIS = ("--task", "iris-logreg", "--epochs", "2", "--k", "5")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("extra-keys")
    assert run_cli("keygen", "--out", d / "alice").exit_code == 0
    os.environ["POL_EXTRA_PW"] = "correct horse"
    try:
        assert run_cli("keygen", "--out", d / "bob", "--passphrase-env", "POL_EXTRA_PW").exit_code == 0
    finally:
        del os.environ["POL_EXTRA_PW"]
    return d


def test_commit_then_train(keys, tmp_path):
    db, cfile = tmp_path / "l.db", tmp_path / "c.json"
    r = run_cli("commit", *IRIS, "--seed", "3", "--ledger", db,
                "--sign-with", keys / "alice" / "signing.key", "--out", cfile)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(cfile.stat().st_mode) == 0o600
    side = read_commitment_file(cfile)
    with Ledger(db, create=False) as led:
        (c,) = led.entries("commitment")
        assert not list(led.entries("proof"))
    assert c.seq == side["ledger_seq"] and c.payload["spec_digest"] == side["spec_digest"]

    r = run_cli("train", *IRIS, "--seed", "3", "--out", tmp_path / "p", "--ledger", db,
                "--sign-with", keys / "alice" / "signing.key", "--commitment", cfile)
    assert r.exit_code == 0, r.output
    assert spec_digest(read_manifest(tmp_path / "p").spec) == side["spec_digest"]
    with Ledger(db, create=False) as led:
        assert len(list(led.entries("commitment"))) == 1  # no second commitment
        (p,) = led.entries("proof")
    assert p.payload["commitment_seq"] == c.seq
    copied = json.loads((tmp_path / "p" / "commitment.json").read_text())
    assert copied["salt"] == side["salt"] and copied["proof_seq"] == p.seq
    rep = verify(tmp_path / "p", ledger=str(db))
    assert rep.valid, rep.render()
    assert check(rep, "commitment").value["seed_opened"]

    # a commitment is used once
    r = run_cli("train", *IRIS, "--seed", "3", "--out", tmp_path / "p2", "--ledger", db,
                "--sign-with", keys / "alice" / "signing.key", "--commitment", cfile)
    assert_unusable(r, "already used")
    assert not (tmp_path / "p2").exists()


def test_train_spec_mismatch(keys, tmp_path):
    db, cfile = tmp_path / "l.db", tmp_path / "c.json"
    assert run_cli("commit", *IRIS, "--seed", "3", "--ledger", db,
                   "--sign-with", keys / "alice" / "signing.key", "--out", cfile).exit_code == 0
    for opts in (("--seed", "4"), ("--seed", "3", "--lr", "0.5")):
        r = run_cli("train", *IRIS, *opts, "--out", tmp_path / "p", "--ledger", db,
                    "--sign-with", keys / "alice" / "signing.key", "--commitment", cfile)
        assert_unusable(r, "spec digest mismatch")
        assert not (tmp_path / "p").exists()
    # another key than the committer's
    os.environ["POL_EXTRA_PW"] = "correct horse"
    try:
        r = run_cli("train", *IRIS, "--seed", "3", "--out", tmp_path / "p", "--ledger", db,
                    "--sign-with", keys / "bob" / "signing.key", "--passphrase-env", "POL_EXTRA_PW",
                    "--commitment", cfile)
    finally:
        del os.environ["POL_EXTRA_PW"]
    assert_unusable(r, "committed by key")
    # another ledger
    r = run_cli("train", *IRIS, "--seed", "3", "--out", tmp_path / "p", "--ledger", tmp_path / "x.db",
                "--sign-with", keys / "alice" / "signing.key", "--commitment", cfile)
    assert_unusable(r)
    # --commitment without a ledger, a missing or broken file
    assert_unusable(run_cli("train", *IRIS, "--out", tmp_path / "p", "--commitment", cfile),
                    "--commitment needs --ledger")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for f in (bad, tmp_path / "missing.json"):
        assert_unusable(run_cli("train", *IRIS, "--seed", "3", "--out", tmp_path / "p", "--ledger", db,
                                "--sign-with", keys / "alice" / "signing.key", "--commitment", f),
                        "--commitment")


def test_commit_refuses_overwrite_and_bad_inputs(keys, tmp_path):
    db, cfile = tmp_path / "l.db", tmp_path / "c.json"
    cfile.write_text("keep")
    key = keys / "alice" / "signing.key"
    assert_unusable(run_cli("commit", *IRIS, "--ledger", db, "--sign-with", key, "--out", cfile),
                    "exists")
    assert cfile.read_text() == "keep"
    assert run_cli("commit", *IRIS, "--ledger", db, "--sign-with", key, "--out", cfile,
                   "--force").exit_code == 0
    assert_unusable(run_cli("commit", "--task", "nope", "--ledger", db, "--sign-with", key,
                            "--out", tmp_path / "d.json"))
    assert_unusable(run_cli("commit", *IRIS, "--ledger", db, "--sign-with", tmp_path / "nokey",
                            "--out", tmp_path / "d.json"), "--sign-with")


def test_train_task_commitment_api(keys, tmp_path):
    """train_task(commitment=...) accepts the file or its content."""
    from pol.crypto import load_signing_key
    from pol.protocol.commit import commit
    from pol.tasks import build_spec
    key = load_signing_key(keys / "alice" / "signing.key")
    spec, _, _ = build_spec("iris-logreg", epochs=2, k=5)
    db = tmp_path / "l.db"
    side = commit(str(db), key, spec)
    r = train_task("iris-logreg", tmp_path / "p", epochs=2, k=5, ledger=db, signing_key=key,
                   commitment=side)
    assert verify(tmp_path / "p", ledger=str(db)).valid
    with pytest.raises(ConfigError, match="spec digest mismatch"):
        train_task("iris-logreg", tmp_path / "q", epochs=2, k=4, ledger=db, signing_key=key,
                   commitment=side)
    assert r.root_digest


def test_passphrase_keys(keys, tmp_path, monkeypatch):
    db = tmp_path / "l.db"
    bob = keys / "bob" / "signing.key"
    base = ("train", *IRIS, "--out", tmp_path / "p", "--ledger", db, "--sign-with", bob)
    assert_unusable(run_cli(*base), "passphrase")
    assert_unusable(run_cli(*base, "--passphrase-env", "POL_EXTRA_UNSET"), "not set")
    monkeypatch.setenv("POL_EXTRA_PW", "wrong")
    assert_unusable(run_cli(*base, "--passphrase-env", "POL_EXTRA_PW"), "wrong passphrase")
    assert_unusable(run_cli("commit", *IRIS, "--ledger", db, "--sign-with", bob,
                            "--passphrase-env", "POL_EXTRA_PW", "--out", tmp_path / "c.json"),
                    "wrong passphrase")
    assert not (tmp_path / "p").exists() and not (tmp_path / "c.json").exists()
    monkeypatch.setenv("POL_EXTRA_PW", "correct horse")
    r = run_cli("commit", *IRIS, "--ledger", db, "--sign-with", bob,
                "--passphrase-env", "POL_EXTRA_PW", "--out", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    r = run_cli(*base, "--passphrase-env", "POL_EXTRA_PW", "--commitment", tmp_path / "c.json")
    assert r.exit_code == 0, r.output

    # verify --record-to with an encrypted key
    reg = tmp_path / "reg.db"
    vbase = ("verify", tmp_path / "p", "--record-to", reg, "--sign-with", bob)
    monkeypatch.setenv("POL_EXTRA_PW", "wrong")
    assert_unusable(run_cli(*vbase, "--passphrase-env", "POL_EXTRA_PW"), "passphrase")
    monkeypatch.setenv("POL_EXTRA_PW", "correct horse")
    r = run_cli(*vbase, "--passphrase-env", "POL_EXTRA_PW")
    assert r.exit_code == 0, r.output
    with Ledger(reg, create=False) as led:
        assert [e.kind for e in led.entries()] == ["verdict"]
    # a plain key with a passphrase given is refused too
    assert_unusable(run_cli("commit", *IRIS, "--ledger", db, "--sign-with",
                            keys / "alice" / "signing.key", "--passphrase-env", "POL_EXTRA_PW",
                            "--out", tmp_path / "d.json"), "not encrypted")
