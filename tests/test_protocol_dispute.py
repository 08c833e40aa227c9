"""Ownership dispute: which proof shows who trained the disputed model first."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import assert_unusable, run_cli
from pol.proof import format as fmt
from pol.proof.reader import read_manifest


def _final(proof):
    m = read_manifest(proof)
    return load_file(str(proof / fmt.checkpoint_name(m.total_steps)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("dispute")
    db = d / "ledger.db"
    for who, seed in (("alice", 7), ("mallory", 8)):
        assert run_cli("keygen", "--out", d / who).exit_code == 0
        r = run_cli("train", "--task", "iris-logreg", "--epochs", "2", "--k", "5", "--seed",
                    seed, "--out", d / who[0], "--ledger", db, "--sign-with",
                    d / who / "signing.key")
        assert r.exit_code == 0, r.output
    # the disputed model: Alice's final weights, saved with bare state_dict names
    save_file({k[len("model."):]: v for k, v in _final(d / "a").items()
               if k.startswith("model.")}, str(d / "model.safetensors"))
    # Mallory fine-tunes the stolen model (warm start from Alice's proof)
    r = run_cli("train", "--task", "iris-logreg", "--epochs", "1", "--k", "5", "--seed", "9",
                "--out", d / "ft", "--init-from", d / "a", "--ledger", db, "--sign-with",
                d / "mallory" / "signing.key")
    assert r.exit_code == 0, r.output
    return d, db


def test_alice_wins(world):
    d, db = world
    r = run_cli("dispute", "--model", d / "model.safetensors", d / "m", d / "a", "--ledger", db,
                "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["winner"] == str(d / "a")
    by = {c["proof"]: c for c in res["claims"]}
    assert by[str(d / "a")]["ends_at_model"] and by[str(d / "a")]["valid"]
    assert not by[str(d / "m")]["ends_at_model"]
    assert "committed first" in res["why"]


def test_model_prefixed_names_and_text_output(world, tmp_path):
    d, db = world
    save_file({k: v for k, v in _final(d / "m").items() if k.startswith("model.")},
              str(tmp_path / "m.safetensors"))
    r = run_cli("dispute", "--model", tmp_path / "m.safetensors", d / "a", d / "m",
                "--ledger", db)
    assert r.exit_code == 0, r.output
    assert f"winner: {d / 'm'}" in r.stdout


def test_fine_tuned_copy_does_not_end_at_model(world):
    d, db = world
    r = run_cli("dispute", "--model", d / "model.safetensors", d / "ft", "--ledger", db,
                "--json")
    assert r.exit_code == 1
    res = json.loads(r.stdout)
    assert res["winner"] is None
    # the warm-started proof is not even valid without its parent
    assert not res["claims"][0]["valid"]


def test_no_one_wins(world, tmp_path):
    d, db = world
    w = {k: torch.randn_like(v) for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(w, str(tmp_path / "x.safetensors"))
    r = run_cli("dispute", "--model", tmp_path / "x.safetensors", d / "a", d / "m",
                "--ledger", db)
    assert r.exit_code == 1
    assert "no winner" in r.stdout


def test_without_ledger(world, tmp_path):
    d, _ = world
    r = run_cli("dispute", "--model", d / "model.safetensors", d / "a", d / "m", "--json")
    assert r.exit_code == 0, r.output
    assert "time not checked" in json.loads(r.stdout)["why"]
    # a stolen copy of the same proof: two valid claims, no ledger to order them
    import shutil
    shutil.copytree(d / "a", tmp_path / "copy")
    r = run_cli("dispute", "--model", d / "model.safetensors", d / "a", tmp_path / "copy")
    assert r.exit_code == 1 and "no ledger" in r.stdout


def test_unusable(world, tmp_path):
    d, db = world
    assert_unusable(run_cli("dispute", "--model", tmp_path / "none.safetensors", d / "a"))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert_unusable(run_cli("dispute", "--model", tmp_path / "bad.safetensors", d / "a"))
    r = run_cli("dispute", "--model", d / "model.safetensors", tmp_path / "nope")
    assert r.exit_code == 1 and "unusable proof" in r.stdout


def test_fine_tuned_with_parent_is_valid_but_elsewhere(world):
    d, db = world
    r = run_cli("dispute", "--model", d / "model.safetensors", d / "ft", "--ledger", db,
                "--parent", d / "a", "--json")
    assert r.exit_code == 1
    c = json.loads(r.stdout)["claims"][0]
    assert c["valid"] and not c["ends_at_model"]
