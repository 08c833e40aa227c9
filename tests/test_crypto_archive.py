"""Packing and strict unpacking of proof archives (pol.crypto.archive)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pol.crypto import errors
from pol.crypto.archive import MAGIC, list_files, pack, unpack, validate_name

from conftest import read_tree, write_tree


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "manifest.json": b'{"root_digest": "' + b"ab" * 32 + b'"}',
        "indices.npy": os.urandom(3000),
        "empty.bin": b"",
        "checkpoints/step_000000010.safetensors": os.urandom(70_000),
        "checkpoints/step_000000020.safetensors": os.urandom(10),
        "a/b/c/deep.txt": b"depth four",
    }
    return write_tree(root, files)


def rec(name: bytes | str, data: bytes, *, size: int | None = None, digest: bytes | None = None) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    head = b"F" + struct.pack(">H", len(raw)) + raw + struct.pack(">Q", len(data) if size is None else size)
    return head + data + (hashlib.sha256(head + data).digest() if digest is None else digest)


def end(count: int, total: int) -> bytes:
    return b"E" + struct.pack(">QQ", count, total)


def archive(*entries: tuple[str | bytes, bytes]) -> bytes:
    body = b"".join(rec(n, d) for n, d in entries)
    return MAGIC + body + end(len(entries), sum(len(d) for _, d in entries))


def assert_nothing_left(parent: Path, allowed: set[str] = frozenset()) -> None:
    assert set(os.listdir(parent)) <= set(allowed), os.listdir(parent)


def test_round_trip_and_deterministic(tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    buf1, buf2 = io.BytesIO(), io.BytesIO()
    stats = pack(src, buf1)
    pack(src, buf2)
    assert buf1.getvalue() == buf2.getvalue()
    assert stats.entries == len(files) and stats.data_bytes == sum(map(len, files.values()))
    assert stats.stream_bytes == len(buf1.getvalue())
    out = tmp_path / "out"
    ustats = unpack(io.BytesIO(buf1.getvalue()), out)
    assert ustats.entries == stats.entries
    assert read_tree(out) == files
    assert_nothing_left(tmp_path, {"src", "out"})


def test_destination_must_not_exist(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    buf = io.BytesIO()
    pack(src, buf)
    (tmp_path / "out").mkdir()
    with pytest.raises(errors.DestinationExists):
        unpack(io.BytesIO(buf.getvalue()), tmp_path / "out")
    with pytest.raises(errors.DestinationError):
        unpack(io.BytesIO(buf.getvalue()), tmp_path / "missing-parent" / "out")


def test_pack_refuses_symlinks_and_specials(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    (src / "link").symlink_to(src / "indices.npy")
    with pytest.raises(errors.UnsafeEntryError, match="symbolic link"):
        pack(src, io.BytesIO())
    (src / "link").unlink()
    (src / "dirlink").symlink_to(src / "checkpoints", target_is_directory=True)
    with pytest.raises(errors.UnsafeEntryError, match="symbolic link"):
        pack(src, io.BytesIO())
    (src / "dirlink").unlink()
    if hasattr(os, "mkfifo"):
        os.mkfifo(src / "fifo")
        with pytest.raises(errors.UnsafeEntryError, match="regular"):
            pack(src, io.BytesIO())
        (src / "fifo").unlink()
    pack(src, io.BytesIO())  # clean again


@pytest.mark.parametrize("bad", ["with space.txt", "a/b/c/d/too_deep.bin", "uml\u00e4ut", "x:y"])
def test_pack_refuses_bad_names(tmp_path, bad):
    src = tmp_path / "src"
    src.mkdir()
    p = src / bad
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    with pytest.raises(errors.UnsafeEntryError):
        pack(src, io.BytesIO())


@pytest.mark.parametrize(
    "name",
    [
        "ok.txt",
        "checkpoints/step_000000010.safetensors",
        "a/b/c/d",
        ".hidden",
        "a.b-c_d",
    ],
)
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../evil",
        "a/../../evil",
        "a/./b",
        ".",
        "..",
        "a//b",
        "a/",
        "a\\b",
        "a\x00b",
        "a\nb",
        "ok.txt\n",
        "a/b/c/d/e",
        "x" * 256,
    ],
)
def test_invalid_names(name):
    with pytest.raises(errors.UnsafeEntryError):
        validate_name(name)


@pytest.mark.parametrize(
    "entries,exc",
    [
        ([("../evil", b"x")], errors.UnsafeEntryError),
        ([("a/../../evil", b"x")], errors.UnsafeEntryError),
        ([("/tmp/evil_abs", b"x")], errors.UnsafeEntryError),
        ([("a/./b", b"x")], errors.UnsafeEntryError),
        ([("a\\..\\evil", b"x")], errors.UnsafeEntryError),
        ([(b"caf\xc3\xa9", b"x")], errors.UnsafeEntryError),
        ([("dup.txt", b"1"), ("dup.txt", b"2")], errors.UnsafeEntryError),
        ([("Case.txt", b"1"), ("case.txt", b"2")], errors.UnsafeEntryError),
        ([("a", b"file"), ("a/b", b"under a file")], errors.UnsafeEntryError),
        ([("a/b", b"x"), ("a", b"dir as file")], errors.UnsafeEntryError),
        ([("a/b/c/d/e", b"too deep")], errors.UnsafeEntryError),
    ],
)
def test_unpack_rejects_unsafe_entries(tmp_path, entries, exc):
    data = archive(*entries)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(exc):
        unpack(io.BytesIO(data), work / "out")
    assert_nothing_left(work)
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil_abs").exists()


def test_unpack_limits(tmp_path):
    data = archive(("a.bin", b"x" * 100), ("b.bin", b"y" * 100), ("c.bin", b"z" * 100))
    with pytest.raises(errors.ArchiveLimitError):
        unpack(io.BytesIO(data), tmp_path / "o1", max_entry_bytes=99)
    with pytest.raises(errors.ArchiveLimitError):
        unpack(io.BytesIO(data), tmp_path / "o2", max_total_bytes=250)
    with pytest.raises(errors.ArchiveLimitError):
        unpack(io.BytesIO(data), tmp_path / "o3", max_entries=2)
    assert_nothing_left(tmp_path)
    unpack(io.BytesIO(data), tmp_path / "ok", max_entry_bytes=100, max_total_bytes=300, max_entries=3)


def test_oversized_declared_entry_rejected_before_reading(tmp_path):
    # claims 1 TiB but carries nothing: must fail on the header, not try to read/allocate
    data = MAGIC + b"F" + struct.pack(">H", 5) + b"a.bin" + struct.pack(">Q", 1 << 40)
    with pytest.raises(errors.ArchiveLimitError):
        unpack(io.BytesIO(data), tmp_path / "out", max_entry_bytes=1 << 30)
    assert_nothing_left(tmp_path)


def test_truncated_at_every_offset(tmp_path):
    data = archive(("manifest.json", b"{}"), ("dir/x.bin", os.urandom(50)))
    for cut in range(len(data)):
        with pytest.raises((errors.ArchiveTruncated, errors.ArchiveFormatError)) as ei:
            unpack(io.BytesIO(data[:cut]), tmp_path / "out")
        if cut >= len(MAGIC) or cut == 0 or MAGIC.startswith(data[:cut]):
            assert isinstance(ei.value, (errors.ArchiveTruncated, errors.ArchiveFormatError))
        assert_nothing_left(tmp_path)
    unpack(io.BytesIO(data), tmp_path / "out")


def test_trailing_garbage_and_bad_end(tmp_path):
    good = archive(("a.txt", b"hello"))
    with pytest.raises(errors.ArchiveTrailingData):
        unpack(io.BytesIO(good + b"\x00"), tmp_path / "o")
    with pytest.raises(errors.ArchiveTrailingData):
        unpack(io.BytesIO(good + archive(("b.txt", b"more"))), tmp_path / "o")
    bad_count = MAGIC + rec("a.txt", b"hello") + end(2, 5)
    with pytest.raises(errors.ArchiveFormatError):
        unpack(io.BytesIO(bad_count), tmp_path / "o")
    bad_total = MAGIC + rec("a.txt", b"hello") + end(1, 4)
    with pytest.raises(errors.ArchiveFormatError):
        unpack(io.BytesIO(bad_total), tmp_path / "o")
    with pytest.raises(errors.ArchiveFormatError):
        unpack(io.BytesIO(b"NOTANARCHIVE"), tmp_path / "o")
    with pytest.raises(errors.ArchiveFormatError):
        unpack(io.BytesIO(MAGIC + b"L" + b"\x00" * 20), tmp_path / "o")
    assert_nothing_left(tmp_path)


def test_digest_mismatch(tmp_path):
    data = MAGIC + rec("a.txt", b"hello", digest=hashlib.sha256(b"HELLO").digest()) + end(1, 5)
    with pytest.raises(errors.ArchiveCorrupt):
        unpack(io.BytesIO(data), tmp_path / "o")
    assert_nothing_left(tmp_path)


def test_check_callback_failure_leaves_nothing(tmp_path):
    data = archive(("a.txt", b"hello"))
    seen = []

    def check(d: Path) -> None:
        seen.append(sorted(os.listdir(d)))
        raise errors.RootDigestMismatch("nope")

    with pytest.raises(errors.RootDigestMismatch):
        unpack(io.BytesIO(data), tmp_path / "o", check=check)
    assert seen == [["a.txt"]]
    assert_nothing_left(tmp_path)


def test_list_files_sorted(tmp_path):
    files = make_tree(tmp_path / "s")
    assert [n for n, _ in list_files(tmp_path / "s")] == sorted(files)
    with pytest.raises(errors.ArchiveError):
        list_files(tmp_path / "missing")


_VALID = archive(("manifest.json", b'{"root_digest":"00"}'), ("ck/a.bin", b"\x01\x02\x03" * 20))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, len(_VALID) - 1), xor=st.integers(1, 255))
def test_any_byte_change_is_rejected(tmp_path_factory, pos, xor):
    work = tmp_path_factory.mktemp("fuzz")
    data = bytearray(_VALID)
    data[pos] ^= xor
    with pytest.raises(errors.ArchiveError):
        unpack(io.BytesIO(bytes(data)), work / "out", max_total_bytes=1 << 20)
    assert_nothing_left(work)
