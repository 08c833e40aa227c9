"""The verifier's budget: a proof cannot set the verifier's cost.

Each hostile proof here is small on disk but claims huge numbers (millions of checkpoints, a
2,000,000-step segment, a synthetic dataset of 10^5-10^9 samples, a checkpoint that decompresses to
3 GiB). Each must be refused quickly, before the work, with exit 2 and a message that names the
limit (`Limits` field) and the `pol verify` option that raises it; honest proofs still verify with
the default limits.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from pol import ModelSpec, Recorder
from pol.errors import ProofFormatError
from pol.models import mlp
from pol.proof import codec
from pol.proof import format as fmt
from pol.proof.format import LimitExceeded, Limits
from pol.proof.reader import open_proof, read_manifest
from pol.proof.writer import rehash_manifest
from pol.verifier import verify
from pol.verifier import budget

from conftest import assert_unusable, load_manifest, record_until, run_cli, write_manifest

FAST = 10.0  # seconds: every refusal below takes well under a second of its own


def refused(r, field: str, option: str) -> str:
    msg = assert_unusable(r, field, option)
    assert "over the verifier's limit" in msg
    return msg


# ------------------------------------------------------------------------------- defaults

N_TRAIN = {"digits": 1437, "iris": 120, "synthetic-cifar": 2000, "cifar10": 50000,
           "cifar100": 50000, "synthetic-tokens": 2048}


@pytest.mark.parametrize("task", ["digits-mlp", "digits-cnn", "iris-logreg", "synthetic-resnet20",
                                  "cifar10-resnet20", "cifar100-resnet50", "synthetic-gpt"])
def test_default_limits_fit_every_builtin_task_with_room(task):
    """The defaults hold every built-in task's honest proof at least 3x over: its checkpoints
    (even at k = 1), its checkpoint size, --all's replay, its generated dataset."""
    from pol import models
    from pol.datasets import generation_bytes
    from pol.tasks import TASKS, steps_per_epoch
    t, lim = TASKS[task], Limits()
    with torch.device("meta"):
        model = models.build_model(t.arch, **t.model_kwargs)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    states = 2 if t.optimizer.name in ("adam", "adamw") else 1
    T = steps_per_epoch(N_TRAIN[t.dataset], t.batch_size, False) * t.epochs
    assert 3 * fmt.num_checkpoints(T, 1) <= lim.max_checkpoints
    assert 3 * 4 * (params * (1 + states) + buffers) <= lim.max_checkpoint_bytes
    assert 3 * T <= lim.max_replay_steps
    assert 3 * (generation_bytes(t.dataset, t.dataset_params) or 0) <= lim.max_dataset_bytes


def test_default_verify_of_an_honest_proof_is_unchanged(mlp_proof):
    r = run_cli("verify", mlp_proof)
    assert r.exit_code == 0, r.output
    assert "verdict: VALID" in r.stdout


# ------------------------------------------------------------------------------- checkpoints

def _claim_checkpoints(body: dict, n: int, *, full_list: bool) -> None:
    T = n - 1
    body.update(epochs=1, steps_per_epoch=T, total_steps=T, k=1)
    body["spec"].update(epochs=1, k=1)
    body["checkpoints"] = list(range(n)) if full_list else [0, T]


def test_manifest_listing_five_million_checkpoints_is_refused_before_parsing(mlp_proof,
                                                                            proof_copy):
    """The issue's 45 MB manifest (inside max_manifest_bytes) listing 5,000,001 checkpoints: 87 s
    and 1.5 GB before; now refused by a count of its JSON items, before the JSON parser runs."""
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    _claim_checkpoints(body, 2, full_list=False)
    text = json.dumps(body, sort_keys=True)
    steps = ", ".join(map(str, range(5_000_001)))  # 44 MB, as in the issue
    text = text.replace('"checkpoints":[0,1]', '"checkpoints":[' + steps + "]")
    text = text.replace('"checkpoints": [0, 1]', '"checkpoints": [' + steps + "]")
    assert len(text) > 40 * 2**20 and len(text) < Limits().max_manifest_bytes
    (p / fmt.MANIFEST).write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(LimitExceeded, match="max_checkpoints") as e:
        read_manifest(p)
    assert time.perf_counter() - t0 < 2.0
    assert e.value.field == "max_checkpoints" and "--max-checkpoints" in str(e.value)
    refused(run_cli("verify", p), "max_checkpoints", "--max-checkpoints")


