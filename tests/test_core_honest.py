"""Honest proofs verify: every built-in small task, top-Q and all segments, fp32 and fp16."""

from __future__ import annotations

import pytest

from pol.verifier import verify

from conftest import EPOCHS, check, failed_checks

EXPECTED_CHECKS = {"integrity", "dataset commitment", "learning rates", "checkpoint digests",
                   "initialization", "data hashes", "replay", "exact replay"}


def _segments_by_epoch(report) -> dict[int, list]:
    out: dict[int, list] = {}
    for s in report.segments:
        out.setdefault(s.epoch, []).append(s)
    return out


def test_honest_mlp_fp32_top1_is_valid(mlp_proof):
    r = verify(mlp_proof, policy="paper")
    assert r.valid, r.render()
    assert failed_checks(r) == set()
    assert EXPECTED_CHECKS <= {c.name for c in r.checks}
    by_epoch = _segments_by_epoch(r)
    assert sorted(by_epoch) == list(range(EPOCHS))
    assert all(len(v) == 1 for v in by_epoch.values())
    assert all(s.why == "top-q" for s in r.segments)


def test_top_q_replays_the_q_largest_updates_of_each_epoch(mlp_proof, mlp_report_all):
    r = verify(mlp_proof, q=2, policy="paper")
    assert r.valid, r.render()
    by_epoch = _segments_by_epoch(r)
    assert sorted(by_epoch) == list(range(EPOCHS))
    assert all(len(v) == 2 for v in by_epoch.values())
    # the chosen segments are the two with the largest d1 (l2) in their epoch
    all_by_epoch = _segments_by_epoch(mlp_report_all)
    for e, segs in by_epoch.items():
        ranked = sorted(all_by_epoch[e], key=lambda s: (-s.d1, s.start))
        assert {s.start for s in segs} == {s.start for s in ranked[:2]}


def test_honest_mlp_fp32_all_segments_is_valid_and_bitwise_exact(mlp_report_all, mlp_run):
    r = mlp_report_all
    assert r.valid, r.render()
    ck = list(range(0, mlp_run.total_steps, mlp_run.spec.k)) + [mlp_run.total_steps]
    assert [(s.start, s.end) for s in r.segments] == list(zip(ck, ck[1:]))
    assert all(s.why == "all" for s in r.segments)
    assert all(s.exact for s in r.segments), r.render(verbose=True)
    assert all(s.passed for s in r.segments)
    assert all(v == 0.0 for s in r.segments for v in s.error.values())
    assert check(r, "exact replay").status == "pass"
    assert r.stats["replayed_steps"] == r.stats["total_steps"] == mlp_run.total_steps


def test_honest_mlp_fp32_top_q_replays_are_bitwise_exact(mlp_proof):
    r = verify(mlp_proof, q=2)
    assert r.segments and all(s.exact for s in r.segments)


@pytest.mark.parametrize("kw", [{}, {"q": 2}, {"all_segments": True}],
                         ids=["top1", "top2", "all"])
def test_honest_mlp_fp16_is_valid(mlp16_proof, kw):
    r = verify(mlp16_proof, **kw)
    assert r.valid, r.render(verbose=True)
    assert all(s.passed for s in r.segments)
    assert r.deltas["l2"] > 0


def test_fp16_proof_stores_half_precision_weights(mlp16_proof):
    from safetensors.torch import load_file
    import torch

    from conftest import checkpoint_path, load_manifest
    m = load_manifest(mlp16_proof)
    assert m["spec"]["precision"] == "fp16"
    t = load_file(str(checkpoint_path(mlp16_proof, m["checkpoints"][-1])))
    weights = [v for k, v in t.items() if k.startswith("model.")]
    assert weights and all(v.dtype == torch.float16 for v in weights)


def test_honest_iris_logreg_verifies_with_all_segments(iris_proof):
    r = verify(iris_proof, all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.stats["replayed_steps"] == r.stats["total_steps"]
    assert all(s.exact for s in r.segments)


def test_honest_digits_cnn_adam_verifies_with_all_segments(cnn_proof):
    r = verify(cnn_proof, all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.stats["replayed_steps"] == r.stats["total_steps"]
    assert all(s.exact for s in r.segments)


def test_adam_checkpoints_carry_the_optimizer_state(cnn_proof):
    from safetensors.torch import load_file

    from conftest import checkpoint_path, load_manifest
    m = load_manifest(cnn_proof)
    assert m["spec"]["optimizer"]["name"] == "adam"
    t = load_file(str(checkpoint_path(cnn_proof, m["checkpoints"][1])))
    keys = set(t)
    assert any(k.endswith(".exp_avg") for k in keys)
    assert any(k.endswith(".exp_avg_sq") for k in keys)
    assert any(k.endswith(".step") for k in keys)


def test_hardened_default_adds_random_segments_and_exact_mode(mlp_proof):
    r = verify(mlp_proof)
    assert r.policy == "hardened" and r.valid, r.render()
    assert {s.why for s in r.segments} == {"top-q", "random"}
    assert all(v == 0.0 for v in r.deltas.values())  # exact mode on the prover's device type
    for name in ("init regeneration", "loss replay", "relative error"):
        assert check(r, name).status == "pass"
