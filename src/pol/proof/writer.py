"""Asynchronous, crash-safe proof writer, taking host buffers.

The writer takes each checkpoint as host buffers (`pol.proof.host.HostCheckpoint`: the safetensors
header and one flat buffer per storage dtype) and enqueues it; a background thread waits for the
buffers to be filled, then hashes and writes. A full queue blocks the trainer (back-pressure), so
memory stays bounded. A write error (full disk, unwritable directory) is raised on the trainer's
next call: training never continues unrecorded.

Who fills the buffers is a snapshotter: `put_checkpoint(t, tensors, records)` hands the state dict
to the one given to the constructor. The default (`pol.proof.host.HostSnapshotter`) copies host
tensors synchronously; the prover passes `pol.prover.snapshot.DeviceSnapshotter`, which snapshots
GPU state without stalling training (CUDA graphs, a side stream, pinned buffers). This module
knows no device.

While writing, `.pol-writing/` holds an append-only journal of per-step records (indices, lrs,
losses; an exact-mode run's rounding log) and `progress.json` names the last checkpoint that is
fully on disk with its records. A
crash at any moment leaves a directory without `manifest.json`, which every reader reports as an
incomplete proof; `finalize()` writes the final arrays, then the manifest atomically, then removes
the journal.

With `compress=True` the writer emits format v2: each checkpoint goes through the lossless codec
(`pol.proof.codec`: XOR with the previous checkpoint, byte shuffle, zstd) in the background thread
(zstd releases the GIL), which keeps the previous checkpoint's raw bytes as the XOR base. A resumed
v2 proof decodes its checkpoints on disk again; the last one is the base of the next delta.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pol.errors import ProofFormatError, ProofWriteError
from pol.proof import codec as _codec
from pol.proof import format as fmt
from pol.proof import roundlog
from pol.proof.hashing import batch_hashes
from pol.proof.host import HostCheckpoint, HostSnapshotter, Layout
# the one atomic write, directory fsync and file digest (old names kept: attacks, tests)
from pol.util import AtomicFile, atomic_write, fsync_dir
from pol.util import sha256_file as file_sha256

log = logging.getLogger(__name__)

WRITING_DIR = ".pol-writing"


_Layout = Layout  # the old name (benchmarks/bench_size.py)

# exact mode: rounding-log pieces (`ProofWriter.put_log`) that may wait for the writer thread
LOG_PIECES_MAX = 16

# the journal's per-step rows, in the dtypes of the arrays they become
_JOURNAL = {k: fmt.npy_descr(v) for k, v in fmt.ARRAY_DTYPES.items()}


class ProofWriter:
    """Writes one proof directory. Give checkpoints t = 0, k, 2k, ..., T in order, each with the
    per-step records of the steps since the previous one, as a state dict (`put_checkpoint`,
    copied by the snapshotter) or as host buffers (`put`), then `finalize`."""

    def __init__(self, out_dir: str | os.PathLike, *, precision: str = "fp32",
                 overwrite: bool = False, queue_size: int = 3, durable: bool = True,
                 run_info: dict | None = None, resume: "ResumePoint | None" = None,
                 compress: bool = False,
                 keyframe_interval: int = _codec.DEFAULT_KEYFRAME_INTERVAL,
                 level: int = _codec.DEFAULT_LEVEL,
                 snapshotter: HostSnapshotter | None = None) -> None:
        """`compress`: write format v2 with the lossless checkpoint codec (a keyframe every
        `keyframe_interval` checkpoints, zstd `level`). A resumed proof keeps the codec it was
        started with (from its progress record). `snapshotter`: what `put_checkpoint` copies the
        state with (default: host tensors, synchronously; the prover passes its device one)."""
        self.dir = Path(out_dir)
        self.precision = precision
        self.durable = durable
        self._files: dict[str, tuple[str, int]] = {}
        self._decoded: dict[str, tuple[str, int]] = {}  # v2: logical name -> decoded sha, size
        self._last_t = -1
        self._rows = 0
        self._log_rows = 0  # rows of the rounding log written (exact mode)
        self._log_bytes = 0  # ... and the bytes of their chunks in the journal
        self._index = 0  # number of checkpoints written
        self._encoder: _codec.Encoder | None = None
        if resume is not None:
            self.run_info = resume.run_info
            self._files = dict(resume.files)
            self._decoded = dict(resume.decoded)
            self._last_t, self._rows = resume.t, resume.rows
            self._log_rows, self._log_bytes = resume.log_rows, resume.log_bytes
            self._index = resume.count
            codec = self.run_info.get("codec")
            if codec is not None:
                self._encoder = _codec.Encoder(codec["keyframe_interval"], level)
                self._encoder.set_base(resume.base, resume.base_segments)
        else:
            self.run_info = dict(run_info or {})
            if compress:
                self._encoder = _codec.Encoder(keyframe_interval, level)
                self.run_info["codec"] = {"name": _codec.CODEC_NAME,
                                          "version": _codec.CODEC_VERSION,
                                          "keyframe_interval": keyframe_interval}
            if self.dir.exists() and any(self.dir.iterdir()):
                if not overwrite:
                    raise ProofWriteError(f"{self.dir} exists and is not empty (use --force to "
                                          "overwrite, or --resume to continue an interrupted run)")
                shutil.rmtree(self.dir)
            try:
                (self.dir / fmt.CKPT_DIR).mkdir(parents=True, exist_ok=True)
                (self.dir / WRITING_DIR).mkdir(exist_ok=True)
                self._write_progress(-1, 0)
            except OSError as e:
                raise ProofWriteError(f"cannot write the proof to {self.dir}: "
                                      f"{e.strerror or e}") from None
        self._error: BaseException | None = None
        self.snapshotter = snapshotter if snapshotter is not None else HostSnapshotter()
        # checkpoints (at most `queue_size` waiting: `_slots`) and the rounding log's pieces
        # between them (`put_log`), in the order they were put
        self._q: queue.Queue[tuple[int, HostCheckpoint] | _LogPiece | None] = queue.Queue(
            maxsize=queue_size + LOG_PIECES_MAX)
        self._slots = threading.Semaphore(queue_size)
        self._log_last: tuple[int, int, int] | None = None  # the last row journaled
        self._log_since: int | None = None  # the first step journaled since the checkpoint
        self.exact = _exact(self.run_info)
        self._journals = {name: open(self.dir / WRITING_DIR / f"{name}.bin", "ab")
                          for name in ("indices", "lrs", "losses") + (("roundlog",) if self.exact
                                                                       else ())}
        self.write_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="pol-proof-writer", daemon=True)
        self._thread.start()

    # ----- trainer side -----

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            raise ProofWriteError(f"writing the proof to {self.dir} failed: {err}; the partial "
                                  "proof is marked incomplete") from err

    def put_checkpoint(self, t: int, tensors: dict[str, Any],
                       records: dict[str, Any] | None = None) -> None:
        """Snapshot `tensors` (a state dict) now through the snapshotter (the caller may keep
        training right after) and write them in the background. `records` holds the rows of the
        steps (last_t, t]: indices int64 [n, B], lrs float64 [n, G], losses float32 [n] (a tensor
        on any device); an exact-mode run's rounding log too (roundlog int64 [m, 4])."""
        self._raise_if_failed()
        self._check_step(t)
        self.put(t, self.snapshotter.take(tensors, records, self.precision))

    def put(self, t: int, checkpoint: HostCheckpoint) -> None:
        """Write checkpoint `t`, given as host buffers, in the background."""
        self._raise_if_failed()
        self._check_step(t)
        self._last_t = t
        while not self._slots.acquire(timeout=0.5):  # block, but notice a dead writer
            self._raise_if_failed()
        self._enqueue((t, checkpoint))

    def put_log(self, rows: np.ndarray) -> None:
        """Exact mode: rows of the rounding log (int64 [m, 4], in order) of the steps since the
        last checkpoint put, journaled in the background as they come (a checkpoint's records
        hold the rest): the log of a long interval is never held, nor encoded, at once."""
        self._raise_if_failed()
        if len(rows):
            self._enqueue(_LogPiece(rows))

    def _enqueue(self, item) -> None:
        while True:  # block on a full queue, but notice a dead writer
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def _check_step(self, t: int) -> None:
        if t <= self._last_t:
            raise ValueError(f"checkpoint steps must increase ({t} after {self._last_t})")

    def finalize(self, manifest_body: dict, leaves: np.ndarray) -> str:
        """Wait for all checkpoints, write the arrays and the manifest; return the root digest."""
        self._q.put(None)
        self._thread.join()
        self._raise_if_failed()
        for f in self._journals.values():
            f.close()
        try:
            T = manifest_body["total_steps"]
            groups = manifest_body["param_groups"]
            wd = self.dir / WRITING_DIR
            idx_flat = np.fromfile(wd / "indices.bin", dtype=_JOURNAL["indices"])
            if T == 0 or idx_flat.size % T:
                raise ProofWriteError("journal of batch indices is inconsistent")
            indices = idx_flat.reshape(T, -1)
            lrs = np.fromfile(wd / "lrs.bin", dtype=_JOURNAL["lrs"]).reshape(T, groups)
            losses = np.fromfile(wd / "losses.bin", dtype=_JOURNAL["losses"])
            if len(losses) != T:
                raise ProofWriteError("journal of losses is inconsistent")
            arrays = {fmt.INDICES: indices, fmt.LRS: lrs, fmt.LOSSES: losses,
                      fmt.BATCH_HASHES: batch_hashes(leaves, indices)}
            for name, arr in arrays.items():
                self._save_npy(name, arr)
            if self.exact:
                self._save_roundlog((wd / "roundlog.bin").read_bytes())
            body = dict(manifest_body)
            body["files"] = {n: {"sha256": d, "size": s} for n, (d, s) in sorted(self._files.items())}
            if self._encoder is not None:
                body["version"] = fmt.CODEC_FORMAT_VERSION
                body["codec"] = dict(self.run_info["codec"])
                body["decoded"] = {n: {"sha256": d, "size": s}
                                   for n, (d, s) in sorted(self._decoded.items())}
            body["root_digest"] = fmt.root_digest(body)
            atomic_write(self.dir / fmt.MANIFEST, json.dumps(body, indent=1, sort_keys=True).encode(),
                         self.durable)
            fsync_dir(self.dir)
            (self.dir / fmt.PROGRESS).unlink(missing_ok=True)
            shutil.rmtree(wd, ignore_errors=True)
            return body["root_digest"]
        except OSError as e:
            raise ProofWriteError(f"writing the proof to {self.dir} failed: {e}") from None

    def abort(self) -> None:
        """Stop the writer thread after an error in training; leaves an incomplete proof."""
        if self._thread.is_alive():
            try:
                self._q.put(None, timeout=5)
            except queue.Full:
                pass
            self._thread.join(timeout=30)
        for f in self._journals.values():
            f.close()

    # ----- writer thread -----

    def _save_npy(self, name: str, arr: np.ndarray) -> None:
        import io
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        data = buf.getvalue()
        atomic_write(self.dir / name, data, self.durable)
        self._files[name] = (hashlib.sha256(data).hexdigest(), len(data))

    def _log_chunk(self, rows, t: int | None = None, n_steps: int = 0) -> bytes:
        """Rows of the rounding log as one chunk of the log file (`pol.proof.roundlog`, its
        current version), encoded here on the writer thread: the journal holds the chunks, and closing the
        proof only puts a header before them. With `t`, the last rows of the checkpoint at t
        (its `n_steps` steps): every row journaled since the previous checkpoint must belong
        to those steps."""
        log = np.ascontiguousarray(rows if rows is not None else np.zeros((0, 4)),
                                   dtype=np.int64).reshape(-1, roundlog.COLUMNS)
        chunk = b""
        if len(log):
            roundlog.validate(log, fmt.ROUNDLOG, t if t is not None else 1 << 62)
            first = tuple(int(v) for v in log[0, :3])
            if self._log_last is not None and first <= self._log_last:
                raise ProofWriteError(f"rounding log rows of step {first[0]} arrived after "
                                      f"those of step {self._log_last[0]}")
            self._log_last = tuple(int(v) for v in log[-1, :3])
            if self._log_since is None:
                self._log_since = first[0]
            chunk = roundlog.encode_chunk(log)
            self._log_rows += len(log)
            self._log_bytes += len(chunk)
        if t is not None:
            since, self._log_since = self._log_since, None
            if since is not None and (since < t - n_steps or self._log_last[0] >= t):
                raise ProofWriteError(f"rounding log rows of steps [{since}, "
                                      f"{self._log_last[0]}] arrived with the checkpoint of "
                                      f"steps [{t - n_steps}, {t})")
        return chunk

    def _save_roundlog(self, chunks: bytes) -> None:
        if len(chunks) != self._log_bytes:
            raise ProofWriteError("journal of the rounding log is inconsistent")
        data = roundlog.header(self._log_rows) + chunks
        atomic_write(self.dir / fmt.ROUNDLOG, data, self.durable)
        self._files[fmt.ROUNDLOG] = (hashlib.sha256(data).hexdigest(), len(data))

    def _write_progress(self, t: int, rows: int) -> None:
        # the run's JSON is serialized once: each checkpoint's record costs the writer thread
        # (and, through the GIL, the training thread) no re-serialization of the spec
        if getattr(self, "_run_json", None) is None:
            self._run_json = json.dumps(self.run_info)
        log_rows = (f'"log_rows": {int(self._log_rows)}, "log_bytes": {int(self._log_bytes)}, '
                    f'"log_version": {roundlog.VERSION}, ' if _exact(self.run_info) else "")
        atomic_write(self.dir / fmt.PROGRESS,
                     (f'{{"writing": true, "last_checkpoint": {int(t)}, "rows": {int(rows)}, '
                      f'{log_rows}"run": {self._run_json}}}').encode(), self.durable)

    def drain(self) -> None:
        """Wait until every checkpoint given so far is written (or the writer failed)."""
        self._q.join()
        self._raise_if_failed()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if self._error is not None:
                    continue  # drain after a failure so the trainer never blocks forever
                t0 = time.perf_counter()
                if isinstance(item, _LogPiece):
                    self._journals["roundlog"].write(self._log_chunk(item.rows))
                else:
                    self._write(*item)
                self.write_seconds += time.perf_counter() - t0
            except BaseException as e:  # noqa: BLE001 - reported to the trainer
                log.error("proof writer failed: %s", e)
                self._error = e
            finally:
                if isinstance(item, tuple):
                    self._slots.release()
                self._q.task_done()

    def _write(self, t: int, snap: HostCheckpoint) -> None:
        if snap.ready is not None:
            snap.ready()
        try:
            self._write_ready(t, snap)
        finally:
            if snap.release is not None:
                snap.release()

    def _write_ready(self, t: int, snap: HostCheckpoint) -> None:
        n_rows = 0
        if snap.records:
            idx = np.ascontiguousarray(snap.records["indices"], dtype=_JOURNAL["indices"])
            lrs = np.ascontiguousarray(snap.records["lrs"], dtype=_JOURNAL["lrs"])
            losses = np.array(snap.records["losses"], dtype=_JOURNAL["losses"])
            n_rows = len(idx)
            if not (len(lrs) == len(losses) == n_rows):
                raise ProofWriteError("per-step records have different lengths")
            parts = [("indices", idx), ("lrs", lrs), ("losses", losses)]
            if self.exact:
                chunk = self._log_chunk(snap.records.get("roundlog"), t, n_rows)
                parts.append(("roundlog", chunk))
            for name, arr in parts:
                f = self._journals[name]
                f.write(arr if isinstance(arr, bytes) else arr.tobytes())
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
        name = fmt.checkpoint_name(t)
        header = snap.header if isinstance(snap.header, bytes) else snap.header.bytes(t)
        chunks = [header] + [memoryview(c) for c in snap.chunks]
        if self._encoder is not None:
            # v2: the raw safetensors bytes (digest bound in the manifest), then the codec
            segments = [(len(header), 1)] + [(c.nbytes, size)
                                             for c, size in zip(snap.chunks, snap.itemsizes)]
            raw = np.empty(sum(n for n, _ in segments), dtype=np.uint8)
            off = 0
            for c in chunks:
                raw[off:off + len(c)] = np.frombuffer(c, dtype=np.uint8)
                off += len(c)
            if snap.release is not None:  # the buffers are free for the next snapshot now
                snap.release()
                snap.release = None
            self._decoded[name] = (hashlib.sha256(raw).hexdigest(), raw.size)
            data, _ = self._encoder.encode(raw, segments, self._index)
            chunks = [data]
            name = fmt.stored_checkpoint_name(t, fmt.CODEC_FORMAT_VERSION)
        h = hashlib.sha256()
        size = 0
        with AtomicFile(self.dir / name, self.durable) as f:  # written raw from the flat buffers
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
        self._files[name] = (h.hexdigest(), size)
        self._index += 1
        self._rows += n_rows
        self._write_progress(t, self._rows)


