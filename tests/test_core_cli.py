"""The `pol` command line: train, verify (exit codes, JSON report, δ options), inspect."""

from __future__ import annotations

import json

import pytest

from pol.demo import perturb_checkpoint
from pol.proof import format as fmt

from conftest import assert_unusable, load_manifest, run_cli


# ---------------------------------------------------------------- train

@pytest.fixture(scope="session")
def cli_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "iris"
    r = run_cli("train", "--task", "iris-logreg", "--epochs", "2", "--out", out)
    return out, r


def test_train_writes_a_proof_and_prints_accuracy(cli_trained):
    out, r = cli_trained
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.stdout
    assert "%" in r.stdout
    assert (out / fmt.MANIFEST).is_file()
    assert not (out / fmt.PROGRESS).exists()
    m = load_manifest(out)
    assert m["root_digest"] in r.stdout
    assert m["spec"]["task"] == "iris-logreg" and m["epochs"] == 2


def test_trained_proof_verifies_from_the_cli(cli_trained):
    out, _ = cli_trained
    r = run_cli("verify", out, "--all")
    assert r.exit_code == 0, r.output
    assert "verdict: VALID" in r.stdout


def test_train_refuses_a_non_empty_output_directory(cli_trained):
    out, _ = cli_trained
    r = run_cli("train", "--task", "iris-logreg", "--epochs", "1", "--out", out)
    assert_unusable(r, "not empty")
    assert (out / fmt.MANIFEST).is_file()  # the existing proof is untouched