def test_claimed_checkpoint_count_is_refused_before_any_list_is_built(mlp_proof, proof_copy,
                                                                      monkeypatch):
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    _claim_checkpoints(body, 5_000_001, full_list=False)
    write_manifest(p, body, rehash_root=True)

    def no_list(T, k):
        raise AssertionError("built the list of checkpoint steps")
    monkeypatch.setattr(fmt, "checkpoint_steps", no_list)
    with pytest.raises(LimitExceeded, match=r"5,000,001 checkpoints.*max_checkpoints"):
        read_manifest(p)
    monkeypatch.undo()
    msg = refused(run_cli("verify", p), "max_checkpoints", "--max-checkpoints")
    assert "5,000,001" in msg


def test_max_checkpoints_is_the_verifiers_to_raise(mlp_proof):
    n = len(load_manifest(mlp_proof)["checkpoints"])
    with pytest.raises(LimitExceeded, match="max_checkpoints"):
        open_proof(mlp_proof, Limits(max_checkpoints=n - 1))
    open_proof(mlp_proof, Limits(max_checkpoints=n))
    refused(run_cli("verify", mlp_proof, "--max-checkpoints", n - 1), "max_checkpoints",
            "--max-checkpoints")


def test_file_table_of_the_wrong_length_is_refused_before_building_names(mlp_proof, proof_copy):
    """A manifest listing every one of 200,000 claimed checkpoints (inside max_checkpoints) but
    only the honest proof's files: refused by the count of file entries, not by building and
    sorting 200,000 names."""
    p = proof_copy(mlp_proof)
    body = load_manifest(p)
    _claim_checkpoints(body, 200_000, full_list=True)
    write_manifest(p, body, rehash_root=True)
    t0 = time.perf_counter()
    with pytest.raises(ProofFormatError, match="manifest.files"):
        read_manifest(p)
    assert time.perf_counter() - t0 < 2.0


# ------------------------------------------------------------------------------- replay steps

def _rewrite_arrays(p: Path, body: dict, arrays: dict[str, np.ndarray]) -> None:
    for name, arr in arrays.items():
        np.save(p / name, arr, allow_pickle=False)
    write_manifest(p, body, rehash_root=False)
    rehash_manifest(p)


@pytest.fixture(scope="module")
def long_segment_proof(tmp_path_factory, mlp_proof) -> Path:
    """Self-consistent: batch size 1, S = N (every epoch a permutation of the dataset), E epochs,
    one checkpoint interval k = T = 2,000,304 steps: one segment. 100 MB of per-step arrays."""
    p = tmp_path_factory.mktemp("budget") / "long-segment"
    shutil.copytree(mlp_proof, p)
    body = load_manifest(p)
    N = body["spec"]["data"]["size"]
    E = math.ceil(2_000_000 / N)
    T = E * N
    G = body["param_groups"]
    lr = body["spec"]["optimizer"]["lr"]
    ck = body["checkpoints"]
    shutil.copy(p / fmt.checkpoint_name(ck[-1]), p / "last")
    for t in ck:
        (p / fmt.checkpoint_name(t)).unlink()
    shutil.copy(mlp_proof / fmt.checkpoint_name(0), p / fmt.checkpoint_name(0))
    (p / "last").rename(p / fmt.checkpoint_name(T))
    body.update(epochs=E, steps_per_epoch=N, total_steps=T, k=T, checkpoints=[0, T])
    body["spec"].update(epochs=E, k=T, batch_size=1)
    if body["spec"].get("schedule", {}).get("total_steps"):
        body["spec"]["schedule"]["total_steps"] = T
    body["files"] = {n: e for n, e in body["files"].items() if not n.startswith(fmt.CKPT_DIR)}
    for t in (0, T):
        body["files"][fmt.checkpoint_name(t)] = {"sha256": "0" * 64, "size": 0}
    _rewrite_arrays(p, body, {
        fmt.INDICES: np.tile(np.arange(N, dtype=np.int64), E).reshape(T, 1),
        fmt.BATCH_HASHES: np.zeros((T, 32), np.uint8),
        fmt.LRS: np.full((T, G), lr, np.float64),
        fmt.LOSSES: np.zeros(T, np.float32),
    })
    open_proof(p)  # a readable, self-consistent proof
    return p


