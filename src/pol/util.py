"""Torch-free helpers used by every package (floor 0: stdlib and `pol.errors` only).

One definition each of: the canonical JSON that pol hashes and signs, the strict JSON parser that
pol reads untrusted JSON with, the atomic (optionally durable) file write, and the SHA-256 of a
file.

Canonical JSON, byte for byte. Two encoders existed and they differ on one point only, non-ASCII
text: the proof manifest's root digest (`pol.manifest.v1`) and the spec hash of a commitment
were computed with `\\uXXXX` escapes (`ensure_ascii=True`); the sealed-file header and the ledger
(entry hashes, payload text) with raw UTF-8. Both are in existing proofs, sealed files and ledgers
(and in the golden fixtures), so both byte forms are kept: `canonical_json(obj)` is the UTF-8 form
and `canonical_json(obj, ascii_only=True)` the escaped one, which only the manifest root digest
and the spec hash use. For ASCII-only values (every golden fixture) the two are the same bytes.
Everything else is shared: sorted keys, no whitespace, no NaN/Infinity, string keys only; a tuple
is encoded as the list it equals (the crypto encoder refused tuples; nothing it signs holds one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pol.errors import ProofFormatError

__all__ = ["canonical_json", "loads_strict", "AtomicFile", "atomic_write", "fsync_dir", "sha256_file",
           "cache_dir",
           "DEFAULT_MAX_JSON_BYTES"]

DEFAULT_MAX_JSON_BYTES = 64 << 20


# ------------------------------------------------------------------------- canonical JSON
def _check(value: Any, path: str = "$") -> None:
    """Refuse what has no single JSON form: non-finite floats, non-string keys, other types."""
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: non-finite float is not allowed in canonical JSON")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: object keys must be strings, got {type(k).__name__}")
            _check(v, f"{path}.{k}")
        return
    raise ValueError(f"{path}: {type(value).__name__} is not JSON-serialisable canonically")


def canonical_json(obj: Any, *, ascii_only: bool = False) -> bytes:
    """The one canonical JSON encoding: sorted keys, no whitespace, UTF-8, no NaN/Infinity, string
    keys only (ValueError otherwise). `ascii_only=True` escapes non-ASCII text as `\\uXXXX`: the
    byte form of the proof manifest's root digest and of the spec hash (see the module doc)."""
    try:
        _check(obj)
    except RecursionError:
        raise ValueError("value is nested too deeply for canonical JSON") from None
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only,
                      allow_nan=False).encode("utf-8")


# ------------------------------------------------------------------------- strict parsing
def loads_strict(data: bytes | str, name: str, *, max_bytes: int | None = DEFAULT_MAX_JSON_BYTES,
                 error: type[Exception] = ProofFormatError) -> Any:
    """Parse untrusted JSON: UTF-8, at most `max_bytes` (None: no bound), no duplicate keys (json
    keeps the last one silently, so two readers could disagree on one file), no NaN/Infinity, no
    nesting deep enough to exhaust the stack. Any failure raises `error("<name>: <why>")`
    (default `ProofFormatError`, exit 2)."""
    if max_bytes is not None and len(data) > max_bytes:  # str: characters, at most its bytes
        raise error(f"{name} is larger than the limit of {max_bytes} bytes")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise error(f"{name}: duplicate key {k!r}")
            out[k] = v
        return out

    def no_constants(c: str) -> Any:
        raise error(f"{name} contains {c}, which JSON does not allow")

    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, huge int literals
        if isinstance(e, error):
            raise
        raise error(f"{name} is not valid JSON: {e}") from None


