"""Proof format v2: the lossless checkpoint codec (XOR with the previous checkpoint, byte shuffle,
zstd, keyframes). Decoding is bitwise exact, tampering is caught, bombs are refused before
decompressing, a resumed compressed run equals the uninterrupted one, exact mode still holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from pol import ModelSpec, Recorder
from pol.errors import IntegrityError, ProofFormatError
from pol.models import mlp
from pol.proof import codec
from pol.proof import format as fmt
from pol.proof.reader import inspect_proof, open_proof
from pol.proof.writer import rehash_manifest
from pol.verifier import verify

from conftest import (assert_unusable, load_manifest, record_until, run_cli,
                      write_manifest)

ARCH = {"in_features": 8, "num_classes": 2, "hidden": [16], "dropout": 0.0}
KF = 3  # keyframe interval of the Recorder runs: keyframes and deltas in a 13-checkpoint proof


def data():
    x = np.random.default_rng(0).normal(size=(96, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def run(out, *, compress=True, precision="fp32", optim="sgd", stop_after=None, resume=False,
        k=2, keyframe_interval=KF):
    x, y = data()
    torch.manual_seed(0)
    model = mlp(**ARCH)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optim == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.01))
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y), model_spec=ModelSpec("mlp", ARCH),
                   batch_size=16, epochs=4, k=k, seed=3, precision=precision, resume=resume,
                   compress=compress, keyframe_interval=keyframe_interval,
                   init="from-seed")
    return record_until(rec, model, opt, x, y, stop_after)


def npz(tmp_path: Path) -> str:
    x, y = data()
    path = tmp_path / "d.npz"
    if not path.exists():
        np.savez(path, x=x, y=y)
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same run written as v1 and as v2 (SGD momentum, fp32)."""
    d = tmp_path_factory.mktemp("codec")
    run(d / "v1", compress=False)
    run(d / "v2")
    return d / "v1", d / "v2"


def stored(proof: Path, t: int) -> Path:
    return proof / fmt.stored_checkpoint_name(t, fmt.CODEC_FORMAT_VERSION)


# ------------------------------------------------------------------------------- unit

@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_shuffle_is_a_byte_plane_transpose_and_inverts(size):
    rng = np.random.default_rng(size)
    raw = rng.integers(0, 256, size=24 + 40 * size, dtype=np.uint8)
    segs = ((24, 1), (40 * size, size))
    sh = codec.shuffle(raw, segs)
    assert np.array_equal(sh[:24], raw[:24])
    body = raw[24:].reshape(40, size)
    assert np.array_equal(sh[24:24 + 40], body[:, 0])  # all byte 0s first
    assert np.array_equal(codec.unshuffle(sh, segs), raw)


def test_encoder_keyframes_and_deltas_round_trip():
    enc = codec.Encoder(keyframe_interval=4)
    rng = np.random.default_rng(1)
    w = rng.normal(size=1000).astype(np.float32)
    segs = ((16, 1), (4000, 4))
    base = bases = None
    for i in range(10):
        w = w + np.float32(1e-3) * rng.normal(size=1000).astype(np.float32)
        raw = np.concatenate([np.frombuffer(b"header-%09d" % i, np.uint8)[:16],
                              w.view(np.uint8)])
        blob, kind = enc.encode(raw.copy(), segs, i)
        assert kind == (codec.KEYFRAME if i % 4 == 0 else codec.DELTA)
        frame = codec.parse_frame(blob, "x", raw.size)
        out = codec.decode(frame, "x", base, bases)
        assert np.array_equal(out, raw)
        base, bases = out, frame.segments
    # a layout change forces a keyframe
    blob, kind = enc.encode(np.zeros(24, np.uint8), ((8, 1), (16, 8)), 11)
    assert kind == codec.KEYFRAME


# ------------------------------------------------------------------------------- round trip

