"""The rounding log of an exact-mode proof (`roundlog.polr`): encoding, decoding, validation.

The log is a sorted int64 array [N, 4] of rows (step, point, index, up): at step `step`, value
`index` of rounding point `point`'s vector lay near a float32 rounding tie and rounded up (1) or
down (0) (`pol.step.exact`). Rows are strictly increasing in (step, point, index).

Stored file::

    b"POLR" | u8 version (1) | 3 zero bytes | u64 LE number of rows N
    one zstd frame (content size = 32 N): the delta-coded columns, each N little-endian int64,
    byte-shuffled (all first bytes of a column, then all second bytes, ...)

Version 2 (what pol writes) stores the same rows in chunks, one per checkpoint, each encoded as
version 1 encodes the whole log, so that the prover's writer thread encodes each checkpoint's rows
as they come (not the whole log at the end, in memory)::

    b"POLR" | u8 version (2) | 3 zero bytes | u64 LE number of rows N
    chunks to the end of the file, each: u64 LE rows n | u64 LE frame bytes b | one zstd frame
    of b bytes (content size = 32 n): the chunk's rows delta-coded (from its first row) and
    byte-shuffled as in version 1; the chunks' n sum to N

Version 3 (what pol writes since session 10) adds each chunk's first and last step to its
header, so that a verifier decodes only the chunks of the steps it replays (`Log.between`), not
the whole log at open (at 10^8 rows: gigabytes, and seconds before the first replay)::

    b"POLR" | u8 version (3) | 3 zero bytes | u64 LE number of rows N
    chunks to the end of the file, each: u64 LE rows n | u64 LE frame bytes b | i64 LE first step
    | i64 LE last step | one zstd frame of b bytes, as in version 2; the chunks' step ranges
    never go back (a chunk may start at the step the previous one ended at: the writer hands the
    rows over in pieces of a bounded size, which may cut a step)

Delta coding: step − previous step (0 for the first row: its step), point, index − previous
index where the row continues the previous row's (step, point) (else the index), up. Most bytes
are zero, and a step's few thousand rows compress to a few bytes each.

Decoding checks the header, refuses a frame that declares any other content size (a
decompression bomb is refused before anything is decompressed), and validates every column of the
decoded rows (`validate`); nothing is unpickled. A version 3 log's chunk headers are checked when
it is opened (rows, bytes, step ranges), and a chunk's rows when they are decoded: that they lie
in the declared range, from its first step to its last, and all of `validate` (each chunk, and
where consecutive chunks join). A verifier announces the segments it will replay (`Log.expect`):
each is decoded on a background thread while the one before it replays, its chunks several at a
time. Torch-free, like
the rest of the format.
"""

from __future__ import annotations

import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pol.errors import LimitExceeded, ProofFormatError
from pol.util import THREADS

MAGIC = b"POLR"
VERSION = 3  # what `header` writes; versions 1 (one frame) and 2 (chunks) are read too
COLUMNS = 4
MAX_POINT = 1 << 16  # points a step may have (pol's steps have 3)
MAX_INDEX = 1 << 48  # values in one rounding point's vector
_HEAD = struct.Struct("<4sB3xQ")  # 16 bytes
_CHUNK = struct.Struct("<QQ")  # version 2: a chunk's rows and frame bytes
_CHUNK3 = struct.Struct("<QQqq")  # version 3: ... and its first and last step
_LEVEL = 3


def _zstd():
    from pol.proof.codec import _zstd as zstd
    return zstd()


def _planes(cols: np.ndarray, inverse: bool) -> np.ndarray:
    """[4, N] int64 columns <-> their byte planes (uint8, 32 N)."""
    if inverse:
        n = cols.size // (8 * COLUMNS)
        return np.ascontiguousarray(cols.reshape(COLUMNS, 8, n).transpose(0, 2, 1)).view(
            "<i8").reshape(COLUMNS, n)
    n = cols.shape[1]
    v = np.ascontiguousarray(cols, dtype="<i8").view(np.uint8).reshape(COLUMNS, n, 8)
    out = np.empty((COLUMNS, 8, n), dtype=np.uint8)
    for c in range(COLUMNS):  # plane by plane: 7x faster than one transposing copy (8M rows)
        for b in range(8):
            out[c, b] = v[c, :, b]
    return out.reshape(-1)


def _frame(rows: np.ndarray) -> bytes:
    """One zstd frame of `rows` (int64 [n, 4]), delta-coded from its first row, byte-shuffled."""
    n = len(rows)
    cols = rows.T.copy()
    if n:
        same = np.zeros(n, dtype=bool)
        same[1:] = (rows[1:, 0] == rows[:-1, 0]) & (rows[1:, 1] == rows[:-1, 1])
        cols[0, 1:] = np.diff(rows[:, 0])
        cols[2, 1:] = np.where(same[1:], np.diff(rows[:, 2]), rows[1:, 2])
    return _zstd().ZstdCompressor(level=_LEVEL, write_content_size=True,
                                  write_checksum=True).compress(_planes(cols, False))