class _LogPiece:
    """Rows of the rounding log put between checkpoints (`ProofWriter.put_log`)."""

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows


@dataclass
class ResumePoint:
    """Where an interrupted proof can continue: the last checkpoint fully on disk, with the per-step
    records up to it (the journal is cut back to exactly those rows)."""

    t: int
    rows: int
    run_info: dict
    files: dict[str, tuple[str, int]]
    count: int = 0  # checkpoints on disk
    decoded: dict[str, tuple[str, int]] = field(default_factory=dict)  # v2
    log_rows: int = 0  # exact mode: rows of the rounding log up to the checkpoint
    log_bytes: int = 0  # ... and the bytes of their chunks in the journal
    base: np.ndarray | None = None  # v2: raw bytes of the last checkpoint (the next XOR base)
    base_segments: tuple | None = None

    dir: Path = Path(".")

    def checkpoint_bytes(self) -> bytes:
        """The safetensors bytes of the last checkpoint on disk (decoded for v2)."""
        if self.base is not None:
            return self.base.tobytes()
        return (self.dir / fmt.checkpoint_name(self.t)).read_bytes()


def prepare_resume(proof_dir: str | os.PathLike) -> ResumePoint:
    """Inspect an interrupted proof and cut it back to its last complete checkpoint. Anything
    written after that checkpoint (a half-written file, journal rows, a later checkpoint whose
    progress entry never landed) is discarded; it will be recomputed exactly."""
    d = Path(proof_dir)
    if (d / fmt.MANIFEST).exists():
        raise ProofWriteError(f"{d} is a finished proof; nothing to resume")
    try:
        prog = json.loads((d / fmt.PROGRESS).read_text())
    except FileNotFoundError:
        raise ProofWriteError(f"{d} has no progress.json: not an interrupted pol proof") from None
    except (OSError, ValueError) as e:
        raise ProofWriteError(f"{d}/progress.json is unreadable ({e}); cannot resume") from None
    t, rows, run = prog.get("last_checkpoint"), prog.get("rows"), prog.get("run")
    if (not isinstance(t, int) or not isinstance(rows, int) or not isinstance(run, dict)
            or rows != max(t, 0) or "spec" not in run):
        raise ProofWriteError(f"{d}/progress.json is inconsistent; cannot resume")
    if t < 0:
        raise ProofWriteError(f"{d} was interrupted before its first checkpoint was written: "
                              "start the run again (--force)")
    wd = d / WRITING_DIR
    batch = run["spec"]["batch_size"]
    groups = run.get("param_groups", 1)
    log_rows, log_bytes = prog.get("log_rows", 0), prog.get("log_bytes")
    if _exact(run) and (not isinstance(log_rows, int) or log_rows < 0 or not (
            log_bytes is None or isinstance(log_bytes, int) and log_bytes >= 0)):
        raise ProofWriteError(f"{d}/progress.json is inconsistent; cannot resume")
    journals = [("indices", 8 * batch, rows), ("lrs", 8 * groups, rows), ("losses", 4, rows)]
    if _exact(run):  # chunks (1 byte "wide"); raw rows of 32 bytes before pol wrote chunks
        journals.append(("roundlog", 1, log_bytes) if log_bytes is not None
                        else ("roundlog", 32, log_rows))
    for name, width, n in journals:
        path = wd / f"{name}.bin"
        if not path.exists() or path.stat().st_size < n * width:
            raise ProofWriteError(f"{d}: the journal {path.name} is shorter than its progress "
                                  "record; cannot resume")
        with open(path, "r+b") as f:
            f.truncate(n * width)
    codec = run.get("codec")
    version = fmt.CODEC_FORMAT_VERSION if codec is not None else fmt.FORMAT_VERSION
    files, decoded = {}, {}
    count = 0
    base = segs = None
    for step in fmt.checkpoint_steps(run["total_steps"], run["k"]):
        name = fmt.stored_checkpoint_name(step, version)
        if step <= t:
            if not (d / name).is_file():
                raise ProofWriteError(f"{d}: checkpoint {name} is missing; cannot resume")
            files[name] = file_sha256(d / name)
            if codec is not None:  # decode again: digests of the decoded bytes, the XOR base
                try:
                    frame = _codec.parse_frame((d / name).read_bytes(), name,
                                               _frame_raw_size(d / name))
                    base = _codec.decode(frame, name, base, segs)
                except Exception as e:  # noqa: BLE001 - ProofFormatError, or a broken header
                    raise ProofWriteError(f"{d}: checkpoint {name} cannot be decoded ({e}); "
                                          "cannot resume") from None
                segs = frame.segments
                decoded[fmt.checkpoint_name(step)] = (hashlib.sha256(base).hexdigest(), base.size)
            count += 1
        else:
            (d / name).unlink(missing_ok=True)
    for tmp in [*(d / fmt.CKPT_DIR).glob(".*.tmp*"), *d.glob(".*.tmp*")]:
        tmp.unlink(missing_ok=True)
    if _exact(run) and (log_bytes is None or prog.get("log_version") != roundlog.VERSION):
        log_bytes = _rechunk_log(wd / "roundlog.bin", log_rows, log_bytes, run["total_steps"], d)
    return ResumePoint(t=t, rows=rows, run_info=run, files=files, count=count, decoded=decoded,
                       base=base, base_segments=segs, dir=d,
                       log_rows=log_rows if _exact(run) else 0,
                       log_bytes=(log_bytes or 0) if _exact(run) else 0)