def test_v2_decodes_to_the_v1_bytes_exactly(pair):
    v1, v2 = pair
    m1, m2 = load_manifest(v1), load_manifest(v2)
    assert m1["version"] == 1 and m2["version"] == 2
    assert m2["codec"] == {"name": codec.CODEC_NAME, "version": codec.CODEC_VERSION,
                           "keyframe_interval": KF}
    steps = m1["checkpoints"]
    for t in steps:  # the decoded digest is the v1 file's digest: the same checkpoint
        assert m2["decoded"][fmt.checkpoint_name(t)] == m1["files"][fmt.checkpoint_name(t)]
        assert fmt.stored_checkpoint_name(t, 2) in m2["files"]
    p1, p2 = open_proof(v1), open_proof(v2)
    assert p2.manifest.files == p1.manifest.files  # the logical view readers use
    for t in steps:  # streaming order
        assert p2.checkpoint_bytes(t) == p1.checkpoint_bytes(t)
    # random access, fresh reader (decodes back to the keyframe)
    p3 = open_proof(v2)
    for t in reversed(steps):
        a, b = p3.load_checkpoint(t), p1.load_checkpoint(t)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key])
    # keyframes where the interval says (and where the layout changed: step 0 has no momentum)
    kinds = [stored(v2, t).read_bytes()[5] for t in steps]
    assert all(kinds[i] == codec.KEYFRAME for i in range(0, len(steps), KF))
    assert kinds.count(codec.DELTA) >= len(steps) // 2
    assert inspect_proof(v2)["total_bytes"] < inspect_proof(v1)["total_bytes"]


def test_streaming_pass_decodes_each_checkpoint_once(pair, monkeypatch):
    _, v2 = pair
    calls = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda f, name, *a: calls.append(name) or real(f, name, *a))
    p = open_proof(v2)
    for t in p.manifest.checkpoints:
        p.load_checkpoint(t)
    assert len(calls) == len(set(calls)) == len(p.manifest.checkpoints)


def test_v2_verifies_in_exact_mode(pair, tmp_path):
    _, v2 = pair
    r = verify(v2, data=npz(tmp_path), all_segments=True)
    assert r.valid and all(s.exact for s in r.segments), r.render()


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_fp16_and_codec_combine(tmp_path, optim):
    run(tmp_path / "a", compress=False, precision="fp16", optim=optim)
    run(tmp_path / "b", precision="fp16", optim=optim)
    ma, mb = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    for t in ma["checkpoints"]:
        assert mb["decoded"][fmt.checkpoint_name(t)] == ma["files"][fmt.checkpoint_name(t)]
    r = verify(tmp_path / "b", data=npz(tmp_path), all_segments=True,
               metrics=("l1", "l2", "cos"))
    assert r.valid, r.render()


def test_cli_train_compress_digits_mlp_verifies_exactly(tmp_path):
    out = tmp_path / "p"
    r = run_cli("train", "--task", "digits-mlp", "--epochs", "1", "--k", "5", "--out", out,
                "--compress")
    assert r.exit_code == 0, r.output
    info = json.loads(run_cli("inspect", "--json", out).stdout)
    assert info["format_version"] == 2 and info["codec"]["name"] == codec.CODEC_NAME
    assert all(n.endswith((".npy", fmt.STORED_EXT)) for n in info["files"])
    v = run_cli("verify", out)
    assert v.exit_code == 0, v.output
    assert "exact mode" in v.output and "bitwise" in v.output


# ------------------------------------------------------------------------------- resume

@pytest.mark.parametrize("stop_after", [6, 10])  # resume on a delta / right after a keyframe
def test_resumed_v2_proof_equals_the_uninterrupted_one(pair, tmp_path, stop_after):
    _, full = pair
    cut = tmp_path / "cut"
    assert run(cut, stop_after=stop_after) is None
    run(cut, resume=True, compress=False)  # the codec comes from the interrupted run
    assert inspect_proof(cut)["files"] == inspect_proof(full)["files"]
    assert load_manifest(cut)["decoded"] == load_manifest(full)["decoded"]
    r = verify(cut, data=npz(tmp_path), all_segments=True)
    assert r.valid and all(s.exact for s in r.segments), r.render()


# ------------------------------------------------------------------------------- tampering