@pytest.mark.parametrize("args", [(), ("--all",), ("--policy", "paper")], ids=str)
def test_two_million_step_segment_is_refused_before_replay(long_segment_proof, args):
    """Before: minutes of replay (the verifier replays the one segment). Now: exit 2 up front, with
    or without --all, whatever the policy."""
    t0 = time.perf_counter()
    msg = refused(run_cli("verify", long_segment_proof, *args), "max_replay_steps",
                  "--max-replay-steps")
    assert "2,000,304 steps" in msg
    assert time.perf_counter() - t0 < FAST


def test_long_segment_refused_by_the_library_before_the_data_or_model(long_segment_proof,
                                                                      monkeypatch):
    from pol.verifier import core

    def boom(*a, **kw):
        raise AssertionError("loaded the data before checking the budget")
    monkeypatch.setattr(core, "load_verifier_data", boom)
    with pytest.raises(LimitExceeded, match="max_replay_steps") as e:
        verify(long_segment_proof)
    assert e.value.field == "max_replay_steps" and e.value.limit == Limits().max_replay_steps


def test_planned_replay_counts_what_the_verifier_chooses(mlp_proof):
    """digits-mlp, 2 epochs: S = 45, k = 10; segments start at 0..80, 5 in epoch 0, 4 in epoch 1."""
    from pol.verifier import selection
    m = open_proof(mlp_proof).manifest
    assert budget.segments_per_epoch(m).tolist() == [5, 4]
    for q, r, all_ in [(1, 0, False), (1, 1, False), (2, 1, False), (4, 1, False), (9, 9, False),
                       (1, 0, True)]:
        n, steps = budget.planned_replay(m, q, all_, r)
        d1s = list(np.random.default_rng(q + r).random(len(m.checkpoints) - 1))
        assert n == len(selection.choose(m, d1s, q, all_, r, b"e"))
        assert steps == (90 if all_ else min(90, 10 * n))


@pytest.mark.parametrize("limit,args,ok", [
    # hardened: top-1 + 1 random per epoch, 4 x 10 steps, + 1 data-dependence step a segment
    (43, (), False), (44, (), True),
    (19, ("--policy", "paper"), False),              # top-1: 2 x 10 steps
    (98, ("--all",), False), (99, ("--all",), True),  # 90 steps + 9 probe steps
    (9, ("--policy", "paper"), False),               # one segment is 10 steps
])
def test_replay_budget_against_a_lowered_limit(mlp_proof, limit, args, ok):
    r = run_cli("verify", mlp_proof, "--max-replay-steps", limit, *args)
    if ok:
        assert r.exit_code == 0, r.output
    else:
        msg = refused(r, "max_replay_steps", "--max-replay-steps")
        assert f"max_replay_steps = {limit}" in msg
        if limit == 9:
            assert "up to 10 steps long" in msg


def test_exact_check_of_the_chosen_segments(mlp_proof):
    m = open_proof(mlp_proof).manifest
    chosen = [(0, "top-q"), (8, "top-q")]  # 10 + 10 steps (the last segment 80..90)
    assert budget.check_replay_budget(m, chosen, Limits(max_replay_steps=20)) == 20
    with pytest.raises(LimitExceeded, match="2 chosen segment"):
        budget.check_replay_budget(m, chosen, Limits(max_replay_steps=19))
    with pytest.raises(LimitExceeded, match="10 steps long"):
        budget.check_replay_budget(m, chosen, Limits(max_replay_steps=9))


# ------------------------------------------------------------------------------- datasets

def _claim_dataset(p: Path, name: str, params: dict) -> None:
    body = load_manifest(p)
    body["spec"]["data"].update(name=name, params=params)
    write_manifest(p, body, rehash_root=True)


@pytest.mark.parametrize("name,params", [
    ("synthetic-cifar", {"seed": 0, "n_train": 100_000, "n_test": 100_000}),   # ~6 GiB
    ("synthetic-tokens", {"seed": 0, "n_train": 1_000_000, "block_size": 256}),  # ~6 GiB
    ("synthetic-tokens", {"n_train": 1_000_000, "n_test": 1_000_000, "block_size": 65536}),
], ids=["cifar", "tokens", "tokens-huge"])
def test_dataset_parameters_over_the_budget_are_refused_before_generating(
        mlp_proof, proof_copy, monkeypatch, name, params):
    """The issue: synthetic tokens 76 s / 2.1 GB and synthetic CIFAR 45 s / 2.8 GB generated
    before the data commitment was checked, ending in MemoryError. Now refused from the
    parameters, before anything is generated."""
    from pol import datasets
    p = proof_copy(mlp_proof)
    _claim_dataset(p, name, params)

    def boom(*a, **kw):
        raise AssertionError("generated the dataset")
    monkeypatch.setitem(datasets.DATASETS, name, boom)
    monkeypatch.setitem(datasets._BUILTIN_LOADERS, name, boom)
    t0 = time.perf_counter()
    msg = refused(run_cli("verify", p), "max_dataset_bytes", "--max-dataset-gb")
    assert f"generating dataset {name}" in msg and "GiB of memory" in msg
    assert time.perf_counter() - t0 < FAST
    with pytest.raises(LimitExceeded, match="max_dataset_bytes"):
        verify(p)