def _rechunk_log(path: Path, log_rows: int, log_bytes: int | None, total_steps: int,
                 d: Path) -> int:
    """An older run's rounding-log journal as one chunk of this version (raw rows of 32 bytes
    before pol wrote chunks; version 2 chunks, without their step ranges, before version 3):
    its rows decoded, checked, and encoded again. Returns the journal's new length."""
    if log_bytes is None:
        rows_ = np.fromfile(path, dtype="<i8").reshape(-1, roundlog.COLUMNS)
    else:
        try:
            rows_ = roundlog.decode(roundlog.header(log_rows, 2) + path.read_bytes(), path.name,
                                    total_steps, 1 << 62)
        except ProofFormatError as e:
            raise ProofWriteError(f"{d}: the rounding log's journal cannot be read ({e}); "
                                  "cannot resume") from None
    chunk = roundlog.encode_chunk(rows_) if len(rows_) else b""
    atomic_write(path, chunk, True)
    return len(chunk)


def _exact(run_info: dict) -> bool:
    """Whether the run a writer records is in exact mode (its spec's step says so)."""
    spec = run_info.get("spec") if isinstance(run_info, dict) else None
    step = spec.get("step") if isinstance(spec, dict) else None
    return isinstance(step, dict) and step.get("exact") is True


def _frame_raw_size(path: Path) -> int:
    """A v2 checkpoint's decoded size, from its own header (the prover's own file, on resume)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16:
        raise ProofWriteError(f"{path.name} is truncated")
    return int.from_bytes(head[8:16], "little")


def rehash_manifest(proof_dir: str | os.PathLike) -> str:
    """Recompute every file digest and the root digest of an existing proof after its files were
    changed. A forger can always do this (a digest only binds what the prover published); the
    tests and the attack tools use it so that only the verifier's replay can catch a change."""
    d = Path(proof_dir)
    body = json.loads((d / fmt.MANIFEST).read_text())
    for name in body["files"]:
        sha, size = file_sha256(d / name)
        body["files"][name] = {"sha256": sha, "size": size}
    body["root_digest"] = fmt.root_digest(body)
    atomic_write(d / fmt.MANIFEST, json.dumps(body, indent=1, sort_keys=True).encode())
    return body["root_digest"]