# ------------------------------------------------------------------------- files
def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in `path` durable (best effort: some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A file written under a temporary name and renamed to `path` only when complete, so that a
    reader (or a crash) sees the old file or the whole new one, never a part. The temporary file
    is `.NAME.tmp<pid>-<random>` in the same directory (a resumed proof removes `.*.tmp*`).

    Creating it (`AtomicFile(path)`) opens the temporary file (OSError if the directory is not
    usable); `with` it yields the binary file object; leaving the block normally fsyncs
    (`durable`), closes and renames; leaving by an exception removes the temporary file.
    `mode`: the file's permission bits exactly (default: 0o666 less the umask, like `open`).
    `overwrite=False`: FileExistsError if `path` exists, atomically (a hard link, which fails if
    `path` appeared meanwhile; check-then-rename on filesystems without hard links). The
    directory is not fsynced (`fsync_dir`, where the rename itself must survive a power cut)."""

    def __init__(self, path: str | os.PathLike[str], durable: bool = True, *,
                 mode: int | None = None, overwrite: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self.overwrite = overwrite
        while True:
            self.tmp = self.path.with_name(
                f".{self.path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
            try:
                fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_CLOEXEC", 0), 0o666 if mode is None else mode)
                break
            except FileExistsError:
                continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.durable:
                    self.file.flush()
                    os.fsync(self.file.fileno())
                self.file.close()
                _publish(self.tmp, self.path, self.overwrite)
                return
        except BaseException:
            self._discard()
            raise
        self._discard()

    def _discard(self) -> None:
        try:
            self.file.close()
        except OSError:  # the buffered rest cannot be written either (full disk): dropped
            pass
        self.tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: bytes, durable: bool = True, *,
                 mode: int | None = None, overwrite: bool = True) -> None:
    """Write `data` to `path` atomically (see `AtomicFile`); `durable`: fsync before the rename."""
    with AtomicFile(path, durable, mode=mode, overwrite=overwrite) as f:
        f.write(data)


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Move the complete `tmp` to `dest` (same directory); without `overwrite`, never replace."""
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network/FAT filesystems)
        if os.path.lexists(dest):
            raise FileExistsError(17, "File exists", str(dest)) from None
        os.rename(tmp, dest)
        return
    os.unlink(tmp)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> tuple[str, int]:
    """(SHA-256 hex digest, size in bytes) of a file, read in chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def cache_dir(kind: str) -> str | None:
    """pol's disk cache for `kind` (e.g. "leaves", "datasets"): $POL_CACHE_DIR/<kind>, else
    $XDG_CACHE_HOME/pol/<kind> (~/.cache/pol/<kind>); POL_CACHE_DIR="" turns it off (None)."""
    root = os.environ.get("POL_CACHE_DIR")
    if root == "":
        return None
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                            os.path.join(os.path.expanduser("~"), ".cache"), "pol")
    return os.path.join(root, kind)


# threads for work that releases the GIL on large buffers (numpy copies, zstd, hashlib)
THREADS = max(1, min(8, os.cpu_count() or 1))


def in_ranges(n: int, fn: Callable[[int, int], Any], *, min_items: int,
              workers: int | None = None) -> list[Any]:
    """fn(a, b) over [0, n) cut into contiguous ranges of at least `min_items` (one per worker,
    default `THREADS`), on threads; the results in range order, the first exception raised.
    For work that releases the GIL on large buffers (numpy copies, hashlib): a single range runs
    on this thread."""
    workers = workers if workers is not None else THREADS
    parts = max(1, min(workers, n // max(1, min_items)))
    cuts = [n * i // parts for i in range(parts + 1)]
    if parts == 1:
        return [fn(0, n)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(parts, thread_name_prefix="pol-ranges") as pool:
        futures = [pool.submit(fn, a, b) for a, b in zip(cuts, cuts[1:])]
        return [f.result() for f in futures]


@contextlib.contextmanager
def short_gil_slices(interval: float = 5e-4):
    """The interpreter's switch interval at most `interval` seconds inside the block, restored
    after (unless something else changed it meanwhile): a thread that wants the GIL back (the
    replay's, after a CUDA launch or sync) waits at most that long for a busy helper thread
    (an import, a decode), not the default 5 ms. Scheduling only: nothing computes differently."""
    old = sys.getswitchinterval()
    if old <= interval:
        yield
        return
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        if abs(sys.getswitchinterval() - interval) < 1e-9:
            sys.setswitchinterval(old)