@pytest.mark.parametrize("args, fragment", [
    (["--task", "no-such-task"], "unknown task"),
    (["--epochs", "0"], None),
    (["--k", "0"], None),
    (["--lr", "-1"], None),
    (["--precision", "fp8"], None),
    (["--device", "no-such-device"], None),
])
def test_train_with_bad_options_exits_2(tmp_path, args, fragment):
    r = run_cli("train", "--out", tmp_path / "p", *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    if fragment:
        assert_unusable(r, fragment)
    assert not (tmp_path / "p" / fmt.MANIFEST).exists()


def test_tasks_lists_the_built_in_tasks():
    r = run_cli("tasks")
    assert r.exit_code == 0
    for name in ("digits-mlp", "digits-cnn", "iris-logreg"):
        assert name in r.stdout


# ---------------------------------------------------------------- verify

def test_verify_exits_0_on_an_honest_proof(mlp_proof):
    r = run_cli("verify", mlp_proof)
    assert r.exit_code == 0, r.output
    assert "verdict: VALID" in r.stdout
    assert r.stderr == ""


def test_verify_exits_1_on_a_forged_proof(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    perturb_checkpoint(p, 40, norm=1.0)
    r = run_cli("verify", p, "--all")
    assert r.exit_code == 1, r.output
    assert "verdict: INVALID" in r.stdout
    assert "FAIL replay" in r.stdout
    assert "Traceback" not in r.output


def test_verify_verbose_lists_every_segment(mlp_proof):
    r = run_cli("verify", mlp_proof, "--all", "-V")
    assert r.exit_code == 0
    T, k = 90, 10
    for a in range(0, T, k):
        assert f"[{a:>6},{min(a + k, T):>6})" in r.stdout


def test_json_report_has_the_documented_schema(mlp_proof, tmp_path):
    out = tmp_path / "report.json"
    r = run_cli("verify", mlp_proof, "--q", "2", "--policy", "paper", "--json", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["schema"] == "pol-report/1"
    assert rep["verdict"] == "valid"
    assert rep["root_digest"] == load_manifest(mlp_proof)["root_digest"]
    assert {c["name"] for c in rep["checks"]} >= {"integrity", "dataset commitment",
                                                 "initialization", "replay"}
    assert all(c["status"] in ("pass", "fail", "warn", "skip") for c in rep["checks"])
    assert len(rep["segments"]) == 4
    seg = rep["segments"][0]
    assert set(seg) >= {"start", "end", "epoch", "d1", "update", "error", "passed", "exact", "why"}
    assert set(seg["error"]) == {"l1", "l2", "linf", "cos"}
    assert set(rep["deltas"]) == {"l1", "l2", "linf", "cos"}
    assert rep["stats"]["total_steps"] == 90


def test_json_report_of_a_forged_proof_says_invalid(mlp_proof, proof_copy, tmp_path):
    p = proof_copy(mlp_proof)
    perturb_checkpoint(p, 50, norm=1.0)
    out = tmp_path / "report.json"
    r = run_cli("verify", p, "--all", "--json", out)
    assert r.exit_code == 1
    rep = json.loads(out.read_text())
    assert rep["verdict"] == "invalid"
    replay = next(c for c in rep["checks"] if c["name"] == "replay")
    assert replay["status"] == "fail"
    assert any(not s["passed"] for s in rep["segments"])


def test_delta_zero_on_fp32_cpu_proof_passes_because_replay_is_exact(mlp_proof):
    r = run_cli("verify", mlp_proof, "--all", "--delta", "l2=0")
    assert r.exit_code == 0, r.output
    r = run_cli("verify", mlp_proof, "--all", "--delta", "l1=0", "--delta", "l2=0",
                "--delta", "linf=0", "--delta", "cos=0")
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def tolerant16_proof(tmp_path_factory):
    """An fp16 proof whose replay is not bitwise (trained on from its unrounded state: what a
    replay on other hardware looks like), so δ decides."""
    from pol.prover.trainer import train_task
    out = tmp_path_factory.mktemp("tol16") / "mlp"
    train_task("digits-mlp", out, epochs=1, k=10, precision="fp16", continue_from_stored=False)
    return out


def test_tiny_delta_on_fp16_proof_fails_replay(tolerant16_proof):
    r = run_cli("verify", tolerant16_proof, "--all", "--delta", "l2=1e-12")
    assert r.exit_code == 1, r.output
    assert "FAIL replay" in r.stdout


def test_bare_delta_number_applies_to_the_first_metric(tolerant16_proof, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("verify", tolerant16_proof, "--metric", "linf", "--delta", "1e-12", "--json", out)
    assert r.exit_code == 1, r.output
    rep = json.loads(out.read_text())
    assert rep["metrics"] == ["linf"]
    assert rep["deltas"]["linf"] == 1e-12


@pytest.mark.parametrize("args", [
    ["--q", "0"],
    ["--q", "x"],
    ["--delta", "l2=abc"],
    ["--delta", "l2=-1"],
    ["--delta", "nan"],
    ["--metric", "l3"],
    ["--d1", "manhattan"],
    ["--alpha", "0"],
    ["--alpha", "1.5"],
    ["--max-proof-gb", "0"],
    ["--device", "no-such-device"],
], ids=lambda a: " ".join(a))
def test_verify_with_bad_option_values_exits_2(mlp_proof, args):
    r = run_cli("verify", mlp_proof, *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert "verdict" not in r.stdout


@pytest.mark.parametrize("args", [["--delta", "l3=0"], ["--metric", "l2", "--delta", "linf=0"]],
                         ids=["unknown-metric", "metric-not-compared"])
def test_delta_for_a_metric_that_is_not_compared_exits_2(mlp16_proof, args):
    r = run_cli("verify", mlp16_proof, *args)
    assert r.exit_code == 2, r.output


def test_proof_over_the_size_limit_exits_2(mlp_proof):
    r = run_cli("verify", mlp_proof, "--max-proof-gb", "1e-6")
    assert_unusable(r)


def test_proof_over_the_total_size_limit_says_how_to_raise_it(mlp_proof):
    # 1 MB: every file fits, the whole proof (1.35 MB) does not
    r = run_cli("verify", mlp_proof, "--max-proof-gb", str(1e6 / 2**30))
    assert_unusable(r, "limit", "--max-proof-gb")


def test_file_over_the_size_limit_names_the_limit(mlp_proof):
    r = run_cli("verify", mlp_proof, "--max-proof-gb", "1e-6")
    assert_unusable(r, "limit")


def test_unknown_command_exits_2():
    r = run_cli("frobnicate")
    assert r.exit_code == 2


# ---------------------------------------------------------------- inspect

def test_inspect_shows_the_proof_shape_and_root_digest(mlp_proof):
    r = run_cli("inspect", mlp_proof)
    assert r.exit_code == 0, r.output
    m = load_manifest(mlp_proof)
    assert m["root_digest"] in r.stdout
    assert "E=2 S=45 T=90 k=10; 10 checkpoints" in r.stdout
    assert "digits-mlp" in r.stdout
    assert "sgd lr 0.05 momentum 0.9" in r.stdout


def test_inspect_json_matches_the_manifest(mlp_proof):
    r = run_cli("inspect", mlp_proof, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    m = load_manifest(mlp_proof)
    assert info["root_digest"] == m["root_digest"]
    assert (info["epochs"], info["steps_per_epoch"], info["total_steps"], info["k"]) == \
        (2, 45, 90, 10)
    assert info["num_checkpoints"] == len(m["checkpoints"]) == 10
    assert info["format_version"] == 1
    assert set(info["files"]) == set(m["files"])


def test_inspect_of_a_tampered_manifest_does_not_show_it_as_good(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    body["spec"]["optimizer"]["momentum"] = 0.0
    (p / fmt.MANIFEST).write_text(json.dumps(body))
    r = run_cli("inspect", p)
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ") and "root digest" in r.stderr
    assert "Traceback" not in r.output


# ---------------------------------------------------------------- demo

def test_demo_shows_an_honest_proof_accepted_and_a_tampered_one_rejected(tmp_path):
    r = run_cli("demo", "--out", tmp_path / "demo")
    assert r.exit_code == 0, r.output
    assert "honest proof: VALID" in r.stdout
    assert "tampered proof: INVALID" in r.stdout
    assert "failed check: replay" in r.stdout
    assert (tmp_path / "demo" / "honest" / fmt.MANIFEST).is_file()


def test_the_resume_option_that_error_messages_recommend_exists(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    (p / fmt.MANIFEST).unlink()
    (p / fmt.PROGRESS).write_text("{}")
    hint = run_cli("verify", p).stderr
    assert "pol train --resume" in hint
    r = run_cli("train", "--resume", p)
    assert "No such option" not in r.output, r.output
