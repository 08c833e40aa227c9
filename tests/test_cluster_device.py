"""pol.cluster on a device, and what a GPU job needs that a CPU one does not.

`pol distributed --device/--backend/--dataset-arg` (a ResNet-20 job at a tiny size on the CPU,
the dataset's size set from the command line); a refused `--device cuda` where there is no GPU; the
environment every CUDA rank starts with (the cuBLAS workspace deterministic algorithms need, set
before its first CUDA call) and how the ranks start (fresh interpreters on a GPU); store values
larger than the store takes (a ResNet-20 proof) travel in parts, and a malformed part count from a
worker reads as a malformed message instead of a wait.
"""

from __future__ import annotations

import datetime
import json

import pytest
import torch
from click.testing import CliRunner

from pol.cli import main
from pol.cluster import ClusterConfig, accepted_rounds
from pol.cluster import transport
from pol.cluster.launch import _mp_context, device_env
from pol.errors import ConfigError

RESNET_TINY = ["distributed", "--task", "synthetic-resnet20", "--workers", "2", "--rounds", "1",
               "--local-steps", "2", "--batch-size", "4", "--segment", "1", "--budget", "1",
               "--launcher", "inprocess"]


def test_pol_distributed_on_the_cpu_with_the_datasets_size_set(tmp_path):
    """ResNet-20 on a 24-sample CIFAR-shaped set: the noisy worker rejected, the honest one
    accepted; the job records its device and dataset parameters, each worker's reported time."""
    out, js = tmp_path / "run", tmp_path / "job.json"
    r = CliRunner().invoke(main, RESNET_TINY + [
        "--device", "cpu", "--backend", "gloo", "--dataset-arg", "n_train=24",
        "--dataset-arg", "n_test=8", "--byzantine", "2:noise", "--out", str(out),
        "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert "round 0: accepted [1]" in r.output
    job = json.loads(js.read_text())
    assert job["config"]["device"] == "cpu"
    assert job["config"]["dataset_params"] == {"n_train": 24, "n_test": 8}
    assert {v["worker"]: v["verdict"] for v in job["verdicts"]} == {1: "accepted", 2: "rejected"}
    assert all(v["worker_seconds"] > 0 for v in job["verdicts"])
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["dataset_params"] == {"n_train": 24, "n_test": 8}
    assert [p["round"] for p in accepted_rounds(out)] == [0]
    assert "dataset_params" not in ClusterConfig().identity()  # older runs still resume


def test_a_shard_larger_than_the_set_names_the_way_out(tmp_path):
    r = CliRunner().invoke(main, RESNET_TINY + ["--dataset-arg", "n_train=7",
                                                "--out", str(tmp_path / "x")])
    assert r.exit_code != 0
    assert "need 8 distinct samples" in r.output and "--dataset-arg n_train" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_gpu_and_nccl_without_cuda_are_refused(tmp_path):
    r = CliRunner().invoke(main, RESNET_TINY + ["--device", "cuda", "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "no CUDA GPU" in r.output
    assert not (tmp_path / "c").exists()  # refused before anything started
    r = CliRunner().invoke(main, RESNET_TINY + ["--backend", "nccl", "--out", str(tmp_path / "n")])
    assert r.exit_code != 0 and "--backend nccl needs --device cuda" in r.output


def test_cuda_ranks_start_fresh_with_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda, cpu = ClusterConfig(device="cuda"), ClusterConfig()
    assert device_env(cuda) == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert device_env(cpu) == {}
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own is kept
    assert device_env(cuda) == {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    assert _mp_context(cuda).get_start_method() == "spawn"
    assert _mp_context(cpu).get_start_method() == "forkserver"
    with pytest.raises(ConfigError, match="nccl"):
        ClusterConfig(backend="nccl")


def test_values_over_the_stores_limit_travel_in_parts():
    import torch.distributed as dist
    store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=10))
    big = bytes(range(256)) * (9 * 4096 + 3)  # 9 MiB and a bit: over the store's 8 MiB
    transport.put(store, "r/result/1", big)
    assert transport.fetch(store, "r/result/1") == big
    assert int(store.get("r/result/1")) == 3 and transport.PART * 2 < len(big)
    transport.drop(store, "r/result/1")
    assert not store.check(["r/result/1"]) and not store.check(["r/result/1/part/0"])
    transport.put(store, "empty", b"")
    assert transport.fetch(store, "empty") == b""
    for forged in (b"3", b"999999", b"-1", b"x", b"0"):  # parts missing, absurd, not a count
        store.set("r/result/2", forged)
        assert transport.fetch(store, "r/result/2") == b""