def test_a_billion_samples_is_refused_by_the_parameter_range(mlp_proof, proof_copy):
    p = proof_copy(mlp_proof)
    _claim_dataset(p, "synthetic-cifar", {"n_train": 10**9})
    assert_unusable(run_cli("verify", p), "n_train", "1000000000")
    _claim_dataset(p, "synthetic-tokens", {"n_train": 10**9})
    assert_unusable(run_cli("verify", p), "n_train")


def test_dataset_budget_can_be_raised_and_lowered(monkeypatch):
    from pol import datasets
    need = datasets.generation_bytes("synthetic-cifar", {"n_train": 100, "n_test": 0})
    assert need is not None and need > 100 * 3072
    with pytest.raises(LimitExceeded, match="n_train=100, n_test=0"):
        datasets.load_dataset("synthetic-cifar", {"n_train": 100, "n_test": 0},
                              max_bytes=need - 1)
    train, _ = datasets.load_dataset("synthetic-cifar", {"n_train": 100, "n_test": 0},
                                     max_bytes=need)
    assert len(train) == 100
    # the prover's own parameters: no budget; fixed datasets: nothing to estimate
    assert datasets.generation_bytes("digits", {}) is None
    datasets.check_generation_budget("cifar10", {}, 1)


def test_generation_estimates_cover_the_measured_peak():
    """The estimate is an upper bound of what generating really allocates (numpy's allocations,
    traced), so the budget means memory."""
    import tracemalloc

    from pol import datasets
    for name, params in [("synthetic-cifar", {"n_train": 1500, "n_test": 500}),
                         ("synthetic-cifar", {"n_train": 100, "n_test": 0, "num_classes": 1000}),
                         ("synthetic-tokens", {"n_train": 1500, "n_test": 500, "block_size": 96}),
                         ("synthetic-tokens", {"n_train": 10, "block_size": 2,
                                               "vocab_size": 100_000})]:
        tracemalloc.start()
        try:
            datasets.DATASETS[name](params, None)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        est = datasets.generation_bytes(name, params)
        assert peak <= est <= 1.5 * peak + 2**20, (name, params, peak, est)


# ------------------------------------------------------------------------------- checkpoint bytes

ARCH = {"in_features": 8, "num_classes": 2, "hidden": [16], "dropout": 0.0}


@pytest.fixture(scope="module")
def v2_proof(tmp_path_factory) -> Path:
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = mlp(**ARCH)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = tmp_path_factory.mktemp("budget") / "v2"
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y), model_spec=ModelSpec("mlp", ARCH),
                   batch_size=16, epochs=2, k=2, seed=3, compress=True, keyframe_interval=2,
                   init="from-seed")
    record_until(rec, model, opt, x, y)
    np.savez(out.parent / "data.npz", x=x, y=y)
    return out


def rle_zeros_frame(size: int) -> bytes:
    """A zstd frame of `size` zero bytes made of RLE blocks (4 bytes per 128 KiB): a
    decompression bomb built in microseconds, with its true content size in the header."""
    block = 128 * 1024
    out = [struct.pack("<IB", 0xFD2FB528, 0xE0), struct.pack("<Q", size)]  # single segment, FCS 8
    left = size
    while True:
        n = min(block, left)
        left -= n
        out.append(struct.pack("<I", (1 if left == 0 else 0) | (1 << 1) | (n << 3))[:3] + b"\0")
        if left == 0:
            return b"".join(out)


def test_rle_bomb_is_a_valid_zstd_frame():
    frame = rle_zeros_frame(300 * 1024 + 5)
    assert zstandard.frame_content_size(frame) == 300 * 1024 + 5
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes(300 * 1024 + 5)


