"""Pack a proof directory into one byte stream and unpack it safely.

Why not tar/zip: their readers historically allow path traversal, links,
devices and duplicate names, and their many dialects make "reject everything
odd" hard to guarantee.  This format can only express regular files under
validated relative names, and is read strictly.

Stream layout (all integers big-endian)::

    MAGIC                         8 bytes  b"POLARC1\\n"
    repeated file records:
      b"F"                        1
      name_len                    u16      (1..MAX_NAME_BYTES)
      name                        ASCII, must match NAME_PATTERN
      size                        u64
      data                        size bytes
      sha256(record)              32       over b"F" .. data (detects corrupt names too)
    end record:
      b"E"                        1
      entry_count                 u64
      total_data_bytes            u64
    <end of stream>               (anything after it is rejected)

Files are written in sorted name order, so packing the same directory twice
gives identical bytes.  Empty directories are not represented.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Union

from .errors import (
    ArchiveCorrupt,
    ArchiveError,
    ArchiveFormatError,
    ArchiveLimitError,
    ArchiveTrailingData,
    ArchiveTruncated,
    DestinationError,
    DestinationExists,
    UnsafeEntryError,
)

__all__ = [
    "MAGIC",
    "NAME_PATTERN",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "ArchiveStats",
    "validate_name",
    "list_files",
    "pack",
    "unpack",
]

MAGIC = b"POLARC1\n"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
MAX_DEPTH = 4  # maximum number of path components ("a/b/c/file" is depth 4)
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
DEFAULT_MAX_TOTAL_BYTES = 256 * 1024**3
DEFAULT_MAX_ENTRY_BYTES = 64 * 1024**3
DEFAULT_MAX_ENTRIES = 100_000

_COPY_BLOCK = 1024 * 1024
_TAG_FILE = b"F"
_TAG_END = b"E"
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_END = struct.Struct(">QQ")

PathLike = Union[str, "os.PathLike[str]"]


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ArchiveStats:
    """Counts of a pack/unpack run."""

    entries: int
    data_bytes: int
    stream_bytes: int


def validate_name(name: str, max_depth: int = MAX_DEPTH) -> str:
    """Return ``name`` if it is a safe relative proof file name, else raise :class:`UnsafeEntryError`."""
    if not isinstance(name, str) or not name:
        raise UnsafeEntryError("empty entry name")
    shown = ascii(name)[:120]
    if name.startswith("/"):
        raise UnsafeEntryError(f"absolute entry name {shown}")
    if NAME_PATTERN.fullmatch(name) is None:
        raise UnsafeEntryError(f"entry name {shown} has characters or separators outside [A-Za-z0-9_.-/]")
    parts = name.split("/")
    if any(p in (".", "..") for p in parts):
        raise UnsafeEntryError(f"entry name {shown} contains a '.' or '..' component")
    if len(parts) > max_depth:
        raise UnsafeEntryError(f"entry name {shown} is deeper than {max_depth} components")
    if len(name) > MAX_NAME_BYTES or any(len(p) > MAX_COMPONENT_BYTES for p in parts):
        raise UnsafeEntryError(f"entry name {shown} is too long")
    return name


def list_files(src_dir: PathLike, max_depth: int = MAX_DEPTH) -> list[tuple[str, Path]]:
    """All regular files under ``src_dir`` as sorted ``(relative name, path)``; refuses links and specials."""
    root = Path(src_dir)
    try:
        st = os.stat(root)  # the root itself was chosen explicitly; links *inside* are refused
    except FileNotFoundError as exc:
        raise ArchiveError(f"proof directory not found: {root}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ArchiveError(f"not a directory: {root}")
    out: list[tuple[str, Path]] = []

    def walk(directory: Path, prefix: str, depth: int) -> None:
        with os.scandir(directory) as it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                if entry.is_symlink():
                    raise UnsafeEntryError(f"symbolic link not allowed in a proof: {ascii(rel)}")
                if entry.is_dir(follow_symlinks=False):
                    validate_name(rel, max_depth=max_depth - 1)  # a dir needs room for a file below it
                    walk(Path(entry.path), rel + "/", depth + 1)
                elif entry.is_file(follow_symlinks=False):
                    validate_name(rel, max_depth=max_depth)
                    out.append((rel, Path(entry.path)))
                else:
                    raise UnsafeEntryError(f"not a regular file (device, fifo or socket): {ascii(rel)}")

    walk(root, "", 1)
    out.sort(key=lambda t: t[0])
    _check_collisions([n for n, _ in out])
    return out


def _check_collisions(names: list[str]) -> None:
    folded: set[str] = set()
    for n in names:
        f = n.casefold()
        if f in folded:
            raise UnsafeEntryError(f"entry names differ only by case: {ascii(n)}")
        folded.add(f)


def pack(src_dir: PathLike, out_fileobj: _Writable, *, max_depth: int = MAX_DEPTH) -> ArchiveStats:
    """Write every regular file of ``src_dir`` to ``out_fileobj`` in the format above.

    Streams file by file in 1 MiB blocks; refuses symlinks, devices, unsafe
    names, and files that change size while being read.
    """
    files = list_files(src_dir, max_depth=max_depth)
    written = 0

    def emit(data: bytes | memoryview) -> None:
        nonlocal written
        out_fileobj.write(data)
        written += len(data)

    emit(MAGIC)
    total = 0
    buf = bytearray(_COPY_BLOCK)
    view = memoryview(buf)
    for name, path in files:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise ArchiveError(f"cannot open {ascii(name)}: {exc.strerror or exc}") from exc
        with open(fd, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeEntryError(f"not a regular file: {ascii(name)}")
            size = st.st_size
            raw = name.encode("ascii")
            record_header = _TAG_FILE + _U16.pack(len(raw)) + raw + _U64.pack(size)
            emit(record_header)
            h = hashlib.sha256(record_header)
            remaining = size
            while remaining:
                n = fh.readinto(view[: min(remaining, _COPY_BLOCK)])  # type: ignore[attr-defined]
                if not n:
                    raise ArchiveError(f"file shrank while packing: {ascii(name)}")
                chunk = view[:n]
                h.update(chunk)
                emit(chunk)
                remaining -= n
            if fh.read(1):
                raise ArchiveError(f"file grew while packing: {ascii(name)}")
            emit(h.digest())
        total += size
    emit(_TAG_END + _END.pack(len(files), total))
    return ArchiveStats(entries=len(files), data_bytes=total, stream_bytes=written)


def _read_exact(f: _Readable, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        if not data:
            raise ArchiveTruncated(f"archive ends inside {what}")
        data = f.read(n - got)
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def unpack(
    in_fileobj: _Readable,
    dest_dir: PathLike,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    *,
    max_depth: int = MAX_DEPTH,
    check: Callable[[Path], None] | None = None,
) -> ArchiveStats:
    """Extract an archive stream into ``dest_dir`` (which must not exist yet).

    Everything is written into a fresh temporary sibling directory; only when
    the whole stream was read and validated (and ``check(tmp_dir)``, if given,
    returned) is it renamed to ``dest_dir``.  On any failure the temporary
    directory is removed and ``dest_dir`` is untouched.
    """
    dest = Path(dest_dir)
    if os.path.lexists(dest):
        raise DestinationExists(f"destination already exists: {dest}")
    parent = dest.parent
    if not parent.is_dir():
        raise DestinationError(f"parent directory does not exist: {parent}")
    _read_magic(in_fileobj)  # reject garbage before touching the filesystem
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
    except OSError as exc:
        raise DestinationError(f"cannot create a directory in {parent}: {exc.strerror or exc}") from exc
    try:
        stats = _extract(in_fileobj, tmp, max_total_bytes, max_entry_bytes, max_entries, max_depth)
        if check is not None:
            check(tmp)
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            raise DestinationExists(f"cannot move extracted proof to {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _read_magic(f: _Readable) -> None:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
            raise ArchiveTruncated("archive ends inside the magic")
        raise ArchiveFormatError("not a pol archive (bad magic)")


def _extract(
    f: _Readable, root: Path, max_total: int, max_entry: int, max_entries: int, max_depth: int
) -> ArchiveStats:
    # long: one pass over an untrusted archive: every member's checks must stay next to its write
    """Read everything after the magic into ``root``."""
    consumed = len(MAGIC)
    files: set[str] = set()
    folded: set[str] = set()
    dirs: set[str] = set()
    total = 0
    count = 0
    while True:
        tag = f.read(1)
        consumed += len(tag)
        if not tag:
            raise ArchiveTruncated("archive ends before its end record")
        if tag == _TAG_END:
            n_entries, n_bytes = _END.unpack(_read_exact(f, _END.size, "the end record"))
            consumed += _END.size
            if n_entries != count or n_bytes != total:
                raise ArchiveFormatError(
                    f"end record says {n_entries} entries/{n_bytes} bytes, stream had {count}/{total}"
                )
            if f.read(1):
                raise ArchiveTrailingData("unexpected data after the archive's end record")
            return ArchiveStats(entries=count, data_bytes=total, stream_bytes=consumed)
        if tag != _TAG_FILE:
            raise ArchiveFormatError(f"unknown record type {tag!r}")

        (name_len,) = _U16.unpack(_read_exact(f, 2, "an entry header"))
        if not 0 < name_len <= MAX_NAME_BYTES:
            raise UnsafeEntryError(f"entry name length {name_len} out of range")
        raw_name = _read_exact(f, name_len, "an entry name")
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError as exc:
            raise UnsafeEntryError(f"non-ASCII entry name {raw_name[:80]!r}") from exc
        validate_name(name, max_depth=max_depth)
        if name in files:
            raise UnsafeEntryError(f"duplicate entry {ascii(name)}")
        if name.casefold() in folded:
            raise UnsafeEntryError(f"entry names differ only by case: {ascii(name)}")
        parts = name.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if name in dirs or any(p in files for p in parents):
            raise UnsafeEntryError(f"entry {ascii(name)} conflicts with another entry (file vs directory)")
        count += 1
        if count > max_entries:
            raise ArchiveLimitError(f"archive has more than {max_entries} entries")
        (size,) = _U64.unpack(_read_exact(f, 8, "an entry header"))
        consumed += 1 + 2 + name_len + 8
        if size > max_entry:
            raise ArchiveLimitError(f"entry {ascii(name)} is {size} bytes, over the {max_entry}-byte limit")
        if total + size > max_total:
            raise ArchiveLimitError(f"archive data exceeds the {max_total}-byte limit")
        files.add(name)
        folded.add(name.casefold())

        h = hashlib.sha256(_TAG_FILE + _U16.pack(name_len) + raw_name + _U64.pack(size))
        target_dir = root
        for p in parents:
            dirs.add(p)
        for comp in parts[:-1]:
            target_dir = target_dir / comp
            try:
                os.mkdir(target_dir, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(target_dir).st_mode):  # pragma: no cover - guarded above
                    raise UnsafeEntryError(f"path conflict at {ascii(name)}") from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(target_dir / parts[-1], flags, 0o644)
        with open(fd, "wb") as out:
            remaining = size
            while remaining:
                data = f.read(min(remaining, _COPY_BLOCK))
                if not data:
                    raise ArchiveTruncated(f"archive ends inside entry {ascii(name)}")
                h.update(data)
                out.write(data)
                remaining -= len(data)
        digest = _read_exact(f, 32, f"the digest of {ascii(name)}")
        if digest != h.digest():
            raise ArchiveCorrupt(f"entry {ascii(name)} does not match its digest")
        consumed += size + 32
        total += size