def _rows_of(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64).reshape(-1, COLUMNS)


def encode(rows: np.ndarray, version: int = VERSION) -> bytes:
    """The file's bytes for `rows` (int64 [N, 4], sorted as `validate` requires): one chunk
    (versions 2 and 3), or version 1's single frame."""
    rows = _rows_of(rows)
    if version == 1:
        return _HEAD.pack(MAGIC, 1, len(rows)) + _frame(rows)
    return header(len(rows), version) + (encode_chunk(rows, version) if len(rows) else b"")


def header(n: int, version: int = VERSION) -> bytes:
    """A chunked file's header for `n` rows in all; its chunks (`encode_chunk`) follow."""
    return _HEAD.pack(MAGIC, version, n)


def encode_chunk(rows: np.ndarray, version: int = VERSION) -> bytes:
    """A chunk of `rows` (int64 [n, 4], n ≥ 1, sorted as `validate` requires): version 3 with
    its first and last step, or version 2."""
    rows = _rows_of(rows)
    frame = _frame(rows)
    if version == 2:
        return _CHUNK.pack(len(rows), len(frame)) + frame
    return _CHUNK3.pack(len(rows), len(frame), int(rows[0, 0]), int(rows[-1, 0])) + frame


def decode(data: bytes, name: str, total_steps: int, max_bytes: int) -> np.ndarray:
    """The validated rows (int64 [N, 4]) of a stored log, any version; `max_bytes` bounds the
    decoded size (the reader's per-file limit)."""
    return Log(data, name, total_steps, max_bytes).all()