def _plant_bomb(p: Path, raw_size: int) -> None:
    """Checkpoint 0 becomes a keyframe of `raw_size` zero bytes; the manifest declares it (decoded
    size and a digest the zeros do not even need to match) and is rehashed as a forger would."""
    payload = rle_zeros_frame(raw_size)
    head = codec._HEAD.pack(codec.MAGIC, codec.CODEC_VERSION, codec.KEYFRAME, 1, raw_size)
    (p / fmt.stored_checkpoint_name(0, 2)).write_bytes(head + codec._SEG.pack(raw_size, 1)
                                                       + payload)
    body = load_manifest(p)
    body["decoded"][fmt.checkpoint_name(0)] = {"sha256": hashlib.sha256(b"").hexdigest(),
                                               "size": raw_size}
    write_manifest(p, body, rehash_root=False)
    rehash_manifest(p)


@pytest.fixture
def no_decompress(monkeypatch):
    class Guard:  # zstandard, but decompressing fails the test
        ZstdError = zstandard.ZstdError
        frame_content_size = staticmethod(zstandard.frame_content_size)

        @staticmethod
        def ZstdDecompressor(*a, **kw):
            raise AssertionError("decompressed a bomb")
    monkeypatch.setattr(codec, "_zstd", lambda: Guard)


def test_three_gib_bomb_is_refused_with_the_default_limits(v2_proof, proof_copy, no_decompress):
    """The issue's 3 GiB decompression bomb was inside the documented limits (16 GiB a file)."""
    p = proof_copy(v2_proof)
    _plant_bomb(p, 3 * 2**30)
    assert (p / fmt.stored_checkpoint_name(0, 2)).stat().st_size < 128 * 1024
    with pytest.raises(LimitExceeded, match="max_checkpoint_bytes") as e:
        open_proof(p)
    assert "3,221,225,472 bytes decoded" in str(e.value)
    refused(run_cli("verify", p, "--data", p.parent / "data.npz"), "max_checkpoint_bytes",
            "--max-checkpoint-gb")


def test_small_bomb_against_a_lowered_limit(v2_proof, proof_copy, no_decompress):
    p = proof_copy(v2_proof)
    _plant_bomb(p, 64 * 2**20)
    msg = refused(run_cli("verify", p, "--data", p.parent / "data.npz", "--max-checkpoint-gb",
                          1 / 32), "max_checkpoint_bytes", "--max-checkpoint-gb")
    assert "max_checkpoint_bytes = 32 MiB" in msg


def test_codec_refuses_to_decode_past_its_cap(no_decompress):
    frame = codec.parse_frame(
        codec._HEAD.pack(codec.MAGIC, codec.CODEC_VERSION, codec.KEYFRAME, 1, 2**20)
        + codec._SEG.pack(2**20, 1) + rle_zeros_frame(2**20), "x", 2**20)
    with pytest.raises(LimitExceeded, match="max_checkpoint_bytes"):
        codec.decode(frame, "x", None, None, max_size=2**20 - 1)


def test_zstd_never_writes_past_the_declared_size():
    """A frame whose header declares fewer bytes than its blocks hold fails as corrupt."""
    frame = bytearray(rle_zeros_frame(2**20))
    frame[5:13] = struct.pack("<Q", 1000)
    assert zstandard.frame_content_size(bytes(frame)) == 1000
    head = codec._HEAD.pack(codec.MAGIC, codec.CODEC_VERSION, codec.KEYFRAME, 1, 1000)
    parsed = codec.parse_frame(head + codec._SEG.pack(1000, 1) + bytes(frame), "x", 1000)
    with pytest.raises(ProofFormatError, match="corrupt zstd frame"):
        codec.decode(parsed, "x", None, None, max_size=1000)


def test_checkpoint_cap_applies_to_v1_files_too(mlp_proof):
    size = max(s for n, (_, s) in open_proof(mlp_proof).manifest.files.items()
               if n.startswith(fmt.CKPT_DIR))
    with pytest.raises(LimitExceeded, match="max_checkpoint_bytes"):
        open_proof(mlp_proof, Limits(max_checkpoint_bytes=size - 1))
    open_proof(mlp_proof, Limits(max_checkpoint_bytes=size))


def test_honest_compressed_proof_verifies_with_the_defaults(v2_proof):
    r = run_cli("verify", v2_proof, "--data", v2_proof.parent / "data.npz")
    assert r.exit_code == 0, r.output
