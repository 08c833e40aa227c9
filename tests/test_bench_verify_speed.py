"""benchmarks/bench_verify_speed.py: model and dataset overrides reach the proof's spec (and
`pol verify` rebuilds that model), the CIFAR-10 binary writer round-trips through pol's loader,
the torch.profiler summary and the memory figures land in the JSON, and a zero budget skips every
optional phase."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_verify_speed as bvs  # noqa: E402

from conftest import run_cli  # noqa: E402

TINY = ["--task", "synthetic-gpt", "--model-arg", "n_layer=1", "--model-arg", "n_embd=16",
        "--model-arg", "n_head=2", "--dataset-arg", "n_train=64", "--dataset-arg",
        "block_size=16", "--dataset-arg", "vocab_size=32", "--dataset-arg", "n_test=8",
        "--batch-size", "16", "--k", "2", "--threads", "1"]


def test_overrides_from_preset_dataset_and_model_args():
    from bench_scale import SIZES
    a = bvs.parse(["--task", "synthetic-gpt", "--gpt-size", "small", "--dataset-arg",
                   "block_size=64", "--dataset-arg", "vocab_size=100", "--model-arg",
                   "n_layer=1", "--n-train", "32"])
    dp = bvs.dataset_params(a)
    assert dp == {"seed": 0, "n_train": 32, "n_test": 64, "block_size": 64, "vocab_size": 100}
    assert bvs.model_overrides(a, dp) == {**SIZES["small"], "n_layer": 1, "block_size": 64,
                                          "vocab_size": 100}
    # a model without block_size / vocab_size arguments gets none
    r = bvs.parse(["--task", "synthetic-resnet20", "--dataset-arg", "num_classes=10"])
    assert bvs.model_overrides(r, bvs.dataset_params(r)) == {}
    assert bvs.settings(["a=[1, 2]", "b=x", "c-d=0.5"], "--x") == {"a": [1, 2], "b": "x",
                                                                   "c_d": 0.5}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bvs.settings(["novalue"], "--model-arg")
    with pytest.raises(SystemExit, match="--gpt-size huge"):
        bvs.model_overrides(bvs.parse(["--task", "synthetic-gpt", "--gpt-size", "huge"]), {})


def test_write_cifar10_round_trip(tmp_path):
    from pol.datasets import load_dataset
    d = bvs.write_cifar10(tmp_path / "c10", n_train=12, n_test=3)
    tr, te = load_dataset("cifar10", {}, str(d))
    want, want_t = load_dataset("synthetic-cifar", {"seed": 0, "n_train": 12, "n_test": 3})
    assert np.array_equal(tr.x, want.x) and np.array_equal(tr.y, want.y)
    assert np.array_equal(te.x, want_t.x) and np.array_equal(te.y, want_t.y)
    first = (d / "data_batch_1.bin").read_bytes()
    bvs.write_cifar10(d, n_train=50, n_test=10)  # files there: kept as they are
    assert (d / "data_batch_1.bin").read_bytes() == first


def test_union_of_intervals():
    assert bvs._union_ms([]) == 0.0
    assert bvs._union_ms([(3000, 4000), (0, 1000), (500, 2000), (600, 700)]) == 3.0


def test_tiny_gpt_run_profile_memory_budget(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    bvs.main([*TINY, "--torch-profile", "--profile-skip", "1", "--profile-steps", "2",
              "--profile-replay-steps", "1", "--repeats", "2", "--budget-s", "0",
              "--work", str(work), "--out", str(out)])
    text = capsys.readouterr().out
    doc = json.loads((out / "verify_speed_synthetic-gpt_cpu.json").read_text())

    # the overrides are in the proof's spec, and `pol verify` (a fresh model from that spec)
    # replays it bitwise
    from pol.proof.reader import open_proof
    spec = open_proof(work / "proof0").manifest.spec
    assert {k: spec.model.kwargs[k] for k in ("n_layer", "n_embd", "n_head", "block_size",
                                              "vocab_size")} == \
        {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16, "vocab_size": 32}
    assert spec.data.params["n_train"] == 64 and spec.data.params["block_size"] == 16
    r = run_cli("verify", work / "proof0", "--all")
    assert r.exit_code == 0, r.output

    prof = doc["warmup"]["torch_profile"]
    train, replay = prof["train"], prof["replay"]
    assert train["gaps"]["steps"] == 2 and train["label"] == "training, steps 2–3"
    assert replay["label"].startswith("replay of segment 2–4 (the load and steps 2–2 ")
    assert [p["part"] for p in replay["parts"]] == ["the load and steps 2–2", "the end"]
    for p in (train, replay):
        names = [o["name"] for o in p["ops"]]
        assert 0 < len(names) <= bvs.TOP_OPS and "aten::mm" in names
        assert p["ops"][0]["self_cpu_ms"] >= p["ops"][-1]["self_cpu_ms"]
        g = p["gaps"]
        assert g["window_ms"] > 0 and 0 <= g["host_in_ops_ms"] <= g["window_ms"] + 1e-6
        assert g["device_busy_ms"] is None  # no device on a CPU
    assert replay["line"] in text and "top 25 ops by self_cpu time" in text
    assert (out / "torch_profile_synthetic-gpt_cpu.txt").read_text().count("aten::mm") >= 2

    mem = doc["rounds"][0]["verify_all"]["memory"]
    assert mem["peak_rss_mib"] >= mem["rss_before_mib"] > 0 and "cuda_peak_mib" not in mem
    assert doc["summary"]["verify_all_peak_rss_mib"]["median"] == mem["peak_rss_mib"]

    # budget 0: the first round runs, the second and the optional phases are skipped
    assert len(doc["rounds"]) == 1 and "round 1: training" in doc["phases_s"]
    assert "partial" not in doc  # the write after the first round, replaced at the end
    skipped = [s["what"] for s in doc["skipped"]]
    assert "round 2" in skipped and "init check ks" in skipped
    assert doc["init_checks"]["ks_s"] is None and doc["cli_runs"] == {}
    assert not (work / "warmup").exists() and not (work / "aa0").exists()


def test_no_topq_no_cli(tmp_path, capsys):
    out = tmp_path / "out"
    bvs.main([*TINY, "--no-topq", "--no-cli", "--repeats", "1", "--init-mparams", "0.001",
              "--out", str(out)])
    doc = json.loads((out / "verify_speed_synthetic-gpt_cpu.json").read_text())
    row = doc["rounds"][0]
    assert "verify_topq" not in row and row["verify_all"]["replayed_steps"] == 4
    assert doc["summary"]["replay_topq_ms_per_step"] == {"median": None}
    assert doc["summary"]["replay_all_ms_per_step"]["median"] > 0
    assert doc["warmup"]["torch_profile"] == {} and not doc["skipped"]
    init = doc["init_checks"]  # the rank correlation on the first tensor only
    assert 0 < init["rank_correlation_mparams"] < init["mparams"] and init["ks_s"] > 0
    assert "replay top-Q, ms/step (– steps)" in capsys.readouterr().out