class Log:
    """A stored rounding log, opened: versions 1 and 2 decoded and validated whole at once;
    version 3's chunk headers checked, and its chunks decoded and validated when their steps
    are asked for (`between`), so that a verifier holds only the log of the segment it
    replays. `len()`: the rows in all."""

    def __init__(self, data: bytes, name: str, total_steps: int, max_bytes: int) -> None:
        if len(data) < _HEAD.size:
            raise ProofFormatError(f"{name}: truncated rounding log")
        magic, version, n = _HEAD.unpack_from(data, 0)
        if magic != MAGIC or version not in (1, 2, 3):
            raise ProofFormatError(f"{name}: not a pol rounding log (version {version})")
        size = 8 * COLUMNS * n
        if size > max_bytes:
            raise LimitExceeded(f"{name} decodes to {size:,} bytes", "max_file_bytes",
                                max_bytes)
        self.name, self.total_steps, self.n, self.version = name, total_steps, n, version
        self._data = data
        self._rows = _decode_whole(data, name, total_steps, version, n) if version < 3 else None
        # version 3: per chunk (offset of its frame, rows, frame bytes, first step, last step)
        self._chunks = _chunk_index(data, name, total_steps, n) if version == 3 else []
        self._firsts = np.array([c[3] for c in self._chunks], dtype=np.int64)
        self._lasts = np.array([c[4] for c in self._chunks], dtype=np.int64)
        self._plan: list[tuple[int, int]] = []  # segments announced by `expect`, in order
        self._ahead: _Ahead | None = None  # the one being decoded ahead

    def __len__(self) -> int:
        return self.n

    def all(self) -> np.ndarray:
        """Every row, validated (version 3: every chunk decoded now)."""
        return self.between(0, self.total_steps)

    def between(self, a: int, b: int) -> np.ndarray:
        """The validated rows of steps [a, b) (int64 [m, 4], a new array or a view)."""
        if self._rows is not None:
            lo, hi = np.searchsorted(self._rows[:, 0], [a, b])
            return self._rows[lo:hi]
        return np.stack(self.columns(a, b), axis=1).astype(np.int64, copy=False)

    def columns(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The validated rows of steps [a, b) as their columns, what a replay reads: step
        (int32 below 2^31 steps), point (uint16), index (int64), up (bool); each contiguous,
        15 bytes a row where the rows take 32. A segment announced with `expect` was decoded on
        a background thread while the previous one was replayed; its format errors are raised
        here, as they would be without it."""
        if self._rows is not None:
            return _columns_of(self.between(a, b), self.total_steps)
        job = self._ahead
        if job is not None and job.segment == (a, b):
            self._ahead = None
            cols = job.result()
        else:
            cols = self._decode(a, b)
        self._plan = [seg for seg in self._plan if seg != (a, b)]
        self._start_ahead()
        return cols

    def expect(self, segments, replace: bool = False) -> None:
        """The segments [a, b) that `columns` (or `between`) will be asked for next, in that
        order (a hint: any other order gives the same rows). The first not yet decoded is
        decoded on a background thread at once, and each next one when the one before it is
        handed out: one segment decoded ahead at most (a segment's worth of memory). A segment
        already announced, or being decoded ahead, is not announced twice. `replace`: these
        instead of those announced before (a guess that changed): a segment being decoded
        ahead that is not the first of them is let go (its thread ends on its own)."""
        if self.version != 3:
            return
        segs = [(int(a), int(b)) for a, b in segments]
        if replace:
            self._plan = []
            if self._ahead is not None and (not segs or self._ahead.segment != segs[0]):
                self._ahead = None
        known = set(self._plan)  # (--all announces every segment at once: no quadratic scan)
        if self._ahead is not None:
            known.add(self._ahead.segment)
        for seg in segs:
            if seg not in known:
                known.add(seg)
                self._plan.append(seg)
        self._start_ahead()

    def _start_ahead(self) -> None:
        if self._ahead is None and self._plan:
            self._ahead = _Ahead(self._plan.pop(0), self._decode)

    def _decode(self, a: int, b: int) -> tuple[np.ndarray, ...]:
        """Steps [a, b) of a version 3 log, as `columns`: the chunks holding any of them
        decoded (several at once on threads: zstd and numpy release the GIL), each validated
        as rows, then narrowed into the columns; their joins validated too."""
        # the chunks holding any step of [a, b): a run of consecutive chunks (ranges never go
        # back), all of those that share a step with it among them
        i, j = int(np.searchsorted(self._lasts, a)), int(np.searchsorted(self._firsts, b))
        chunks = self._chunks[i:j]
        ends = np.cumsum([0, *(c[1] for c in chunks)])
        n = int(ends[-1])
        cols = (np.empty(n, dtype=_step_dtype(self.total_steps)), np.empty(n, dtype=np.uint16),
                np.empty(n, dtype=np.int64), np.empty(n, dtype=bool))

        def one(c: int) -> None:
            offset, m, nbytes, first, last = chunks[c]
            part = _decode_frame(memoryview(self._data)[offset:offset + nbytes], m, self.name)
            if part[0, 0] != first or part[-1, 0] != last:
                raise ProofFormatError(f"{self.name}: a chunk declares steps [{first}, {last}] "
                                       f"but holds rows of steps [{part[0, 0]}, {part[-1, 0]}]")
            validate(part, self.name, self.total_steps)  # then every value fits its column
            for k, col in enumerate(cols):
                col[ends[c]:ends[c + 1]] = part[:, k]

        workers = min(len(chunks), THREADS)
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                for f in [pool.submit(one, c) for c in range(len(chunks))]:
                    f.result()  # the first chunk's error first
        else:
            for c in range(len(chunks)):
                one(c)
        # each chunk is validated: what joins them must be too (`validate` on the chunk's
        # last row and the next one's first)
        for c in range(1, len(chunks)):
            at = slice(ends[c] - 1, ends[c] + 1)
            validate(np.stack([col[at] for col in cols], axis=1).astype(np.int64, copy=False),
                     self.name, self.total_steps)
        lo, hi = np.searchsorted(cols[0], [a, b])
        return tuple(col[lo:hi] for col in cols)


def _step_dtype(total_steps: int) -> type:
    return np.int32 if total_steps <= np.iinfo(np.int32).max else np.int64


def _columns_of(rows: np.ndarray, total_steps: int) -> tuple[np.ndarray, ...]:
    """Validated rows (int64 [m, 4]) as `Log.columns` gives them."""
    return (rows[:, 0].astype(_step_dtype(total_steps)), rows[:, 1].astype(np.uint16),
            np.ascontiguousarray(rows[:, 2]), rows[:, 3] != 0)


class _Ahead:
    """One segment's columns decoded on a daemon thread (a verification that stops early does not
    wait for it at exit); `result()` waits and returns them, or raises what the decode raised."""

    def __init__(self, segment: tuple[int, int], decode) -> None:
        self.segment = segment
        self._out: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(decode,), daemon=True,
                                        name="pol-roundlog-ahead")
        self._thread.start()

    def _run(self, decode) -> None:
        try:
            self._out = decode(*self.segment)
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self._error = e

    def result(self) -> tuple[np.ndarray, ...]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out


def _walk_chunks(data: bytes, name: str, n: int, head: struct.Struct):
    """A chunked log's chunks in order, as (frame offset, rows, frame bytes, *the rest of its
    header): each chunk's header `head` (version 2 `_CHUNK`, version 3 `_CHUNK3`) checked
    against the file (rows ≥ 1 summing to the header's N, the frame inside the file)."""
    at, seen = _HEAD.size, 0
    while at < len(data):
        if len(data) - at < head.size:
            raise ProofFormatError(f"{name}: truncated chunk header")
        m, b, *rest = head.unpack_from(data, at)
        at += head.size
        if m == 0 or m > n - seen or b > len(data) - at:
            raise ProofFormatError(f"{name}: a chunk declares {m} rows in {b} bytes, past the "
                                   "file's rows or bytes")
        yield (at, m, b, *rest)
        at, seen = at + b, seen + m
    if seen != n:
        raise ProofFormatError(f"{name}: chunks hold {seen} rows, the header says {n}")


def _chunk_index(data: bytes, name: str, total_steps: int, n: int) -> list[tuple]:
    """A version 3 log's chunks (frame offset, rows, frame bytes, first step, last step), their
    headers checked (`_walk_chunks`, and steps in [0, total_steps) with first ≤ last, no range
    going back)."""
    out, prev = [], 0
    for chunk in _walk_chunks(data, name, n, _CHUNK3):
        first, last = chunk[3], chunk[4]
        if not prev <= first <= last < total_steps:
            raise ProofFormatError(f"{name}: a chunk declares steps [{first}, {last}] after "
                                   f"step {prev}, in a run of {total_steps} steps")
        out.append(chunk)
        prev = last
    return out


def _decode_whole(data: bytes, name: str, total_steps: int, version: int, n: int
                  ) -> np.ndarray:
    """The validated rows of a version 1 or 2 log."""
    if version == 1:
        rows = _decode_frame(memoryview(data)[_HEAD.size:], n, name)
    else:
        # each chunk decoded into its rows of one array (no list of parts joined: at 10^8 rows
        # every full-size copy is gigabytes of fresh pages)
        rows, seen = np.empty((n, COLUMNS), dtype=np.int64), 0
        for at, m, b in _walk_chunks(data, name, n, _CHUNK):
            _decode_frame(memoryview(data)[at:at + b], m, name, rows[seen:seen + m])
            seen += m
    validate(rows, name, total_steps)
    return rows


def _decode_frame(payload: memoryview, n: int, name: str,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The rows (not yet validated) of one frame declared to hold `n` rows, into `out` (an int64
    [n, 4] array, either layout) when given."""
    size = 8 * COLUMNS * n
    zstd = _zstd()
    try:
        declared = zstd.frame_content_size(payload) if len(payload) else -1
        if declared != size:
            raise ProofFormatError(f"{name}: zstd frame declares {declared} bytes, expected {size}")
        raw = zstd.ZstdDecompressor().decompress(payload, max_output_size=size,
                                                 allow_extra_data=False) if size else b""
    except zstd.ZstdError as e:
        raise ProofFormatError(f"{name}: corrupt zstd frame ({e})") from None
    if len(raw) != size:
        raise ProofFormatError(f"{name}: decoded {len(raw)} bytes, expected {size}")
    cols = _planes(np.frombuffer(raw, dtype=np.uint8), True).astype(np.int64, copy=False)
    rows = np.empty((n, COLUMNS), dtype=np.int64) if out is None else out
    if n:
        # modular sums (a forged file may overflow them): the result is validated by the caller
        with np.errstate(over="ignore"):
            rows[:, 0] = np.cumsum(cols[0].view(np.uint64)).view(np.int64)
            rows[:, 1] = cols[1]
            same = np.zeros(n, dtype=bool)
            same[1:] = (rows[1:, 0] == rows[:-1, 0]) & (cols[1, 1:] == cols[1, :-1])
            starts = np.flatnonzero(~same)
            c = np.cumsum(cols[2].view(np.uint64))
            base = np.repeat(c[starts] - cols[2, starts].view(np.uint64),
                             np.diff(np.append(starts, n)))
            rows[:, 2] = (c - base).view(np.int64)
        rows[:, 3] = cols[3]
    return rows


def validate(rows: np.ndarray, name: str, total_steps: int) -> None:
    """Bounds on every column and strictly increasing (step, point, index): ProofFormatError."""
    if rows.ndim != 2 or rows.shape[1] != COLUMNS or rows.dtype != np.int64:
        raise ProofFormatError(f"{name}: expected int64 rows of {COLUMNS} columns")
    if not len(rows):
        return
    for j, (what, hi) in enumerate((("step", total_steps), ("point", MAX_POINT),
                                    ("index", MAX_INDEX), ("direction", 2))):
        col = rows[:, j]
        if col.min() < 0 or col.max() >= hi:
            raise ProofFormatError(f"{name}: a row's {what} is outside [0, {hi})")
    a, b = rows[:-1], rows[1:]
    later = (b[:, 0] > a[:, 0]) | ((b[:, 0] == a[:, 0]) & (
        (b[:, 1] > a[:, 1]) | ((b[:, 1] == a[:, 1]) & (b[:, 2] > a[:, 2]))))
    if not later.all():
        i = int(np.flatnonzero(~later)[0]) + 1
        raise ProofFormatError(f"{name}: rows are not strictly increasing in (step, point, "
                               f"index) (row {i})")
