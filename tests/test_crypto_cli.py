"""The keygen / seal / open / ledger click commands (pol.cli.protocol) via CliRunner."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pol.cli.protocol import keygen as keygen_command
from pol.cli.protocol import ledger as ledger_group
from pol.cli.protocol import open_ as open_command
from pol.cli.protocol import seal as seal_command
from pol.proof import format as _proof_format

# the root digest of the manifest make_proof writes: pol open recomputes it from the content
ROOT = _proof_format.root_digest({})


def make_proof(root: Path) -> dict[str, bytes]:
    files = {
        "manifest.json": json.dumps({"root_digest": ROOT}).encode(),
        "indices.npy": os.urandom(4000),
        "checkpoints/step_000000010.safetensors": os.urandom(9000),
    }
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def run(cmd: click.Command, args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(cmd, [str(a) for a in args], env=env, catch_exceptions=False)


def assert_error(result, code: int, needle: str | None = None) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    if needle:
        assert needle.lower() in lines[-1].lower(), lines[-1]


@pytest.fixture()
def world(tmp_path):
    r1 = run(keygen_command, ["--out", tmp_path / "prover"])
    r2 = run(keygen_command, ["--out", tmp_path / "verifier"])
    r3 = run(keygen_command, ["--out", tmp_path / "mallory"])
    assert r1.exit_code == r2.exit_code == r3.exit_code == 0, r1.stderr
    files = make_proof(tmp_path / "proof")
    return tmp_path, files


def seal_args(t: Path, out: str = "p.sealed", signer: str = "prover") -> list:
    return [
        t / "proof", "--to", t / "verifier" / "encryption.pub", "--sign-with", t / signer / "signing.key",
        "--out", t / out,
    ]


def test_the_pol_group_has_the_crypto_commands():
    from pol.cli import main
    assert {"keygen", "seal", "open", "ledger"} <= set(main.list_commands(click.Context(main)))
    assert set(ledger_group.commands) >= {"show", "verify", "head"}


def test_full_flow_with_ledger(world):
    t, files = world
    r = run(seal_command, seal_args(t) + ["--ledger", t / "ledger.db"])
    assert r.exit_code == 0, r.stderr
    assert ROOT in r.stdout and "appended seq 1" in r.stdout
    r = run(
        open_command,
        [t / "p.sealed", "--key", t / "verifier" / "encryption.key", "--out", t / "opened",
         "--from", t / "prover" / "signing.pub"],
    )
    assert r.exit_code == 0, r.stderr
    assert "NOT pinned" not in r.stdout
    for name, data in files.items():
        assert (t / "opened" / name).read_bytes() == data

    r = run(ledger_group, ["show", t / "ledger.db", "--json"])
    assert r.exit_code == 0, r.stderr
    entries = json.loads(r.stdout)
    assert len(entries) == 1 and entries[0]["kind"] == "proof"
    assert entries[0]["payload"] == {
        "root_digest": ROOT,
        "sealed_file_sha256": hashlib.sha256((t / "p.sealed").read_bytes()).hexdigest(),
    }
    r = run(ledger_group, ["show", t / "ledger.db"])
    assert r.exit_code == 0 and "proof" in r.stdout and ROOT in r.stdout
    r = run(ledger_group, ["verify", t / "ledger.db", "--trust", t / "prover" / "signing.pub"])
    assert r.exit_code == 0 and r.stdout.startswith("ok: 1 entries"), (r.stdout, r.stderr)
    r = run(ledger_group, ["head", t / "ledger.db"])
    assert r.exit_code == 0
    anchor = r.stdout.strip()
    assert anchor.startswith("1:") and len(anchor) == 2 + 64
    r = run(ledger_group, ["verify", t / "ledger.db", "--anchor", anchor])
    assert r.exit_code == 0


def test_open_unpinned_warns(world):
    t, _ = world
    assert run(seal_command, seal_args(t)).exit_code == 0
    r = run(open_command, [t / "p.sealed", "--key", t / "verifier" / "encryption.key", "--out", t / "o"])
    assert r.exit_code == 0
    assert "NOT pinned" in r.stdout and "warning" in r.stderr


def test_wrong_verifier_key_exit_2(world):
    t, _ = world
    assert run(seal_command, seal_args(t)).exit_code == 0
    r = run(open_command, [t / "p.sealed", "--key", t / "mallory" / "encryption.key", "--out", t / "o"])
    assert_error(r, 2, "sealed for key")
    assert not (t / "o").exists()


def test_other_signer_exit_1(world):
    t, _ = world
    assert run(seal_command, seal_args(t, signer="mallory")).exit_code == 0
    r = run(
        open_command,
        [t / "p.sealed", "--key", t / "verifier" / "encryption.key", "--out", t / "o",
         "--from", t / "prover" / "signing.pub"],
    )
    assert_error(r, 1, "signed by key")
    assert not (t / "o").exists()


def test_tampered_and_truncated(world):
    t, _ = world
    assert run(seal_command, seal_args(t)).exit_code == 0
    data = (t / "p.sealed").read_bytes()
    open_args = ["--key", t / "verifier" / "encryption.key", "--out", t / "o"]
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x10
    (t / "tampered.sealed").write_bytes(bad)
    assert_error(run(open_command, [t / "tampered.sealed"] + open_args), 1, "authentication")
    bad = bytearray(data)
    header_len = int.from_bytes(data[10:14], "big")
    bad[14 + header_len + 5] ^= 0x01  # inside the signed HPKE-wrapped key
    (t / "badsig.sealed").write_bytes(bad)
    assert_error(run(open_command, [t / "badsig.sealed"] + open_args), 1, "signature")
    (t / "cut.sealed").write_bytes(data[:-100])
    assert_error(run(open_command, [t / "cut.sealed"] + open_args), 2, "truncated")
    assert_error(run(open_command, [t / "proof" / "indices.npy"] + open_args), 2, "not a sealed")
    assert not (t / "o").exists()


def test_missing_inputs_exit_2(world):
    t, _ = world
    assert_error(run(open_command, [t / "nope.sealed", "--key", t / "verifier" / "encryption.key", "--out", t / "o"]), 2)
    args = seal_args(t)
    args[0] = t / "no-such-proof"
    assert_error(run(seal_command, args), 2, "not found")
    args = seal_args(t)
    args[2] = t / "verifier" / "missing.pub"
    assert_error(run(seal_command, args), 2, "not found")
    args = seal_args(t)
    args[2] = t / "verifier" / "encryption.key"  # a private key where a public one is expected
    assert_error(run(seal_command, args), 2, "public")
    args = seal_args(t)
    args[4] = t / "prover" / "encryption.key"  # X25519 where Ed25519 is expected
    assert_error(run(seal_command, args), 2, "ed25519")
    assert_error(run(ledger_group, ["verify", t / "missing.db"]), 2, "not found")
    assert_error(run(ledger_group, ["show", t / "proof" / "indices.npy"]), 2)
    assert_error(run(ledger_group, ["verify", t / "x.db", "--anchor", "garbage"]), 2, "anchor")


def test_seal_refuses_existing_output(world):
    t, _ = world
    assert run(seal_command, seal_args(t)).exit_code == 0
    assert_error(run(seal_command, seal_args(t)), 2, "exists")
    assert run(seal_command, seal_args(t) + ["--force"]).exit_code == 0


def test_passphrase_from_environment(tmp_path):
    env = {"POL_TEST_PW": "s3cret passphrase"}
    r = run(keygen_command, ["--out", tmp_path / "prover", "--passphrase-env", "POL_TEST_PW"], env=env)
    assert r.exit_code == 0, r.stderr
    assert "s3cret" not in r.stdout + r.stderr
    assert run(keygen_command, ["--out", tmp_path / "verifier"]).exit_code == 0
    make_proof(tmp_path / "proof")
    args = seal_args(tmp_path)
    assert_error(run(seal_command, args), 2, "passphrase")
    assert_error(run(seal_command, args + ["--passphrase-env", "POL_UNSET_VAR"]), 2, "not set")
    assert_error(run(seal_command, args + ["--passphrase-env", "POL_TEST_PW"], env={"POL_TEST_PW": "wrong"}), 2, "passphrase")
    r = run(seal_command, args + ["--passphrase-env", "POL_TEST_PW"], env=env)
    assert r.exit_code == 0, r.stderr


def test_keygen_overwrite(tmp_path):
    assert run(keygen_command, ["--out", tmp_path / "k"]).exit_code == 0
    assert_error(run(keygen_command, ["--out", tmp_path / "k"]), 2, "refusing to overwrite")
    assert run(keygen_command, ["--out", tmp_path / "k", "--force"]).exit_code == 0


def test_tampered_ledger_exit_1(world):
    t, _ = world
    for i in range(3):
        assert run(seal_command, seal_args(t, out=f"p{i}.sealed") + ["--ledger", t / "l.db"]).exit_code == 0
    c = sqlite3.connect(str(t / "l.db"), isolation_level=None)
    c.execute("UPDATE entries SET payload = '{\"root_digest\":\"00\"}' WHERE seq = 2")
    c.close()
    r = run(ledger_group, ["verify", t / "l.db"])
    assert_error(r, 1, "verification failed")
    assert "seq 2: hash_mismatch" in r.stdout