@pytest.fixture
def v2_copy(pair, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(pair[1], dst)
    return dst


def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x01
    path.write_bytes(bytes(b))


def test_flipped_compressed_byte_is_an_integrity_error(v2_copy, tmp_path):
    _flip(stored(v2_copy, 4), -10)
    p = open_proof(v2_copy)
    with pytest.raises(IntegrityError):
        p.load_checkpoint(4)
    r = verify(v2_copy, data=npz(tmp_path), all_segments=True)
    assert not r.valid and any(c.name == "checkpoint digests" and c.failed for c in r.checks)


def test_bad_frame_is_a_format_error(v2_copy):
    _flip(stored(v2_copy, 4), -10)  # inside the zstd frame (its checksum catches it)
    rehash_manifest(v2_copy)  # a forger's manifest: the stored file digests match again
    with pytest.raises(ProofFormatError):
        open_proof(v2_copy).load_checkpoint(4)
    assert_unusable(run_cli("verify", v2_copy, "--data", npz(v2_copy.parent)), "zstd")


def test_bad_magic_is_a_format_error(v2_copy):
    _flip(stored(v2_copy, 0), 0)
    rehash_manifest(v2_copy)
    with pytest.raises(ProofFormatError, match="not a pol compressed checkpoint"):
        open_proof(v2_copy).load_checkpoint(0)


def test_delta_in_a_keyframe_slot_is_refused(v2_copy):
    t = load_manifest(v2_copy)["checkpoints"][KF]
    path = stored(v2_copy, t)
    b = bytearray(path.read_bytes())
    b[5] = codec.DELTA
    path.write_bytes(bytes(b))
    rehash_manifest(v2_copy)
    p = open_proof(v2_copy)
    for s in p.manifest.checkpoints[:KF]:
        p.load_checkpoint(s)
    with pytest.raises(ProofFormatError, match="keyframe"):
        p.load_checkpoint(t)


def test_decoded_digest_binds_the_checkpoint(v2_copy):
    """A stored file re-encoded from other weights, with the stored digest updated but not the
    decoded one: the decoded bytes do not match."""
    body = load_manifest(v2_copy)
    name = fmt.checkpoint_name(0)
    sha, size = body["decoded"][name]["sha256"], body["decoded"][name]["size"]
    raw = np.frombuffer(open_proof(v2_copy).checkpoint_bytes(0), np.uint8).copy()
    raw[-1] ^= 1
    frame = codec.parse_frame(stored(v2_copy, 0).read_bytes(), "x", size)
    blob, _ = codec.Encoder(KF).encode(raw, frame.segments, 0)
    stored(v2_copy, 0).write_bytes(blob)
    rehash_manifest(v2_copy)
    assert load_manifest(v2_copy)["decoded"][name]["sha256"] == sha
    with pytest.raises(IntegrityError, match="decoded"):
        open_proof(v2_copy).load_checkpoint(0)


# ------------------------------------------------------------------------------- bombs

def _replace_frame(proof: Path, t: int, payload: bytes, raw_size: int) -> None:
    """Put `payload` (a zstd frame) in the stored checkpoint at step t, header claiming
    `raw_size`, one 1-byte segment; rehash as a forger would."""
    head = codec._HEAD.pack(codec.MAGIC, codec.CODEC_VERSION, codec.KEYFRAME, 1, raw_size)
    stored(proof, t).write_bytes(head + codec._SEG.pack(raw_size, 1) + payload)
    rehash_manifest(proof)


def test_bomb_declaring_more_than_the_manifest_is_refused_before_decompressing(v2_copy,
                                                                            monkeypatch):
    size = load_manifest(v2_copy)["decoded"][fmt.checkpoint_name(0)]["size"]
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(256 * 2**20))  # 256 MiB of zeros
    assert len(bomb) < 64 * 1024
    _replace_frame(v2_copy, 0, bomb, size)

    class Guard:  # zstandard, but decompressing fails the test
        ZstdError = zstandard.ZstdError
        frame_content_size = staticmethod(zstandard.frame_content_size)

        @staticmethod
        def ZstdDecompressor(*a, **kw):
            raise AssertionError("decompressed a bomb")
    monkeypatch.setattr(codec, "_zstd", lambda: Guard)
    with pytest.raises(ProofFormatError, match="declares"):
        open_proof(v2_copy).load_checkpoint(0)


