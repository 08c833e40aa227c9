"""Forged proofs are rejected, each by the check that is responsible for it.

Most forgeries recompute every digest (`rehash_manifest`, `root_digest`) as a real forger would, so
that only the verifier's semantic checks (data commitment, initialization, replay) can catch them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from pol.demo import perturb_checkpoint
from pol.proof import format as fmt
from pol.proof.hashing import batch_hashes, sample_leaves
from pol.proof.writer import rehash_manifest
from pol.verifier import verify

from conftest import (check, checkpoint_path, failed_checks, load_manifest, run_cli,
                      save_npz, write_manifest)


def _save_npy(path, arr) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    path.write_bytes(buf.getvalue())


def _load_npy(path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


# ---------------------------------------------------------------- perturbed checkpoint (rehashed)

def test_perturbed_checkpoint_with_recomputed_digests_fails_replay(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    m = load_manifest(p)
    t = m["checkpoints"][len(m["checkpoints"]) // 2]
    perturb_checkpoint(p, t, norm=1.0)  # ~10x the mean single-step update
    r = verify(p, all_segments=True)
    assert not r.valid
    assert "replay" in failed_checks(r)
    # the digests were recomputed: integrity and checkpoint digests still pass
    assert check(r, "integrity").status == "pass"
    assert check(r, "checkpoint digests").status == "pass"
    # exactly the two segments that touch the perturbed checkpoint are off
    bad = {(s.start, s.end) for s in r.segments if not s.passed}
    k = m["k"]
    assert bad == {(t - k, t), (t, t + k)}


def test_perturbation_as_large_as_one_update_is_caught_by_top_q(mlp_proof, mlp_report_all,
                                                               proof_copy):
    # as `pol demo` does: a checkpoint in the middle of the last epoch, moved by as much as the
    # largest honest segment update of that epoch
    honest = mlp_report_all
    last = max(s.epoch for s in honest.segments)
    norm = max(s.update["l2"] for s in honest.segments if s.epoch == last)
    m = load_manifest(mlp_proof)
    S, T = m["steps_per_epoch"], m["total_steps"]
    mid = [t for t in m["checkpoints"] if (m["epochs"] - 1) * S < t < T]
    t = mid[len(mid) // 2]
    p = proof_copy(mlp_proof)
    perturb_checkpoint(p, t, norm)
    r = verify(p)  # top-1 per epoch
    assert not r.valid
    assert "replay" in failed_checks(r)
    assert any(not s.passed and t in (s.start, s.end) for s in r.segments)


def test_perturbed_fp16_checkpoint_fails_replay(mlp16_proof, proof_copy):
    p = proof_copy(mlp16_proof)
    m = load_manifest(p)
    perturb_checkpoint(p, m["checkpoints"][3], norm=0.5)
    r = verify(p, all_segments=True)
    assert "replay" in failed_checks(r)


# ---------------------------------------------------------------- checkpoint changed, no rehash

def test_checkpoint_changed_without_rehash_fails_checkpoint_digests(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    m = load_manifest(p)
    path = checkpoint_path(p, m["checkpoints"][2])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight; size unchanged
    path.write_bytes(bytes(data))
    r = verify(p, all_segments=True)
    assert not r.valid
    assert failed_checks(r) & {"checkpoint digests", "integrity"}
    assert check(r, "checkpoint digests").failed


def test_checkpoint_changed_without_rehash_cli_exits_1(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    path = checkpoint_path(p, 0)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    r = run_cli("verify", p)
    assert r.exit_code == 1, r.output
    assert "FAIL checkpoint digests" in r.stdout
    assert "Traceback" not in r.output


def test_per_step_array_changed_without_rehash_fails_integrity(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    lrs = _load_npy(p / fmt.LRS).copy()
    lrs[5, 0] *= 1.5
    _save_npy(p / fmt.LRS, lrs)
    r = verify(p)
    assert failed_checks(r) == {"integrity"}


# ---------------------------------------------------------------- batch indices

def _swap_rows(p, a: int, b: int) -> np.ndarray:
    idx = _load_npy(p / fmt.INDICES).copy()
    assert not np.array_equal(idx[a], idx[b])
    idx[[a, b]] = idx[[b, a]]
    _save_npy(p / fmt.INDICES, idx)
    return idx


def test_swapped_index_rows_fail_data_hashes(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    _swap_rows(p, 12, 13)
    rehash_manifest(p)
    r = verify(p, all_segments=True)
    assert not r.valid
    assert "data hashes" in failed_checks(r)
    assert check(r, "integrity").status == "pass"


def _swap_rows_consistently(p, a: int, b: int) -> None:
    from pol.datasets import load_dataset
    idx = _swap_rows(p, a, b)
    train, _ = load_dataset("digits", {})
    leaves = sample_leaves(train.x, train.y)
    _save_npy(p / fmt.BATCH_HASHES, batch_hashes(leaves, idx))
    rehash_manifest(p)


def test_swapped_index_rows_with_consistent_batch_hashes_fail_replay(mlp_proof, proof_copy):
    # batches of step 2 (first segment) and step 85 (last segment) exchanged, batch hashes
    # recomputed: both segments replay to a different end point
    p = proof_copy(mlp_proof)
    _swap_rows_consistently(p, 2, 85)
    r = verify(p, all_segments=True)
    assert not r.valid
    assert check(r, "data hashes").status == "pass"  # the hashes are consistent now...
    assert check(r, "integrity").status == "pass"
    assert "replay" in failed_checks(r)              # ...but the order changed the trajectory
    assert {(s.start, s.end) for s in r.segments if s.error["l2"] > 0} == {(0, 10), (80, 90)}


def test_adjacent_swapped_rows_are_caught_by_exact_replay_policy(mlp_proof, proof_copy):
    # two neighbouring batches of one segment exchanged: the end point moves by less than the
    # auto delta (one mean step update), but an fp32 CPU proof replays bitwise, so delta = 0 does
    # catch it
    p = proof_copy(mlp_proof)
    _swap_rows_consistently(p, 12, 13)
    r = verify(p, all_segments=True, delta={"l1": 0.0, "l2": 0.0, "linf": 0.0, "cos": 0.0})
    assert check(r, "data hashes").status == "pass"
    assert "replay" in failed_checks(r)
    assert [(s.start, s.end) for s in r.segments if not s.passed] == [(10, 20)]
    assert check(r, "exact replay").status == "warn"  # exactness was expected here


# ---------------------------------------------------------------- dataset commitment

def test_one_changed_pixel_in_the_verifiers_data_fails_dataset_commitment(user_proof, tmp_path):
    x = user_proof.x.copy()
    x[17, 3] += 0.5
    npz = save_npz(tmp_path / "altered.npz", x, user_proof.y)
    r = verify(user_proof.proof, data=str(npz))
    assert not r.valid
    assert "dataset commitment" in failed_checks(r)


def test_one_relabelled_sample_fails_dataset_commitment(user_proof, tmp_path):
    y = user_proof.y.copy()
    y[5] = (y[5] + 1) % 3
    npz = save_npz(tmp_path / "relabelled.npz", user_proof.x, y)
    r = verify(user_proof.proof, data=str(npz))
    assert "dataset commitment" in failed_checks(r)


def test_the_committed_user_data_passes_dataset_commitment(user_proof):
    r = verify(user_proof.proof, data=str(user_proof.npz))
    assert check(r, "dataset commitment").status == "pass"


# ---------------------------------------------------------------- initialization

def test_trained_weights_passed_off_as_initialization_fail_init_check(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    m = load_manifest(p)
    final = checkpoint_path(p, m["checkpoints"][-1])
    checkpoint_path(p, 0).write_bytes(final.read_bytes())
    rehash_manifest(p)
    r = verify(p)
    assert not r.valid
    assert "initialization" in failed_checks(r)


def test_trained_model_weights_only_as_initialization_fail_init_check(mlp_proof, proof_copy):
    # W_0 := the final model's weights, no optimizer state (as a real W_0 has none)
    p = proof_copy(mlp_proof)
    m = load_manifest(p)
    final = load_file(str(checkpoint_path(p, m["checkpoints"][-1])))
    w0 = {k: v for k, v in final.items() if k.startswith("model.")}
    save_file(w0, str(checkpoint_path(p, 0)), metadata={"format": fmt.FORMAT_NAME, "step": "0"})
    rehash_manifest(p)
    r = verify(p, all_segments=True)
    assert "initialization" in failed_checks(r)
    assert "replay" in failed_checks(r)


# ---------------------------------------------------------------- hyperparameters in the manifest

def test_edited_momentum_without_rehash_fails_integrity(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["spec"]["optimizer"]["momentum"] = 0.5
    write_manifest(p, body, rehash_root=False)
    r = verify(p)
    assert failed_checks(r) == {"integrity"}
    assert run_cli("verify", p).exit_code == 1


def test_edited_lr_without_rehash_fails_integrity_cli_exit_1(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["spec"]["optimizer"]["lr"] = 0.1
    write_manifest(p, body, rehash_root=False)
    r = run_cli("verify", p)
    assert r.exit_code == 1, r.output
    assert "FAIL integrity" in r.stdout
    assert "Traceback" not in r.output


def test_edited_momentum_with_recomputed_root_fails_replay(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    assert body["spec"]["optimizer"]["momentum"] == 0.9
    body["spec"]["optimizer"]["momentum"] = 0.5
    write_manifest(p, body, rehash_root=True)
    r = verify(p, all_segments=True)
    assert not r.valid
    assert check(r, "integrity").status == "pass"
    assert "replay" in failed_checks(r)
    assert all(not s.passed for s in r.segments[1:])  # every segment with momentum state


def test_edited_lr_with_recomputed_root_fails_learning_rates(mlp_proof, proof_copy):
    """The recorded per-step lrs no longer follow the declared schedule: the proof is invalid even
    though the trajectory itself still replays with the recorded values."""
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["spec"]["optimizer"]["lr"] = 0.1
    write_manifest(p, body, rehash_root=True)
    r = verify(p, all_segments=True)
    c = check(r, "learning rates")
    assert c.status == "fail" and not r.valid
    assert "step 0" in c.reason
    assert check(r, "integrity").status == "pass"


def test_recorded_lrs_edited_consistently_fail_replay(mlp_proof, proof_copy):
    """lr of the recorded steps doubled and the spec's lr with it (schedule still consistent):
    the recorded checkpoints no longer follow from the recorded lrs."""
    p = proof_copy(mlp_proof)
    lrs = _load_npy(p / fmt.LRS).copy()
    _save_npy(p / fmt.LRS, lrs * 2)
    rehash_manifest(p)
    body = load_manifest(p)
    body["spec"]["optimizer"]["lr"] = float(lrs[0, 0] * 2)
    write_manifest(p, body, rehash_root=True)
    r = verify(p, all_segments=True)
    assert check(r, "learning rates").status == "pass"
    assert "replay" in failed_checks(r)


# ---------------------------------------------------------------- user-data proofs

def test_perturbed_user_loop_proof_fails_replay(user_proof, proof_copy):
    p = proof_copy(user_proof.proof)
    m = load_manifest(p)
    perturb_checkpoint(p, m["checkpoints"][2], norm=0.5)
    r = verify(p, data=str(user_proof.npz), all_segments=True)
    assert "replay" in failed_checks(r)


@pytest.mark.parametrize("metric", ["l1", "l2", "linf", "cos"])
def test_each_metric_alone_rejects_a_perturbed_checkpoint(mlp_proof, proof_copy, metric):
    p = proof_copy(mlp_proof)
    m = load_manifest(p)
    perturb_checkpoint(p, m["checkpoints"][4], norm=0.5)
    r = verify(p, all_segments=True, metrics=(metric,))
    assert "replay" in failed_checks(r), r.render()


def test_rewritten_losses_pass_the_paper_policy_but_not_the_hardened_one(mlp_proof, proof_copy):
    # Algorithm 2 ignores the recorded losses; the hardened policy recomputes them
    p = proof_copy(mlp_proof)
    losses = _load_npy(p / fmt.LOSSES).copy()
    losses[:] = 0.0
    _save_npy(p / fmt.LOSSES, losses)
    rehash_manifest(p)
    r = verify(p, all_segments=True, policy="paper")
    assert r.valid, r.render()
    assert all(s.exact for s in r.segments)
    assert "loss replay" in failed_checks(verify(p, all_segments=True))


def test_files_not_covered_by_the_manifest_are_a_warning_only(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    (p / "notes.txt").write_text("not part of the proof")
    r = verify(p)
    assert r.valid
    c = check(r, "extra files")
    assert c.status == "warn" and "notes.txt" in c.reason
