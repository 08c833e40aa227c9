"""A float32 replay on other hardware than the prover's that fails only where rounding drift can
fail it gives the verdict INCONCLUSIVE (exit 4), never VALID and never a false INVALID; every
other failure, the same hardware, a δ the user gave, or an exact-mode proof keep INVALID."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from pol.verifier.checks import replay as rc


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """An fp16 proof whose replay is not bitwise (trained on from its unrounded state), so the
    auto δ decides, as on other hardware."""
    from pol.prover.trainer import train_task
    out = tmp_path_factory.mktemp("drift") / "mlp"
    train_task("digits-mlp", out, epochs=1, k=10, precision="fp16", continue_from_stored=False)
    return out


def _drift_beyond_auto_delta(monkeypatch):
    """The auto δ a millionth of its size: each replay's error now exceeds it, as a float32
    replay's drift on other hardware does at a large k (the rule stays the auto δ's)."""
    real = rc.auto_deltas
    monkeypatch.setattr(rc, "auto_deltas",
                        lambda *a, **k: {m: v * 1e-6 for m, v in real(*a, **k).items()})


def _other_cpu(monkeypatch):
    monkeypatch.setattr(rc, "current_cpu_capability", lambda: "OTHER-KERNELS")


def test_a_drift_failure_on_the_provers_hardware_stays_invalid(drifting, monkeypatch):
    from pol import verify
    _drift_beyond_auto_delta(monkeypatch)
    r = verify(drifting, all_segments=True, progress=False)
    assert r.verdict == "invalid" and not r.valid and not r.inconclusive
    assert next(c for c in r.checks if c.name == "replay").status == "fail"


def test_a_drift_failure_on_other_hardware_is_inconclusive(drifting, monkeypatch):
    from pol import verify
    from pol.verifier.html import report_from_dict
    _drift_beyond_auto_delta(monkeypatch)
    _other_cpu(monkeypatch)
    r = verify(drifting, all_segments=True, progress=False)
    assert r.verdict == "inconclusive" and not r.valid and r.inconclusive
    replay = next(c for c in r.checks if c.name == "replay")
    assert replay.status == "inconclusive" and replay.blocks
    assert "replayed here with OTHER-KERNELS" in replay.reason
    assert "prover's kind of hardware" in replay.reason
    assert not any(c.failed for c in r.checks)
    text = r.render()
    assert "???? replay" in text and "verdict: INCONCLUSIVE" in text
    back = report_from_dict(json.loads(r.to_json()))  # the JSON schema takes it
    assert back.verdict == "inconclusive"
    from pol.verifier.html import render_html
    page = render_html(back)
    assert 'class="verdict inconclusive"' in page and '<tr class="inconclusive">' in page
    res = run_cli("verify", drifting, "--all")
    assert res.exit_code == 4, res.output
    assert "verdict: INCONCLUSIVE" in res.stdout


def test_a_delta_the_user_gave_decides_on_other_hardware_too(drifting, monkeypatch):
    from pol import verify
    _other_cpu(monkeypatch)
    r = verify(drifting, all_segments=True, progress=False, delta={"l2": 1e-12})
    assert r.verdict == "invalid"


def _spec(**kw):
    from pol.tasks import build_spec
    spec, _, _ = build_spec("digits-mlp", **kw)
    return spec


def test_only_drift_checks_on_other_hardware_with_the_auto_delta_are_left_open():
    cpu = torch.device("cpu")
    gpu_proof = _spec(device="cuda", deterministic=True)
    why = rc.undecidable_here({"replay", "relative error"}, rc.Tally(), gpu_proof, cpu,
                              rc.DELTA_RULE)
    assert "made on cuda, replayed here on cpu" in why
    # a failure drift cannot cause decides
    assert rc.undecidable_here({"replay", "data dependence"}, rc.Tally(), gpu_proof, cpu,
                               rc.DELTA_RULE) == ""
    assert rc.undecidable_here({"replay"}, rc.Tally(firm=["step 3: recorded loss nan"]),
                               gpu_proof, cpu, rc.DELTA_RULE) == ""
    # a δ given or calibrated for this pair decides
    assert rc.undecidable_here({"replay"}, rc.Tally(), gpu_proof, cpu, "given") == ""
    # exact-mode proofs replay bitwise anywhere; a CPU proof on this CPU is its own hardware
    exact = _spec(device="cuda", deterministic=True, exact=True)
    assert rc.undecidable_here({"replay"}, rc.Tally(), exact, cpu, rc.DELTA_RULE) == ""
    assert rc.undecidable_here({"replay"}, rc.Tally(), _spec(), cpu, rc.DELTA_RULE) == ""
    assert rc.undecidable_here(set(), rc.Tally(), gpu_proof, cpu, rc.DELTA_RULE) == ""


def test_step_counters_that_differ_are_no_drift():
    from types import SimpleNamespace as Seg

    from pol.verifier.policy import resolve
    policy = resolve("hardened")
    tally = rc.Tally()
    out = Seg(start=0, end=10, error={"l2": 0.0}, exact=False, data_ok=True, loss_bad=[],
              steps_ok=False, state_error=0.0, state_change=1.0, flip=float("inf"))
    assert not rc.judge_segment(out, {"l2": 1.0}, {"l2": 1.0}, ["l2"], False, policy, tally)
    assert tally.firm and "step counters" in tally.firm[0]


def test_the_reason_is_given_once():
    from pol.verifier.report import Report
    r = Report(proof="p", root_digest="d")
    r.add("loss replay", False, "loss differs")
    r.add("data hashes", True, "ok")
    r.add("replay", False, "over δ")
    r.leave_open({"loss replay", "replay"}, "WHY")
    loss, hashes, replay = r.checks
    assert (loss.status, hashes.status, replay.status) == ("inconclusive", "pass", "inconclusive")
    assert replay.reason == "over δ; WHY" and "WHY" not in loss.reason
    assert "see the replay check" in loss.reason
    assert r.verdict == "inconclusive"


def test_a_float32_gpu_proof_on_another_gpu_model_is_not_expected_bitwise(monkeypatch):
    """A deterministic float32 GPU proof names its GPU model; on another model the replay is
    not expected bitwise (tolerant, drift failures inconclusive) instead of held to δ = 0; the
    same model, or a proof that does not name one, is held to bitwise replay as before."""
    from pol.spec import TrainingSpec
    cuda = torch.device("cuda")
    proof = _spec(device="cuda", deterministic=True).with_(gpu_name="NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(rc.torch, "__version__", proof.torch_version)
    monkeypatch.setattr(rc, "current_gpu_name", lambda device=None: "NVIDIA H200")
    assert not rc.expect_exact(proof, cuda)
    assert rc.hardware_differs(proof, cuda) == ("made on NVIDIA A100-SXM4-80GB, replayed here "
                                                "on NVIDIA H200")
    assert "A100" in rc.undecidable_here({"replay"}, rc.Tally(), proof, cuda, rc.DELTA_RULE)
    for same in (proof.with_(gpu_name="NVIDIA H200"), proof.with_(gpu_name="")):
        assert rc.expect_exact(same, cuda) and rc.hardware_differs(same, cuda) == ""
    # recorded in the spec's JSON only where known (older proofs keep their bytes)
    assert TrainingSpec.from_dict(proof.to_dict()).gpu_name == "NVIDIA A100-SXM4-80GB"
    assert "gpu_name" not in _spec().to_dict()
