"""Unusable input: `pol verify` / `pol inspect` exit 2 with one `error: ...` line and no traceback.

Corruptions that keep the manifest consistent (rehashed) reach the deeper parsers (npy headers,
safetensors headers, tensor shapes, NaN values), which must refuse them cleanly too.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pol.errors import IncompleteProofError, ProofFormatError
from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.verifier import verify

from conftest import (assert_unusable, checkpoint_path, load_manifest, run_cli, save_npz,
                      write_manifest)


def _save_npy(path, arr) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    path.write_bytes(buf.getvalue())


# ---------------------------------------------------------------- no proof at all

def test_missing_directory_exits_2(tmp_path):
    r = run_cli("verify", tmp_path / "nope")
    assert_unusable(r, "no proof at")


def test_missing_directory_in_a_real_process_prints_no_traceback(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "POL_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "pol.cli", "verify", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr


def test_directory_without_manifest_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_unusable(run_cli("verify", tmp_path / "empty"), "manifest")
    assert_unusable(run_cli("inspect", tmp_path / "empty"), "manifest")


def test_a_file_instead_of_a_directory_exits_2(tmp_path):
    f = tmp_path / "proof.bin"
    f.write_bytes(b"not a proof")
    assert_unusable(run_cli("verify", f), "not a proof directory")


def test_progress_without_manifest_is_an_incomplete_proof(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    (p / fmt.MANIFEST).unlink()
    (p / fmt.PROGRESS).write_text(json.dumps({"writing": True, "last_checkpoint": 20,
                                              "rows": 20}))
    msg = assert_unusable(run_cli("verify", p), "incomplete proof")
    assert "resume with" in msg
    with pytest.raises(IncompleteProofError):
        verify(p)


# ---------------------------------------------------------------- damaged files (digest not fixed)

def test_truncated_checkpoint_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, load_manifest(p)["checkpoints"][3])
    path.write_bytes(path.read_bytes()[:-100])
    msg = assert_unusable(run_cli("verify", p), "truncated")
    assert fmt.checkpoint_name(load_manifest(p)["checkpoints"][3]) in msg


def test_missing_checkpoint_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    checkpoint_path(p, load_manifest(p)["checkpoints"][-1]).unlink()
    assert_unusable(run_cli("verify", p), "missing file")


def test_missing_per_step_array_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    (p / fmt.INDICES).unlink()
    assert_unusable(run_cli("verify", p), "missing file", fmt.INDICES)
    assert_unusable(run_cli("inspect", p), "missing file")


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage", b"[1, 2]",
                                     b'{"format": "pol-proof", "version": 1, "x": NaN}'],
                         ids=["broken", "empty", "binary", "list", "nan"])
def test_manifest_that_is_not_a_json_object_exits_2(mlp_proof, proof_copy, content):
    p = proof_copy(mlp_proof)
    (p / fmt.MANIFEST).write_bytes(content)
    assert_unusable(run_cli("verify", p), "manifest")
    assert_unusable(run_cli("inspect", p), "manifest")


def test_manifest_with_duplicate_keys_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    text = (p / fmt.MANIFEST).read_text()
    (p / fmt.MANIFEST).write_text(text.replace('{', '{"k": 1, "k": 2,', 1))
    assert_unusable(run_cli("verify", p), "duplicate")


def test_future_format_version_names_the_version(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["version"] = 2
    write_manifest(p, body, rehash_root=True)
    msg = assert_unusable(run_cli("verify", p), "version")
    assert "2" in msg
    assert_unusable(run_cli("inspect", p), "version")


def test_not_a_pol_manifest_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["format"] = "something-else"
    write_manifest(p, body, rehash_root=True)
    assert_unusable(run_cli("verify", p), "not a pol proof manifest")


def test_unknown_manifest_field_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["surprise"] = 1
    write_manifest(p, body, rehash_root=True)
    assert_unusable(run_cli("verify", p), "unknown field")


def test_manifest_file_entry_escaping_the_proof_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["files"]["../outside.npy"] = body["files"].pop(fmt.LOSSES)
    write_manifest(p, body, rehash_root=True)
    assert_unusable(run_cli("verify", p), "invalid file name")


def test_inconsistent_step_counts_exit_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["total_steps"] += 1
    write_manifest(p, body, rehash_root=True)
    assert_unusable(run_cli("verify", p), "total_steps")


def test_symlinked_checkpoint_is_refused(mlp_proof, proof_copy, tmp_path):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, 0)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    assert_unusable(run_cli("verify", p), "symbolic link")


# ---------------------------------------------------------------- rehashed corruptions

def test_npy_with_wrong_shape_exits_2_even_when_rehashed(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    losses = np.load(p / fmt.LOSSES, allow_pickle=False)
    _save_npy(p / fmt.LOSSES, np.concatenate([losses, losses[:1]]))
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), fmt.LOSSES, "shape")


def test_indices_with_extra_column_exit_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    idx = np.load(p / fmt.INDICES, allow_pickle=False)
    _save_npy(p / fmt.INDICES, np.concatenate([idx, idx[:, :1]], axis=1))
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), fmt.INDICES)


def test_npy_with_wrong_dtype_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    idx = np.load(p / fmt.INDICES, allow_pickle=False)
    _save_npy(p / fmt.INDICES, idx.astype(np.int32))
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), fmt.INDICES, "dtype")


def test_index_outside_the_dataset_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    idx = np.load(p / fmt.INDICES, allow_pickle=False).copy()
    idx[3, 0] = 10**9
    _save_npy(p / fmt.INDICES, idx)
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), "outside the dataset")


def test_infinite_learning_rate_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    lrs = np.load(p / fmt.LRS, allow_pickle=False).copy()
    lrs[4, 0] = np.inf
    _save_npy(p / fmt.LRS, lrs)
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), "learning rates")


def test_safetensors_with_absurd_header_length_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, load_manifest(p)["checkpoints"][2])
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), "header length")
    with pytest.raises(ProofFormatError):
        verify(p)


def test_safetensors_with_garbage_header_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, 0)
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8  # header JSON no longer decodes
    path.write_bytes(bytes(data))
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), "safetensors header")


def test_checkpoint_with_wrong_tensor_shape_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, load_manifest(p)["checkpoints"][1])
    t = load_file(str(path))
    key = next(k for k in t if k.startswith("model.") and k.endswith("weight"))
    t[key] = torch.zeros(t[key].shape[0] + 1, *t[key].shape[1:])
    save_file(t, str(path))
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), "does not fit the model")


def test_checkpoint_with_unknown_entry_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, load_manifest(p)["checkpoints"][1])
    t = load_file(str(path))
    t["model.backdoor"] = torch.zeros(3)
    save_file(t, str(path))
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), "model.backdoor")


def test_checkpoint_missing_a_model_tensor_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, load_manifest(p)["checkpoints"][1])
    t = load_file(str(path))
    del t[next(k for k in t if k.startswith("model."))]
    save_file(t, str(path))
    rehash_manifest(p)
    assert_unusable(run_cli("verify", p), "missing")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_without_a_crash(mlp_proof, proof_copy, value):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, load_manifest(p)["checkpoints"][4])
    t = load_file(str(path))
    key = next(k for k in t if k.startswith("model.") and k.endswith("weight"))
    t[key][0, 0] = value
    save_file(t, str(path))
    rehash_manifest(p)
    r = run_cli("verify", p, "--all")
    assert r.exit_code in (1, 2), r.output
    assert "Traceback" not in r.output
    if r.exit_code == 2:
        assert_unusable(r, "nan/inf")


def test_non_finite_optimizer_state_is_refused_without_a_crash(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, load_manifest(p)["checkpoints"][4])
    t = load_file(str(path))
    key = next(k for k in t if k.startswith("optim."))
    t[key].view(-1)[0] = float("nan")
    save_file(t, str(path))
    rehash_manifest(p)
    r = run_cli("verify", p, "--all")
    assert r.exit_code in (1, 2), r.output
    assert "Traceback" not in r.output


# ---------------------------------------------------------------- the verifier's data

def test_user_data_proof_without_data_exits_2(user_proof):
    assert_unusable(run_cli("verify", user_proof.proof), "--data")


def test_user_data_that_does_not_exist_exits_2(user_proof, tmp_path):
    assert_unusable(run_cli("verify", user_proof.proof, "--data", tmp_path / "x.npz"),
                    "no such file")


def test_user_data_npz_without_x_and_y_exits_2(user_proof, tmp_path):
    f = tmp_path / "wrong.npz"
    np.savez(f, a=user_proof.x, b=user_proof.y)
    assert_unusable(run_cli("verify", user_proof.proof, "--data", f), "x and y")


def test_user_data_of_the_wrong_shape_is_rejected_cleanly(user_proof, tmp_path):
    # different number of labels than samples
    f = save_npz(tmp_path / "bad.npz", user_proof.x, user_proof.y[:-1])
    r = run_cli("verify", user_proof.proof, "--data", f)
    assert_unusable(r)


def test_user_data_file_that_is_not_an_npz_exits_2(user_proof, tmp_path):
    f = tmp_path / "garbage.npz"
    f.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    r = run_cli("verify", user_proof.proof, "--data", f)
    assert_unusable(r)


@pytest.mark.parametrize("version", ["1", 0, None, [1]], ids=["string", "zero", "null", "list"])
def test_malformed_format_version_exits_2(mlp_proof, proof_copy, version):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["version"] = version
    write_manifest(p, body, rehash_root=True)
    assert_unusable(run_cli("verify", p), "version")


@pytest.mark.parametrize("version", [True, 1.0], ids=["true", "float"])
def test_version_that_only_compares_equal_to_1_exits_2(mlp_proof, proof_copy, version):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["version"] = version
    write_manifest(p, body, rehash_root=True)
    assert_unusable(run_cli("verify", p), "version")


def test_manifest_that_is_a_directory_exits_2(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    (p / fmt.MANIFEST).unlink()
    (p / fmt.MANIFEST).mkdir()
    assert_unusable(run_cli("verify", p), "manifest.json")


def test_checkpoint_dtype_that_contradicts_the_spec_precision_is_refused(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    m = load_manifest(p)
    assert m["spec"]["precision"] == "fp32"
    for t in m["checkpoints"][1:4]:
        path = checkpoint_path(p, t)
        tensors = {k: (v.to(torch.bfloat16) if k.startswith("model.") else v)
                   for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path))
    rehash_manifest(p)
    r = run_cli("verify", p, "--all")
    assert "Traceback" not in r.output
    assert r.exit_code in (1, 2), r.output