def test_frame_without_content_size_is_refused(v2_copy):
    size = load_manifest(v2_copy)["decoded"][fmt.checkpoint_name(0)]["size"]
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(size))
    _replace_frame(v2_copy, 0, frame, size)
    with pytest.raises(ProofFormatError, match="declares"):
        open_proof(v2_copy).load_checkpoint(0)


def test_decoded_size_over_the_limits_is_refused_from_the_manifest(v2_copy):
    body = load_manifest(v2_copy)
    body["decoded"][fmt.checkpoint_name(0)]["size"] = 2**40  # 1 TiB
    write_manifest(v2_copy, body, rehash_root=True)
    with pytest.raises(ProofFormatError, match="limit"):
        open_proof(v2_copy)
    with pytest.raises(ProofFormatError, match="limit"):
        open_proof(v2_copy, fmt.Limits(max_file_bytes=2**20))


def test_decoded_total_over_the_limits_is_refused(v2_copy):
    """Each checkpoint under the per-file limit, all of them together over the total: the reader
    would decompress that much from small files."""
    body = load_manifest(v2_copy)
    for entry in body["decoded"].values():
        entry["size"] = 15 * 2**30
    write_manifest(v2_copy, body, rehash_root=True)
    with pytest.raises(ProofFormatError, match="decodes to"):
        open_proof(v2_copy)


# ------------------------------------------------------------------------------- manifest

@pytest.mark.parametrize("edit,fragment", [
    (lambda b: b.pop("codec"), "codec"),
    (lambda b: b["codec"].update(name="lz4"), "codec"),
    (lambda b: b["codec"].update(keyframe_interval=0), "codec"),
    (lambda b: b["codec"].update(keyframe_interval=True), "codec"),
    (lambda b: b["decoded"].pop(fmt.checkpoint_name(0)), "decoded"),
    (lambda b: b["decoded"].update({"checkpoints/x.safetensors": b["decoded"][
        fmt.checkpoint_name(0)]}), "decoded"),
    (lambda b: b["decoded"][fmt.checkpoint_name(0)].update(sha256="zz"), "decoded"),
    (lambda b: b.update(version=1), "unknown field"),
])
def test_malformed_v2_manifest_is_unusable(v2_copy, edit, fragment):
    body = load_manifest(v2_copy)
    edit(body)
    write_manifest(v2_copy, body, rehash_root=True)
    with pytest.raises(ProofFormatError, match=fragment):
        open_proof(v2_copy)


def test_pol_train_resume_continues_a_compressed_run(tmp_path, monkeypatch):
    """`pol train --compress` interrupted, then `pol train --resume` (which takes the codec from
    the interrupted run): the same files as the uninterrupted run, valid in exact mode."""
    args = ["train", "--task", "digits-mlp", "--epochs", "1", "--k", "3", "--compress"]
    assert run_cli(*args, "--out", tmp_path / "full").exit_code == 0
    real_step = Recorder.step

    def step(self, loss=None):
        if self.t == 20:
            raise KeyboardInterrupt  # the run dies between checkpoints 18 and 21
        real_step(self, loss)
    monkeypatch.setattr(Recorder, "step", step)
    try:
        assert run_cli(*args, "--out", tmp_path / "cut").exit_code != 0
    except AssertionError as e:  # the interrupt escaped the command: what a crash looks like
        assert "KeyboardInterrupt" in str(e)
    monkeypatch.setattr(Recorder, "step", real_step)
    assert json.loads((tmp_path / "cut" / fmt.PROGRESS).read_text())["last_checkpoint"] == 18
    assert_unusable(run_cli("verify", tmp_path / "cut"), "incomplete")
    r = run_cli("train", "--resume", tmp_path / "cut")
    assert r.exit_code == 0, r.output
    full, cut = inspect_proof(tmp_path / "full"), inspect_proof(tmp_path / "cut")
    assert cut["format_version"] == 2 and cut["files"] == full["files"]
    assert cut["decoded"] == full["decoded"]
    v = run_cli("verify", "--all", tmp_path / "cut")
    assert v.exit_code == 0 and "bitwise" in v.output, v.output
