"""Regression tests for the user-facing defects of issue 10 §3-§4: one test (or a few) per defect,
each failing on the code before its fix."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_unusable, run_cli, save_npz

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from pol.crypto import generate_keys
    return generate_keys(tmp_path_factory.mktemp("keys") / "k")


def _ledger_with_an_entry(path: Path, keys) -> Path:
    from pol.crypto import Ledger, load_signing_key
    with Ledger(path) as led:
        led.append("note", {"a": 1}, load_signing_key(keys.signing_key))
    return path


def _one_error_line(r, code: int, *fragments: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), r.stderr
    for f in fragments:
        assert f.lower() in lines[-1].lower(), (f, lines[-1])
    return lines[-1]


# ------------------------------------------------------------------------------ §3 ledger

@pytest.mark.parametrize("cmd", [("verify",), ("show",), ("show", "--json"), ("head",)])
def test_ledger_with_its_entries_table_dropped_is_one_line_not_a_traceback(tmp_path, keys, cmd):
    db = _ledger_with_an_entry(tmp_path / "l.db", keys)
    with sqlite3.connect(db) as c:
        c.execute("DROP TABLE entries")
    r = run_cli("ledger", *cmd, db)
    _one_error_line(r, 1, "entries table is missing")


def test_ledger_show_json_lists_an_entry_whose_payload_is_not_json(tmp_path, keys):
    db = _ledger_with_an_entry(tmp_path / "l.db", keys)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE entries SET payload = 'not json' WHERE seq = 1")
    r = run_cli("ledger", "show", "--json", db)
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(r.stdout)
    assert entry["payload"] is None and entry["payload_raw"] == "not json"
    assert "not JSON" in entry["payload_error"]
    # and `ledger verify` reports it as a problem, exit 1
    assert run_cli("ledger", "verify", db).exit_code == 1


# ------------------------------------------------------------------------------ §3 pol open

def test_open_recomputes_the_root_digest_instead_of_trusting_the_manifest_field(
        tmp_path, keys, iris_proof, proof_copy, monkeypatch):
    from pol.crypto import load_encryption_pub, load_signing_key
    from pol.crypto import seal as sealmod
    from pol.crypto.errors import InvalidProofError
    p = proof_copy(iris_proof)
    body = json.loads((p / "manifest.json").read_text())
    body["created"] = "1999-01-01T00:00:00Z"  # content changed, root_digest field kept
    (p / "manifest.json").write_text(json.dumps(body))
    # pol itself refuses to seal it ...
    with pytest.raises(InvalidProofError, match="was modified"):
        sealmod.manifest_root_digest(p)
    # ... and a prover whose sealer trusts the field cannot get it opened either
    field = body["root_digest"]
    monkeypatch.setattr(sealmod, "manifest_root_digest", lambda d: field)
    sealmod.seal(p, load_encryption_pub(keys.encryption_pub), load_signing_key(keys.signing_key),
                 tmp_path / "s.pol")
    monkeypatch.undo()
    r = run_cli("open", tmp_path / "s.pol", "--key", keys.encryption_key, "--out", tmp_path / "o")
    _one_error_line(r, 1, "was modified")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ §3 --ledger

def test_verify_sealed_proof_with_ledger_and_no_training_commitment_is_valid(
        tmp_path, keys, iris_proof):
    db, sealed = tmp_path / "pub.db", tmp_path / "s.pol"
    r = run_cli("seal", iris_proof, "--to", keys.encryption_pub, "--sign-with", keys.signing_key,
                "--out", sealed, "--ledger", db)
    assert r.exit_code == 0, r.output
    assert run_cli("open", sealed, "--key", keys.encryption_key, "--out", tmp_path / "o",
                   "--from", keys.signing_pub, "--ledger", db).exit_code == 0
    r = run_cli("verify", sealed, "--key", keys.encryption_key, "--from", keys.signing_pub,
                "--ledger", db, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    (c,) = [c for c in json.loads((tmp_path / "r.json").read_text())["checks"]
            if c["name"] == "commitment"]
    assert c["status"] == "skip" and "no training commitment" in c["reason"]


def test_ledger_commitment_still_fails_for_a_proof_not_on_the_ledger(tmp_path, keys, iris_proof):
    from pol.proof.reader import read_manifest
    from pol.protocol.commit import find_commitment
    db = _ledger_with_an_entry(tmp_path / "l.db", keys)
    m = read_manifest(iris_proof)
    ok, why, _ = find_commitment(str(db), m.root_digest, m.spec)
    assert ok is False and "not on the ledger" in why


# ------------------------------------------------------------------------------ §4 flaky fuzz test

def test_fuzz_optional_manifest_fields_are_all_listed(iris_proof):
    """Every manifest field the reader accepts deleted (or null) is in the fuzz test's optional
    lists: else test_type_confused_manifest fails whenever it draws that field."""
    import test_fuzz_reader as fz

    from pol.proof import format as fmt
    honest = json.loads((iris_proof / fmt.MANIFEST).read_text())
    missing = []
    for path in fz.manifest_paths(honest):
        if path == ("root_digest",):
            continue
        for op in ("delete", "null"):
            body = copy.deepcopy(honest)
            parent = fz.get_at(body, path[:-1])
            if isinstance(parent, list):
                continue
            if op == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = None
            body["root_digest"] = fmt.root_digest(body)
            try:
                fmt.parse_manifest(json.dumps(body).encode(), fmt.Limits())
            except Exception:  # noqa: BLE001 - refused: fine
                continue
            listed = fz.OPTIONAL_KEYS if op == "delete" else fz.OPTIONAL_STR | fz.UNVALIDATED
            if path not in listed:
                missing.append((op, path))
    assert not missing, missing


def test_hypothesis_tests_are_deterministic():
    from hypothesis import settings
    if os.environ.get("POL_FUZZ_RANDOM") == "1":
        pytest.skip("POL_FUZZ_RANDOM=1 asks for random examples")
    assert settings.default.derandomize and settings.default.database is None


# ------------------------------------------------------------------------------ §4 --data

def test_data_given_for_a_built_in_dataset_is_an_error(iris_proof, tmp_path):
    assert_unusable(run_cli("verify", iris_proof, "--data", tmp_path / "nope.npz"),
                    "takes no --data")
    f = save_npz(tmp_path / "d.npz", np.zeros((3, 4), np.float32), np.zeros(3, np.int64))
    assert_unusable(run_cli("verify", iris_proof, "--data", f), "built into pol")


def test_csv_given_as_data_gets_a_clear_message(user_proof, tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("1,2,3\n4,5,6\n")
    msg = assert_unusable(run_cli("verify", user_proof.proof, "--data", f), "not an .npz")
    assert "pickle" not in msg.lower()


def test_directory_given_as_user_data_is_called_a_directory(user_proof, tmp_path):
    assert_unusable(run_cli("verify", user_proof.proof, "--data", tmp_path), "is a directory")


def test_user_data_that_is_not_the_committed_dataset_is_exit_2(user_proof, tmp_path):
    npz = save_npz(tmp_path / "other.npz", user_proof.x[::-1].copy(), user_proof.y[::-1].copy())
    r = run_cli("verify", user_proof.proof, "--data", npz)
    assert_unusable(r, "not the committed dataset")
    assert "verdict" not in r.stdout


# ------------------------------------------------------------------------------ §4 attack --out

def test_attack_refuses_a_non_empty_out_directory(iris_proof, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = run_cli("attack", "retrain", "--target", iris_proof, "--out", out, "--no-honest")
    _one_error_line(r, 2, "not empty", "--force")
    assert (out / "keep.txt").read_text() == "precious"
    r = run_cli("attack", "retrain", "--target", iris_proof, "--out", iris_proof, "--force")
    _one_error_line(r, 2, "target")
    assert (iris_proof / "manifest.json").is_file()


# ------------------------------------------------------------------------------ §4 pending

def test_request_data_is_pending_with_exit_3(iris_proof, tmp_path):
    r = run_cli("verify", iris_proof, "--request-data", tmp_path / "req.json", "--json",
                tmp_path / "r.json")
    assert r.exit_code == 3, r.output
    assert "verdict: PENDING" in r.stdout and "verdict: VALID" not in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "pending"
    readme = (ROOT / "README.md").read_text()
    assert "`3` the verification is pending" in readme


# ------------------------------------------------------------------------------ §4 Ctrl-C

def _pol(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, POL_DEBUG="")
    env.pop("POL_DEBUG")
    # a shell's background job inherits SIGINT ignored; a user's terminal delivers it
    kw.setdefault("preexec_fn", lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.Popen([sys.executable, "-m", "pol.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **kw)


@pytest.mark.parametrize("delay", [0.4, 1.0, 1.6])  # pol verify of iris: ~2 s
def test_ctrl_c_early_in_a_command_is_one_line_exit_130(iris_proof, delay):
    p = _pol("verify", iris_proof, "--all")
    time.sleep(delay)
    if p.poll() is not None:
        pytest.skip(f"the command finished within {delay}s")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    if p.returncode in (0, -signal.SIGINT) and "verdict:" in out and not err.strip():
        # the verification had finished: the signal came during the interpreter's shutdown,
        # after Python gave SIGINT back its default action, or once it no longer runs handlers
        # (exit 0; seen on the 2-core VM under load): a race of this test's timing
        pytest.skip(f"the command had finished its work within {delay}s")
    assert "Traceback" not in err and "terminate called" not in err, err
    # 130, or death by SIGINT (which a shell reports as 130) after pol's handler printed its
    # line and exited 130: under `python -m`, CPython 3.11 exits by SIGINT when a
    # KeyboardInterrupt was raised inside code run by exec() of a string (a dataclass or an
    # import made at that moment), even once handled (measured: a KeyboardInterrupt raised in
    # exec(str), caught, then sys.exit(130): -2 under -m, 130 as a script; the `pol` console
    # script is a script)
    assert p.returncode in (130, -signal.SIGINT), (p.returncode, err)
    assert err.strip().splitlines()[-1] == "error: interrupted", err


def test_pol_help_does_not_import_torch():
    code = ("import sys\nfrom pol.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert "attack" in out and out.strip().endswith("NO-TORCH"), out


# ------------------------------------------------------------------------------ §4 docs

def test_attacks_doc_exists_and_names_every_attack():
    from pol.cli.attack import NAMES
    text = (ROOT / "docs" / "ATTACKS.md").read_text()
    for name in NAMES:
        assert f"`{name}`" in text, name


def test_benchmarks_doc_no_longer_says_calibrate_is_not_built():
    assert "not built yet" not in (ROOT / "docs" / "BENCHMARKS.md").read_text()


def test_inspect_shows_adam_betas_and_the_warmup(tmp_path):
    from pol.prover.trainer import train_task
    train_task("digits-cnn", tmp_path / "p", epochs=1, k=45, warmup=5)
    r = run_cli("inspect", tmp_path / "p")
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.startswith("optimizer"))
    assert "adam" in line and "betas" in line and "momentum" not in line
    assert "warm-up over 5 step" in line


def test_calibrate_suggests_a_command_with_the_proof_path(iris_proof):
    r = run_cli("calibrate", iris_proof, "--q", "1")
    assert r.exit_code == 0, r.output
    use = next(x for x in r.stdout.splitlines() if "use: pol verify" in x)
    assert str(iris_proof) in use and "PROOF" not in use


def test_parent_help_says_what_to_pass():
    r = run_cli("verify", "--help")
    assert "parent proof's directory" in " ".join(r.stdout.split())


# ------------------------------------------------------------------------------ §4 packaging

def test_packaging_license_version_and_sdist_contents():
    tomllib = pytest.importorskip("tomllib")
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert pp["project"]["license"] == "Apache-2.0"
    assert "version" not in pp["project"] and "version" in pp["project"]["dynamic"]
    assert pp["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pol._version.__version__"}
    req = " ".join(pp["build-system"]["requires"])
    assert "setuptools>=77" in req
    manifest_in = (ROOT / "MANIFEST.in").read_text().split()
    assert "graft" in manifest_in and "tests" in manifest_in
