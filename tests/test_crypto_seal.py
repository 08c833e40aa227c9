"""Sealing (sign + HPKE + chunked AES-GCM) and opening of proofs (pol.crypto.seal)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pol.crypto import errors, hpke
from pol.crypto import seal as sealmod
from pol.crypto.archive import MAGIC as ARCHIVE_MAGIC
from pol.crypto.archive import ArchiveStats
from pol.crypto.keys import key_id
from pol.crypto.seal import MAGIC, is_sealed, open_sealed, read_header, seal
from pol.proof import format as _proof_format

from conftest import read_tree, write_tree

# the root digest of the manifest make_proof writes: pol open recomputes it from the content
ROOT = _proof_format.root_digest({"version": 1})


def make_proof(root: Path, big: int = 5000, root_digest: str = ROOT) -> dict[str, bytes]:
    files = {
        "manifest.json": json.dumps({"version": 1, "root_digest": root_digest}).encode(),
        "indices.npy": os.urandom(big),
        "checkpoints/step_000000010.safetensors": os.urandom(big // 2 + 1),
        "checkpoints/step_000000020.safetensors": b"",
    }
    return write_tree(root, files)


@pytest.fixture(scope="module")
def parties():
    return {
        "prover": Ed25519PrivateKey.generate(),
        "verifier": X25519PrivateKey.generate(),
        "mallory": Ed25519PrivateKey.generate(),
        "other_verifier": X25519PrivateKey.generate(),
    }


@pytest.fixture(scope="module")
def small_sealed(tmp_path_factory, parties):
    """A sealed proof with 1 KiB chunks (several chunks) and its layout."""
    d = tmp_path_factory.mktemp("sealed")
    files = make_proof(d / "proof", big=2500)
    res = seal(d / "proof", parties["verifier"].public_key(), parties["prover"], d / "p.sealed", chunk_size=1024)
    data = (d / "p.sealed").read_bytes()
    magic, version, header_len = struct.unpack(">8sHI", data[:14])
    header_end = 14 + header_len
    wrapped_end = header_end + 32 + 48
    sig_end = wrapped_end + 64
    chunks = []
    pos = sig_end
    while pos < len(data):
        flag, ln = struct.unpack(">BI", data[pos : pos + 5])
        chunks.append((pos, flag, ln))
        pos += 5 + ln + 16
    assert pos == len(data)
    assert chunks[-1][1] == 1 and all(c[1] == 0 for c in chunks[:-1]) and len(chunks) >= 5
    layout = {"header_end": header_end, "wrapped_end": wrapped_end, "sig_end": sig_end, "chunks": chunks}
    return {"dir": d, "files": files, "result": res, "data": data, "layout": layout}


def assert_clean(parent: Path, allowed: set[str]) -> None:
    assert set(os.listdir(parent)) <= allowed, sorted(os.listdir(parent))


def try_open(tmp_path: Path, blob: bytes, key: X25519PrivateKey, signer=None) -> None:
    f = tmp_path / "in.sealed"
    f.write_bytes(blob)
    try:
        open_sealed(f, key, tmp_path / "out", signer)
    except BaseException:
        assert_clean(tmp_path, {"in.sealed"})  # nothing half-written on failure
        raise


# ------------------------------------------------------------- round trips
def test_round_trip_default_chunks(tmp_path, parties):
    files = make_proof(tmp_path / "proof", big=2_500_000)  # > 2 chunks of 1 MiB
    res = seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "p.sealed")
    assert res.root_digest == ROOT
    assert res.sealed_sha256 == hashlib.sha256((tmp_path / "p.sealed").read_bytes()).hexdigest()
    assert res.size == (tmp_path / "p.sealed").stat().st_size
    assert res.entries == len(files)
    opened = open_sealed(
        tmp_path / "p.sealed", parties["verifier"], tmp_path / "out", parties["prover"].public_key()
    )
    assert read_tree(tmp_path / "out") == files
    assert opened.root_digest == ROOT
    assert opened.signer_key_id == key_id(parties["prover"].public_key())
    assert opened.recipient_key_id == key_id(parties["verifier"].public_key())
    assert opened.created == res.created and opened.created.endswith("Z")
    assert_clean(tmp_path, {"proof", "p.sealed", "out"})


def test_round_trip_small_chunks_and_header(small_sealed, parties, tmp_path):
    f = small_sealed["dir"] / "p.sealed"
    assert is_sealed(f)
    assert not is_sealed(small_sealed["dir"] / "proof" / "manifest.json")
    assert not is_sealed(tmp_path / "missing")
    hdr = read_header(f)
    assert hdr.root_digest == ROOT and hdr.chunk_size == 1024 and hdr.version == 1
    assert hdr.sender_key_id == key_id(parties["prover"].public_key())
    open_sealed(f, parties["verifier"], tmp_path / "out", parties["prover"].public_key())
    assert read_tree(tmp_path / "out") == small_sealed["files"]


def test_empty_and_exact_chunk_multiple(tmp_path, parties):
    # a proof whose archive is an exact multiple of the chunk size must still round-trip
    proof = tmp_path / "proof"
    proof.mkdir()
    (proof / "manifest.json").write_text(json.dumps({"version": 1, "root_digest": ROOT}))
    buf = io.BytesIO()
    from pol.crypto.archive import pack

    base = pack(proof, buf).stream_bytes
    overhead = 1 + 2 + len("pad.bin") + 8 + 32
    (proof / "pad.bin").write_bytes(os.urandom(4 * 1024 - base - overhead))
    buf = io.BytesIO()
    assert pack(proof, buf).stream_bytes == 4 * 1024
    seal(proof, parties["verifier"].public_key(), parties["prover"], tmp_path / "p.sealed", chunk_size=1024)
    open_sealed(tmp_path / "p.sealed", parties["verifier"], tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(proof)


def test_builtin_hpke_fallback(tmp_path, parties, monkeypatch):
    make_proof(tmp_path / "proof")
    seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "lib.sealed")
    monkeypatch.setattr(hpke, "_LIB_SUITE", None)
    # sealed by the library path (if present), opened by the builtin RFC 9180 code, and vice versa
    open_sealed(tmp_path / "lib.sealed", parties["verifier"], tmp_path / "o1")
    seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "own.sealed")
    monkeypatch.undo()
    open_sealed(tmp_path / "own.sealed", parties["verifier"], tmp_path / "o2")
    assert read_tree(tmp_path / "o1") == read_tree(tmp_path / "o2") == read_tree(tmp_path / "proof")


def test_memory_is_bounded(tmp_path, parties):
    proof = tmp_path / "proof"
    make_proof(proof, big=10)
    (proof / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    tracemalloc.start()
    try:
        seal(proof, parties["verifier"].public_key(), parties["prover"], tmp_path / "p.sealed", chunk_size=65536)
        seal_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        open_sealed(tmp_path / "p.sealed", parties["verifier"], tmp_path / "out")
        open_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seal_peak < 4 * 1024 * 1024 and open_peak < 4 * 1024 * 1024, (seal_peak, open_peak)


# ---------------------------------------------------------- key/signer checks
def test_wrong_verifier_key(small_sealed, parties, tmp_path):
    with pytest.raises(errors.WrongRecipient):
        try_open(tmp_path, small_sealed["data"], parties["other_verifier"])


def test_expected_signer(small_sealed, parties, tmp_path):
    with pytest.raises(errors.SignerMismatch) as ei:
        try_open(tmp_path, small_sealed["data"], parties["verifier"], parties["mallory"].public_key())
    assert ei.value.exit_code == 1
    try_open(tmp_path, small_sealed["data"], parties["verifier"], parties["prover"].public_key())


def test_proof_sealed_by_another_key_is_rejected_when_pinned(tmp_path, parties):
    make_proof(tmp_path / "proof")
    seal(tmp_path / "proof", parties["verifier"].public_key(), parties["mallory"], tmp_path / "m.sealed")
    with pytest.raises(errors.SignerMismatch):
        open_sealed(tmp_path / "m.sealed", parties["verifier"], tmp_path / "out", parties["prover"].public_key())
    assert not (tmp_path / "out").exists()
    # unpinned it opens, but reports who signed
    opened = open_sealed(tmp_path / "m.sealed", parties["verifier"], tmp_path / "out")
    assert opened.signer_key_id == key_id(parties["mallory"].public_key())


def test_header_re_signed_by_attacker(small_sealed, parties, tmp_path):
    """Mallory swaps in her own key and signature over an otherwise identical header."""
    data = small_sealed["data"]
    lay = small_sealed["layout"]
    hdr = json.loads(data[14 : lay["header_end"]])
    mpub = parties["mallory"].public_key()
    hdr["sender_public_key"] = mpub.public_bytes_raw().hex()
    hdr["sender_key_id"] = key_id(mpub)
    hb = json.dumps(hdr, sort_keys=True, separators=(",", ":")).encode()
    head = data[:10] + struct.pack(">I", len(hb)) + hb
    prefix = head + data[lay["header_end"] : lay["wrapped_end"]]
    sig = parties["mallory"].sign(sealmod.SIG_CONTEXT + prefix)
    forged = prefix + sig + data[lay["sig_end"] :]
    with pytest.raises(errors.SignerMismatch):
        try_open(tmp_path, forged, parties["verifier"], parties["prover"].public_key())
    # even unpinned the header change breaks the HPKE/stream binding: nothing decrypts
    with pytest.raises(errors.TamperedCiphertext):
        try_open(tmp_path, forged, parties["verifier"])


# ----------------------------------------------------------- tampering
def _flip_positions(small_sealed) -> list[tuple[int, str]]:
    lay = small_sealed["layout"]
    # every byte of magic/version/length, enc, wrapped key and signature; every 3rd header byte
    positions = [(i, "prefix") for i in range(lay["sig_end"]) if i < 14 or i >= lay["header_end"] or i % 3 == 0]
    for pos, flag, ln in lay["chunks"]:
        body = pos + 5
        tag = body + ln
        for p in [pos, pos + 1, pos + 2, pos + 3, pos + 4, body, body + 1, body + ln // 2, tag - 1, tag, tag + 15]:
            positions.append((p, "chunk"))
    return positions


def test_any_flipped_bit_is_rejected(small_sealed, parties, tmp_path):
    data = small_sealed["data"]
    lay = small_sealed["layout"]
    positions = _flip_positions(small_sealed)
    assert len(positions) > 300
    f = tmp_path / "in.sealed"
    for pos, region in positions:
        blob = bytearray(data)
        blob[pos] ^= 1 << (pos % 8)
        f.write_bytes(blob)
        with pytest.raises(errors.SealError) as ei:
            open_sealed(f, parties["verifier"], tmp_path / "out", parties["prover"].public_key())
        exc = ei.value
        if pos < 8:
            assert isinstance(exc, errors.NotSealedError), pos
        elif pos < 10:
            assert isinstance(exc, errors.UnsupportedVersion), pos
        elif pos >= lay["header_end"] and region == "prefix":
            assert isinstance(exc, errors.BadSignature), (pos, exc)
        elif region == "chunk":
            assert isinstance(exc, (errors.TamperedCiphertext, errors.TruncatedSeal)), (pos, exc)
        assert not (tmp_path / "out").exists()
    assert_clean(tmp_path, {"in.sealed"})


def test_chunk_reorder_drop_duplicate_append(small_sealed, parties, tmp_path):
    data = small_sealed["data"]
    lay = small_sealed["layout"]
    chunks = lay["chunks"]
    pieces = [data[p : (chunks[i + 1][0] if i + 1 < len(chunks) else len(data))] for i, (p, _, _) in enumerate(chunks)]
    prefix = data[: lay["sig_end"]]
    variants = {
        "swap": prefix + pieces[1] + pieces[0] + b"".join(pieces[2:]),
        "drop_middle": prefix + b"".join(pieces[:2] + pieces[3:]),
        "duplicate": prefix + pieces[0] + b"".join(pieces),
        "append_garbage": data + b"\x00",
        "append_final_again": data + pieces[-1],
    }
    for name, blob in variants.items():
        with pytest.raises(errors.TamperedCiphertext):
            try_open(tmp_path, blob, parties["verifier"])


def test_truncated_file(small_sealed, parties, tmp_path):
    data = small_sealed["data"]
    lay = small_sealed["layout"]
    cuts = set(range(1, lay["sig_end"] + 1, 7)) | {p for p, _, _ in lay["chunks"]}
    cuts |= {p + 3 for p, _, _ in lay["chunks"]} | {p + 600 for p, _, _ in lay["chunks"]} | {len(data) - 1}
    for cut in sorted(c for c in cuts if c < len(data)):
        with pytest.raises(errors.TruncatedSeal):
            try_open(tmp_path, data[:cut], parties["verifier"])
    with pytest.raises(errors.NotSealedError):
        try_open(tmp_path, b"", parties["verifier"])


def test_unknown_version(small_sealed, parties, tmp_path):
    blob = bytearray(small_sealed["data"])
    blob[8:10] = struct.pack(">H", 2)
    with pytest.raises(errors.UnsupportedVersion):
        try_open(tmp_path, bytes(blob), parties["verifier"])


def test_not_sealed(tmp_path, parties):
    with pytest.raises(errors.NotSealedError):
        try_open(tmp_path, b"PK\x03\x04 a zip file", parties["verifier"])
    with pytest.raises(errors.SealError):
        open_sealed(tmp_path / "missing.sealed", parties["verifier"], tmp_path / "out")


def test_root_digest_mismatch(tmp_path, parties, monkeypatch):
    make_proof(tmp_path / "proof")
    real = sealmod.manifest_root_digest
    # a prover whose header commits to a digest the packed manifest does not carry
    monkeypatch.setattr(sealmod, "manifest_root_digest", lambda d: "00" * 32)
    seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "p.sealed")
    monkeypatch.setattr(sealmod, "manifest_root_digest", real)
    with pytest.raises(errors.RootDigestMismatch):
        open_sealed(tmp_path / "p.sealed", parties["verifier"], tmp_path / "out")
    assert_clean(tmp_path, {"proof", "p.sealed"})
    # the verifier can plug in its own digest computation
    seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "q.sealed")
    with pytest.raises(errors.RootDigestMismatch):
        open_sealed(tmp_path / "q.sealed", parties["verifier"], tmp_path / "out", compute_root_digest=lambda d: "11" * 32)
    open_sealed(tmp_path / "q.sealed", parties["verifier"], tmp_path / "out", compute_root_digest=lambda d: ROOT)


def _raw_archive(*entries: tuple[str, bytes]) -> bytes:
    body = b""
    for name, data in entries:
        head = b"F" + struct.pack(">H", len(name)) + name.encode() + struct.pack(">Q", len(data))
        body += head + data + hashlib.sha256(head + data).digest()
    return ARCHIVE_MAGIC + body + b"E" + struct.pack(">QQ", len(entries), sum(len(d) for _, d in entries))


def test_malicious_prover_archive_is_rejected(tmp_path, parties, monkeypatch):
    """A validly signed/encrypted payload is still checked entry by entry."""
    make_proof(tmp_path / "proof")
    manifest = json.dumps({"root_digest": ROOT}).encode()

    def evil_pack(src, out, **kw):
        raw = _raw_archive(("manifest.json", manifest), ("../escape.txt", b"pwned"))
        out.write(raw)
        return ArchiveStats(entries=2, data_bytes=len(manifest) + 5, stream_bytes=len(raw))

    monkeypatch.setattr(sealmod._archive, "pack", evil_pack)
    seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "evil.sealed")
    monkeypatch.undo()
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(errors.SealedContentError):
        open_sealed(tmp_path / "evil.sealed", parties["verifier"], work / "out")
    assert os.listdir(work) == []
    assert not (tmp_path / "escape.txt").exists()


def test_seal_refuses_bad_input_and_leaves_nothing(tmp_path, parties):
    vpub = parties["verifier"].public_key()
    (tmp_path / "noproof").mkdir()
    with pytest.raises(errors.InvalidProofError):
        seal(tmp_path / "noproof", vpub, parties["prover"], tmp_path / "a.sealed")
    make_proof(tmp_path / "proof")
    (tmp_path / "proof" / "link").symlink_to(tmp_path / "proof" / "indices.npy")
    with pytest.raises(errors.UnsafeEntryError):
        seal(tmp_path / "proof", vpub, parties["prover"], tmp_path / "b.sealed")
    (tmp_path / "proof" / "link").unlink()
    assert_clean(tmp_path, {"noproof", "proof"})
    seal(tmp_path / "proof", vpub, parties["prover"], tmp_path / "c.sealed")
    with pytest.raises(errors.DestinationExists):
        seal(tmp_path / "proof", vpub, parties["prover"], tmp_path / "c.sealed")
    seal(tmp_path / "proof", vpub, parties["prover"], tmp_path / "c.sealed", overwrite=True)
    with pytest.raises(errors.DestinationExists):
        open_sealed(tmp_path / "c.sealed", parties["verifier"], tmp_path / "proof")
    with pytest.raises(ValueError):
        seal(tmp_path / "proof", vpub, parties["prover"], tmp_path / "d.sealed", chunk_size=10)
    assert_clean(tmp_path, {"noproof", "proof", "c.sealed"})


def test_headers_are_unique_and_magic(tmp_path, parties):
    make_proof(tmp_path / "proof")
    a = seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "a.sealed")
    b = seal(tmp_path / "proof", parties["verifier"].public_key(), parties["prover"], tmp_path / "b.sealed")
    assert a.sealed_sha256 != b.sealed_sha256
    assert (tmp_path / "a.sealed").read_bytes()[:8] == MAGIC
    assert read_header(tmp_path / "a.sealed").nonce != read_header(tmp_path / "b.sealed").nonce
