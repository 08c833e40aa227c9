"""Asynchronous, crash-safe proof writer.

The training thread only copies state into reusable snapshot buffers (pinned memory on a GPU, so the
copy does not stall the device) and enqueues them; a background thread serializes safetensors, hashes
and writes. A full queue blocks the trainer (back-pressure), so memory stays bounded. A write error
(full disk, unwritable directory) is raised on the trainer's next call: training never continues
unrecorded.

While writing, `.pol-writing/` holds an append-only journal of per-step records (indices, lrs,
losses) and `progress.json` names the last checkpoint that is fully on disk with its records. A
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
import torch

from pol.errors import ProofWriteError
from pol.proof import codec as _codec
from pol.proof import format as fmt
from pol.proof.hashing import batch_hashes

log = logging.getLogger(__name__)

WRITING_DIR = ".pol-writing"


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
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


def file_sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


_ST_DTYPE = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
             torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
             torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


_STEP_SLOT = b"@@pol-step-slot-@@@@"  # 20 bytes, replaced by the zero-padded step number


@dataclass
class _Layout:
    """How a state dict maps onto a few flat buffers (one per storage dtype and device) and onto the
    safetensors file written from them. Built once and reused while the state's tensors are the
    same objects, so a snapshot is one `torch.cat` and one copy per group, whatever the model."""

    key: tuple
    groups: list[tuple[torch.dtype, torch.device, list[torch.Tensor], int]]
    header_json: dict
    _header: bytes | None = None
    # GPU: the device-side gather of every CUDA group captured once as a CUDA graph into static
    # buffers (a replay costs ~5 µs of host time where torch.cat over ~175 tensors costs ~86 µs,
    # measured on an H100); None = not tried yet, False = not possible here (eager cat)
    graph: Any = None
    statics: list | None = None
    copied: Any = None  # event: the side stream's last copy out of the static buffers

    def capture(self) -> bool:
        """Capture the gather of the CUDA groups into static buffers; False where it cannot be
        done (a dtype conversion, several devices, or a capture error), and the eager path is
        used."""
        if self.graph is not None:
            return self.graph is not False
        self.graph = False
        cuda = [(st, dev, views) for st, dev, views, _ in self.groups if dev.type == "cuda"]
        if (not cuda or len({d for _, d, _ in cuda}) != 1
                or any(v.dtype != st for st, _, views in cuda for v in views)):
            return False
        try:
            statics = [torch.empty(sum(v.numel() for v in views), dtype=st, device=dev)
                       for st, dev, views in cuda]
            s = torch.cuda.Stream(device=cuda[0][1])
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):  # warm-up outside the capture, as torch requires
                for (_, _, views), out in zip(cuda, statics):
                    torch.cat(views, out=out)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            # thread_local: the writer thread may synchronize its events meanwhile
            with torch.cuda.graph(g, capture_error_mode="thread_local"):
                for (_, _, views), out in zip(cuda, statics):
                    torch.cat(views, out=out)
        except Exception as e:  # noqa: BLE001 - any capture problem: the eager path is exact too
            log.info("snapshot CUDA graph not used: %s", e)
            return False
        self.graph, self.statics = g, statics
        return True

    @classmethod
    def build(cls, tensors: dict[str, torch.Tensor], precision: str, key: tuple) -> "_Layout":
        by_group: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
        for name, v in tensors.items():
            st = fmt.storage_dtype(name, v, precision)
            if st not in _ST_DTYPE:
                raise ProofWriteError(f"{name}: dtype {v.dtype} cannot be stored")
            by_group.setdefault((st, v.device), []).append((name, v))
        groups, header, off = [], {}, 0
        for (st, dev), items in by_group.items():
            views = [v.detach().reshape(-1) for _, v in items]
            numel = sum(x.numel() for x in views)
            for name, v in items:
                n = v.numel() * torch.empty((), dtype=st).element_size()
                header[name] = {"dtype": _ST_DTYPE[st], "shape": list(v.shape),
                                "data_offsets": [off, off + n]}
                off += n
            groups.append((st, dev, views, numel))
        return cls(key=key, groups=groups, header_json=header)

    def header_bytes(self, step: int) -> bytes:
        """The safetensors header for checkpoint `step`: built once per layout (the JSON of a
        ResNet costs ~0.3 ms holding the GIL), then only the fixed-width step field changes."""
        if self._header is None:
            h = json.dumps({"__metadata__": {"format": fmt.FORMAT_NAME, "step": _STEP_SLOT.decode()},
                            **self.header_json}, separators=(",", ":")).encode()
            h += b" " * (-len(h) % 8)
            self._header = len(h).to_bytes(8, "little") + h
        return self._header.replace(_STEP_SLOT, f"{step:020d}".encode(), 1)


@dataclass
class _Snapshot:
    t: int
    layout: _Layout
    bufs: list[torch.Tensor]
    records: dict[str, np.ndarray | torch.Tensor]
    event: Any = None


@dataclass
class _Pool:
    """Reusable pinned/host buffers, so steady-state checkpointing allocates nothing (pinned
    allocations are slow)."""

    free: dict[tuple, list[list[torch.Tensor]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, layout: _Layout, pin: bool) -> list[torch.Tensor]:
        return self.get_key(tuple((st, n) for st, _, _, n in layout.groups), pin)

    def get_flat(self, n: int, dtype: torch.dtype, pin: bool) -> torch.Tensor:
        return self.get_key(((dtype, n),), pin)[0]

    def get_key(self, key: tuple, pin: bool) -> list[torch.Tensor]:
        with self.lock:
            lst = self.free.get(key)
            if lst:
                return lst.pop()
        return [torch.empty(n, dtype=st, pin_memory=pin) for st, n in key]

    def put(self, bufs: list[torch.Tensor]) -> None:
        key = tuple((b.dtype, b.numel()) for b in bufs)
        with self.lock:
            self.free.setdefault(key, []).append(bufs)


class ProofWriter:
    """Writes one proof directory. Use `put_checkpoint` for t = 0, k, 2k, ..., T in order, each with
    the per-step records of the steps since the previous one, then `finalize`."""

    def __init__(self, out_dir: str | os.PathLike, *, precision: str = "fp32",
                 overwrite: bool = False, queue_size: int = 3, durable: bool = True,
                 run_info: dict | None = None, resume: "ResumePoint | None" = None,
                 compress: bool = False,
                 keyframe_interval: int = _codec.DEFAULT_KEYFRAME_INTERVAL,
                 level: int = _codec.DEFAULT_LEVEL) -> None:
        """`compress`: write format v2 with the lossless checkpoint codec (a keyframe every
        `keyframe_interval` checkpoints, zstd `level`). A resumed proof keeps the codec it was
        started with (from its progress record)."""
        self.dir = Path(out_dir)
        self.precision = precision
        self.durable = durable
        self._files: dict[str, tuple[str, int]] = {}
        self._decoded: dict[str, tuple[str, int]] = {}  # v2: logical name -> decoded sha, size
        self._last_t = -1
        self._rows = 0
        self._index = 0  # number of checkpoints written
        self._encoder: _codec.Encoder | None = None
        if resume is not None:
            self.run_info = resume.run_info
            self._files = dict(resume.files)
            self._decoded = dict(resume.decoded)
            self._last_t, self._rows = resume.t, resume.rows
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
        self._pool = _Pool()
        self._layout: _Layout | None = None
        self._layout_src: dict | None = None
        self._q: queue.Queue[_Snapshot | None] = queue.Queue(maxsize=queue_size)
        self._journals = {name: open(self.dir / WRITING_DIR / f"{name}.bin", "ab")
                          for name in ("indices", "lrs", "losses")}
        self.write_seconds = 0.0
        # GPU snapshots through a captured CUDA graph (POL_SNAPSHOT_GRAPHS=0 turns it off)
        self.use_graphs = os.environ.get("POL_SNAPSHOT_GRAPHS", "1") != "0"
        self._thread = threading.Thread(target=self._run, name="pol-proof-writer", daemon=True)
        self._thread.start()

    # ----- trainer side -----

    def _side_stream(self) -> "torch.cuda.Stream":
        if getattr(self, "_stream", None) is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            raise ProofWriteError(f"writing the proof to {self.dir} failed: {err}; the partial "
                                  "proof is marked incomplete") from err

    def put_checkpoint(self, t: int, tensors: dict[str, torch.Tensor],
                       records: dict[str, np.ndarray | torch.Tensor] | None = None) -> None:
        """Snapshot `tensors` now (the caller may keep training right after) and write them in the
        background. `records` holds the rows of the steps (last_t, t]: indices int64 [n, B],
        lrs float64 [n, G], losses float32 [n] (a tensor on any device)."""
        self._raise_if_failed()
        if t <= self._last_t:
            raise ValueError(f"checkpoint steps must increase ({t} after {self._last_t})")
        if self._layout is None or tensors is not self._layout_src:
            # a new state dict object (a caller that caches its dict skips this ~50 µs check)
            key = tuple((name, v.data_ptr(), v.dtype, v.shape) for name, v in tensors.items())
            if self._layout is None or self._layout.key != key:
                self._layout = _Layout.build(tensors, self.precision, key)
            self._layout_src = tensors
        layout = self._layout
        on_gpu = any(dev.type == "cuda" for _, dev, _, _ in layout.groups)
        bufs = self._pool.get(layout, pin=on_gpu)
        # On a GPU: one device-side copy of the state (torch.cat, on the training stream, so it
        # sees the weights of step t), then the device→host copy on a side stream, so that the
        # training stream (and the next batch's host→device copy) never waits for it.
        side = self._side_stream() if on_gpu else None
        gpu_tmps: list[torch.Tensor] = []
        graphed = on_gpu and self.use_graphs and layout.capture()
        with torch.no_grad():
            if graphed:
                if layout.copied is not None:  # the previous copy out of the statics is done
                    torch.cuda.current_stream().wait_event(layout.copied)
                layout.graph.replay()
            for buf, (st, dev, views, _) in zip(bufs, layout.groups):
                if dev.type == "cpu" and all(v.dtype == st for v in views):
                    torch.cat(views, out=buf)
                elif dev.type == "cuda":
                    if not graphed:
                        gpu_tmps.append(torch.cat(views).to(st))
                else:
                    buf.copy_(torch.cat(views).to(st))
            if graphed:
                gpu_tmps = list(layout.statics) + gpu_tmps
        recs: dict[str, np.ndarray | torch.Tensor] = dict(records or {})
        losses = recs.get("losses")
        host_losses = None
        if isinstance(losses, torch.Tensor):
            # into a pooled pinned buffer: no pinned allocation (which synchronizes the device)
            host_losses = self._pool.get_flat(losses.numel(), torch.float32, pin=on_gpu)
            if losses.device.type == "cuda":
                gpu_tmps.append(losses.detach().reshape(-1).float())
            else:
                host_losses.copy_(losses.detach().reshape(-1))
            recs["losses"] = host_losses
        event = None
        if on_gpu:
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                dsts = [b for b, g in zip(bufs, layout.groups) if g[1].type == "cuda"]
                if host_losses is not None and isinstance(losses, torch.Tensor) \
                        and losses.device.type == "cuda":
                    dsts.append(host_losses)
                for dst, src in zip(dsts, gpu_tmps):
                    dst.copy_(src, non_blocking=True)
                    src.record_stream(side)  # keep the temporary alive until copied
                event = torch.cuda.Event()
                event.record(side)
            if graphed:
                layout.copied = event
        self._last_t = t
        while True:  # block on a full queue, but notice a dead writer
            try:
                self._q.put(_Snapshot(t, layout, bufs, recs, event), timeout=0.5)
                break
            except queue.Full:
                self._raise_if_failed()

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
            idx_flat = np.fromfile(wd / "indices.bin", dtype="<i8")
            if T == 0 or idx_flat.size % T:
                raise ProofWriteError("journal of batch indices is inconsistent")
            indices = idx_flat.reshape(T, -1)
            lrs = np.fromfile(wd / "lrs.bin", dtype="<f8").reshape(T, groups)
            losses = np.fromfile(wd / "losses.bin", dtype="<f4")
            if len(losses) != T:
                raise ProofWriteError("journal of losses is inconsistent")
            arrays = {fmt.INDICES: indices, fmt.LRS: lrs, fmt.LOSSES: losses,
                      fmt.BATCH_HASHES: batch_hashes(leaves, indices)}
            for name, arr in arrays.items():
                self._save_npy(name, arr)
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

    def _write_progress(self, t: int, rows: int) -> None:
        atomic_write(self.dir / fmt.PROGRESS,
                     json.dumps({"writing": True, "last_checkpoint": t, "rows": rows,
                                 "run": self.run_info}).encode(), self.durable)

    def _run(self) -> None:
        while True:
            snap = self._q.get()
            if snap is None:
                return
            if self._error is not None:
                continue  # drain after a failure so the trainer never blocks forever
            try:
                t0 = time.perf_counter()
                self._write(snap)
                self.write_seconds += time.perf_counter() - t0
            except BaseException as e:  # noqa: BLE001 - reported to the trainer
                log.error("proof writer failed: %s", e)
                self._error = e

    def _write(self, snap: _Snapshot) -> None:
        if snap.event is not None:
            snap.event.synchronize()
        n_rows = 0
        if snap.records:
            idx = np.ascontiguousarray(snap.records["indices"], dtype="<i8")
            lrs = np.ascontiguousarray(snap.records["lrs"], dtype="<f8")
            losses = snap.records["losses"]
            loss_buf = losses if isinstance(losses, torch.Tensor) else None
            losses = np.array(losses.numpy() if loss_buf is not None else losses, dtype="<f4")
            if loss_buf is not None:
                self._pool.put([loss_buf])
            n_rows = len(idx)
            if not (len(lrs) == len(losses) == n_rows):
                raise ProofWriteError("per-step records have different lengths")
            for name, arr in (("indices", idx), ("lrs", lrs), ("losses", losses)):
                f = self._journals[name]
                f.write(arr.tobytes())
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
        name = fmt.checkpoint_name(snap.t)
        chunks = [snap.layout.header_bytes(snap.t)] + [
            memoryview(b.view(torch.uint8).numpy()) for b in snap.bufs]
        if self._encoder is not None:
            # v2: the raw safetensors bytes (digest bound in the manifest), then the codec
            segments = [(len(chunks[0]), 1)] + [(b.numel() * b.element_size(), b.element_size())
                                               for b in snap.bufs]
            raw = np.empty(sum(n for n, _ in segments), dtype=np.uint8)
            off = 0
            for c in chunks:
                raw[off:off + len(c)] = np.frombuffer(c, dtype=np.uint8)
                off += len(c)
            self._pool.put(snap.bufs)
            self._decoded[name] = (hashlib.sha256(raw).hexdigest(), raw.size)
            data, _ = self._encoder.encode(raw, segments, self._index)
            chunks = [data]
            name = fmt.stored_checkpoint_name(snap.t, fmt.CODEC_FORMAT_VERSION)
        path = self.dir / name
        tmp = path.with_name(f".{path.name}.tmp")
        h = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as f:  # safetensors, written raw from the flat buffers
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self._encoder is None:
            self._pool.put(snap.bufs)
        self._files[name] = (h.hexdigest(), size)
        self._index += 1
        self._rows += n_rows
        self._write_progress(snap.t, self._rows)


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
    for name, width in (("indices", 8 * batch), ("lrs", 8 * groups), ("losses", 4)):
        path = wd / f"{name}.bin"
        if not path.exists() or path.stat().st_size < rows * width:
            raise ProofWriteError(f"{d}: the journal {path.name} is shorter than its progress "
                                  "record; cannot resume")
        with open(path, "r+b") as f:
            f.truncate(rows * width)
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
    return ResumePoint(t=t, rows=rows, run_info=run, files=files, count=count, decoded=decoded,
                       base=base, base_segments=segs, dir=d)


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
