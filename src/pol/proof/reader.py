"""Safe, validating proof reader.

A proof comes from a possibly hostile party. Nothing here unpickles: tensors come from safetensors
(header parsed and checked by us first; or, for the verifier, views of the bytes read where their
layout is one the safetensors parser takes as it is), arrays from `.npy` headers checked against
the manifest before `np.frombuffer`. Every file is read through `_read_file`, which refuses
symlinks and paths outside the proof, checks the size against the manifest before reading, and
checks the SHA-256 after. Sizes and shapes from a proof are compared with limits before anything
is allocated.
"""

from __future__ import annotations

import ast
import hashlib
import os
import struct
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load

from pol.errors import IncompleteProofError, IntegrityError, ProofFormatError
from pol.proof import format as fmt
from pol.util import loads_strict

_ST_DTYPES = fmt.SAFETENSORS_ITEMSIZE  # safetensors code -> item size, from the one dtype table


def _resolve_inside(root: Path, name: str) -> Path:
    fmt.check_name(name)
    p = root / name
    # refuse a symlink anywhere on the way (a link could point outside the proof)
    cur = root
    for part in name.split("/"):
        cur = cur / part
        if cur.is_symlink():
            raise ProofFormatError(f"{name}: symbolic links are not allowed inside a proof")
    return p


def _read_file(root: Path, name: str, size: int, sha256: str, writable: bool = False
               ) -> bytes | bytearray:
    """The file's bytes, checked (size, SHA-256); `writable`: in a bytearray (tensors can be
    views of it)."""
    p = _resolve_inside(root, name)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ProofFormatError(f"missing file {name}") from None
    except OSError as e:
        raise ProofFormatError(f"cannot read {name}: {e.strerror}") from None
    if not os.path.isfile(p):
        raise ProofFormatError(f"{name} is not a regular file")
    if st.st_size != size:
        raise ProofFormatError(f"{name} is truncated or corrupt: {st.st_size} bytes, "
                               f"manifest says {size}")
    with open(p, "rb") as f:
        data = _read_exactly(f, size) if writable else f.read(size + 1)
    if data is None or len(data) != size:
        raise ProofFormatError(f"{name} changed size while being read")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{name} does not match its SHA-256 in the manifest")
    return data


def _read_exactly(f, size: int) -> bytearray | None:
    """`size` bytes of `f` into a new bytearray (no second copy); None where it holds more or
    fewer."""
    buf = bytearray(size)
    with memoryview(buf) as view:
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                return None
            got += n
    return buf if not f.read(1) else None


def parse_npy(data: bytes, name: str, dtype: str, shape: tuple[int | None, ...],
              limits: fmt.Limits) -> np.ndarray:
    """Parse a .npy without pickle; `None` in `shape` means any size up to the limits."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise ProofFormatError(f"{name} is not a .npy file")
    major = data[6]
    if major == 1:
        hlen = struct.unpack("<H", data[8:10])[0]
        start = 10
    elif major in (2, 3):
        if len(data) < 12:
            raise ProofFormatError(f"{name} is truncated")
        hlen = struct.unpack("<I", data[8:12])[0]
        start = 12
    else:
        raise ProofFormatError(f"{name}: unsupported .npy version {major}")
    if hlen > 65536 or start + hlen > len(data):
        raise ProofFormatError(f"{name}: .npy header length {hlen} is invalid")
    try:
        header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ProofFormatError(f"{name}: malformed .npy header") from None
    if (not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}
            or header["descr"] != dtype or header["fortran_order"] is not False
            or not isinstance(header["shape"], tuple) or len(header["shape"]) != len(shape)):
        raise ProofFormatError(f"{name}: expected dtype {dtype} with {len(shape)} dimension(s)")
    got = header["shape"]
    n = 1
    for g, want in zip(got, shape):
        if not isinstance(g, int) or isinstance(g, bool) or g < 0 or (want is not None and g != want):
            raise ProofFormatError(f"{name}: shape {got} does not fit the manifest (want {shape})")
        n *= g
    itemsize = np.dtype(dtype).itemsize
    body = data[start + hlen:]
    if n * itemsize != len(body):
        raise ProofFormatError(f"{name}: {len(body)} data bytes for shape {got}")
    return np.frombuffer(body, dtype=dtype).reshape(got)


def parse_safetensors(data: bytes | bytearray, name: str, limits: fmt.Limits,
                      share: bool = False) -> dict[str, torch.Tensor]:
    """Check a safetensors header ourselves (lengths, dtypes, offsets) before handing the bytes to
    the safetensors parser. `share` (`data` a bytearray): the tensors are views of `data`, no
    copy, where the layout is one the parser accepts as it is (`_views`)."""
    if len(data) < 8:
        raise ProofFormatError(f"{name} is truncated")
    hlen = struct.unpack("<Q", data[:8])[0]
    if hlen > limits.max_safetensors_header or 8 + hlen > len(data):
        raise ProofFormatError(f"{name}: safetensors header length {hlen} is invalid")
    # no duplicate keys (two parsers could disagree), no NaN, valid UTF-8, bounded nesting
    header = loads_strict(bytes(data[8:8 + hlen]), f"{name}: safetensors header", max_bytes=None)
    if not isinstance(header, dict):
        raise ProofFormatError(f"{name}: malformed safetensors header")
    body = len(data) - 8 - hlen
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if (not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES
                or not isinstance(info.get("shape"), list)
                or not isinstance(info.get("data_offsets"), list) or len(info["data_offsets"]) != 2):
            raise ProofFormatError(f"{name}: bad entry {key!r} in safetensors header")
        n = 1
        for d in info["shape"]:
            if not isinstance(d, int) or isinstance(d, bool) or d < 0 or d > 2**40:
                raise ProofFormatError(f"{name}: bad shape for {key!r}")
            n *= d
        a, b = info["data_offsets"]
        if (not all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b))
                or not 0 <= a <= b <= body or b - a != n * _ST_DTYPES[info["dtype"]]):
            raise ProofFormatError(f"{name}: bad data offsets for {key!r}")
        spans.append((a, b))
    spans.sort()
    for (a1, b1), (a2, _) in zip(spans, spans[1:]):
        if a2 < b1:
            raise ProofFormatError(f"{name}: overlapping tensors")
    views = _views(data, 8 + hlen, header, spans) if share else None
    if views is not None:
        return views
    try:
        return st_load(bytes(data) if isinstance(data, bytearray) else data)
    except Exception as e:  # noqa: BLE001 - the parser's own error, reported as unusable input
        raise ProofFormatError(f"{name}: unreadable safetensors ({e})") from None


_TORCH_DTYPES = {code: getattr(torch, dt) for dt, (code, _, _) in fmt.DTYPES.items()}


def _views(data, start: int, header: dict, spans: list[tuple[int, int]]
           ) -> dict[str, torch.Tensor] | None:
    """The tensors as views of the bytearray `data` (body at `start`), in the safetensors
    parser's order (by name), where that parser would take the bytes as they are: the tensors
    tile the body from its start to its end, the metadata maps strings to strings, and every
    tensor is aligned to its item size in memory (a little-endian machine; no bool, whose bytes
    the parser would have to check). None: anything else (the parser decides)."""
    meta = header.get("__metadata__")
    ends = [0] + [b for _, b in spans]
    if (not isinstance(data, bytearray) or sys.byteorder != "little"
            or any(a != e for (a, _), e in zip(spans, ends)) or ends[-1] != len(data) - start
            or not (meta is None or isinstance(meta, dict)
                    and all(isinstance(v, str) for v in meta.values()))):
        return None
    base = np.frombuffer(data, dtype=np.uint8).ctypes.data + start if data else start
    out = {}
    for key in sorted(k for k in header if k != "__metadata__"):
        info = header[key]
        dtype, size = _TORCH_DTYPES[info["dtype"]], _ST_DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        if dtype == torch.bool or (base + a) % size:
            return None
        flat = (torch.frombuffer(data, dtype=dtype, count=(b - a) // size, offset=start + a)
                if b > a else torch.empty(0, dtype=dtype))
        out[key] = flat.view(info["shape"])
    return out


@dataclass
class Proof:
    """A proof whose manifest and per-step arrays have been read and validated. Checkpoints are
    read (and their digests checked) on demand, one at a time."""

    path: Path
    manifest: fmt.Manifest
    indices: np.ndarray
    batch_hashes: np.ndarray
    lrs: np.ndarray
    losses: np.ndarray
    limits: fmt.Limits
    extra_files: list[str]
    # v2: the last decoded checkpoints (step -> (raw bytes, segments)), so that a streaming pass
    # decodes each checkpoint once and a random read decodes at most keyframe_interval - 1 others
    _decoded: dict[int, tuple[np.ndarray, tuple]] = field(default_factory=dict, repr=False)
    # exact-mode proofs: the rounding log, opened (`pol.proof.roundlog.Log`: a step range's rows
    # decoded and validated when asked for; `roundlog`: all of them); None for any other proof
    log: Any = field(default=None, repr=False)
    # load_checkpoint's tensors as views of the one buffer a checkpoint's file was read into (where
    # the proof stores it as is, format v1): one copy of it in memory while it is read, not two;
    # the buffer lives while any of them does (the verifier's setting, which keeps them all)
    views: bool = False

    @property
    def roundlog(self) -> np.ndarray | None:
        """Exact mode: every row of the rounding log, int64 [N, 4] (step, point, index, up),
        validated (a version 3 log decodes all its chunks now: the verifier asks `log.between`
        for a segment's); None for any other proof."""
        return None if self.log is None else self.log.all()

    @property
    def spec(self):
        return self.manifest.spec

    def load_checkpoint(self, t: int) -> dict[str, torch.Tensor]:
        """Checkpoint t's tensors (digest checked); with `views`, see there."""
        name = fmt.checkpoint_name(t)
        if name not in self.manifest.files:
            raise ProofFormatError(f"no checkpoint at step {t}")
        if self.views and self.manifest.version < fmt.CODEC_FORMAT_VERSION:
            sha, size = self.manifest.files[name]
            return parse_safetensors(_read_file(self.path, name, size, sha, writable=True), name,
                                     self.limits, share=True)
        return parse_safetensors(self.checkpoint_bytes(t), name, self.limits)

    def checkpoint_bytes(self, t: int) -> bytes:
        """The checkpoint's safetensors bytes (v2: decoded; digest checked either way)."""
        name = fmt.checkpoint_name(t)
        if name not in self.manifest.files:
            raise ProofFormatError(f"no checkpoint at step {t}")
        if self.manifest.version < fmt.CODEC_FORMAT_VERSION:
            sha, size = self.manifest.files[name]
            return _read_file(self.path, name, size, sha)
        return self._decode(t)[0].tobytes()

    def _decode(self, t: int) -> tuple[np.ndarray, tuple]:
        from pol.proof import codec
        hit = self._decoded.get(t)
        if hit is not None:
            return hit
        m = self.manifest
        steps = m.checkpoints
        i = -(-t // m.k)
        if steps[i] != t:
            raise ProofFormatError(f"no checkpoint at step {t}")
        interval = m.codec["keyframe_interval"]
        # nearest decodable start: a cached predecessor or the keyframe slot at or before i
        start = i - i % interval
        for j in range(i - 1, start - 1, -1):
            if steps[j] in self._decoded:
                start = j
                break
        base = self._decoded.get(steps[start]) if start < i and steps[start] in self._decoded \
            else None
        first = start + 1 if base is not None else start
        for j in range(first, i + 1):
            s = steps[j]
            name, sname = fmt.checkpoint_name(s), m.stored_name(s)
            sha, size = m.stored[sname]
            raw_sha, raw_size = m.files[name]
            frame = codec.parse_frame(_read_file(self.path, sname, size, sha), sname, raw_size)
            if j % interval == 0 and frame.kind != codec.KEYFRAME:
                raise ProofFormatError(f"{sname}: checkpoint {j} must be a keyframe "
                                       f"(keyframe interval {interval})")
            if frame.kind == codec.DELTA and base is None:
                raise ProofFormatError(f"{sname}: delta frame without a base checkpoint")
            raw = codec.decode(frame, sname, *(base if base is not None else (None, None)),
                               self.limits.max_checkpoint_bytes)
            if hashlib.sha256(raw).hexdigest() != raw_sha:
                raise IntegrityError(f"{name}: the decoded checkpoint {sname} does not match its "
                                     "SHA-256 in the manifest")
            base = (raw, frame.segments)
            self._decoded[s] = base
            while len(self._decoded) > 2:  # the newest two: enough for streaming and segments
                self._decoded.pop(next(iter(self._decoded)))
        return base

    def batch(self, t: int) -> np.ndarray:
        row = self.indices[t]
        return row[row >= 0]


def read_manifest(path: str | os.PathLike, limits: fmt.Limits | None = None) -> fmt.Manifest:
    limits = limits or fmt.Limits()
    root = Path(path)
    if not root.exists():
        raise ProofFormatError(f"no proof at {root}")
    if not root.is_dir():
        raise ProofFormatError(f"{root} is not a proof directory (a sealed proof file must be "
                               "opened first)")
    mpath = root / fmt.MANIFEST
    if not mpath.exists() and not mpath.is_symlink():
        if (root / fmt.PROGRESS).exists():
            raise IncompleteProofError(f"incomplete proof: {root} was not finished (crash or kill "
                                       f"during training); resume with `pol train --resume {root}`")
        raise ProofFormatError(f"{root} holds no manifest.json: not a pol proof")
    if mpath.is_symlink() or not mpath.is_file():
        raise ProofFormatError("manifest.json must be a regular file")
    size = mpath.stat().st_size
    if size > limits.max_manifest_bytes:
        raise ProofFormatError(f"manifest.json is {size} bytes, over the limit of "
                               f"{limits.max_manifest_bytes}")
    with open(mpath, "rb") as f:
        return fmt.parse_manifest(f.read(limits.max_manifest_bytes + 1), limits)


def open_proof(path: str | os.PathLike, limits: fmt.Limits | None = None) -> Proof:
    """Read and validate the manifest and the per-step arrays. Raises ProofFormatError (unusable),
    IncompleteProofError, or IntegrityError (a digest differs)."""
    limits = limits or fmt.Limits()
    root = Path(path)
    m = read_manifest(root, limits)
    T, B, spec = m.total_steps, m.spec.batch_size, m.spec
    if B > limits.max_batch:
        raise ProofFormatError(f"batch size {B} over the limit {limits.max_batch}")

    def arr(name: str, dtype: str, shape: tuple) -> np.ndarray:
        sha, size = m.files[name]
        return parse_npy(_read_file(root, name, size, sha), name, dtype, shape, limits)

    descr = {k: fmt.npy_descr(v) for k, v in fmt.ARRAY_DTYPES.items()}
    indices = arr(fmt.INDICES, descr["indices"], (T, B))
    hashes = arr(fmt.BATCH_HASHES, descr["batch_hashes"], (T, 32))
    lrs = arr(fmt.LRS, descr["lrs"], (T, m.num_groups))
    losses = arr(fmt.LOSSES, descr["losses"], (T,))
    n = spec.data.size
    if indices.size and (indices.min() < -1 or indices.max() >= n):
        raise ProofFormatError(f"indices.npy: an index is outside the dataset of {n} samples")
    valid = indices >= 0
    if T and not valid[:, 0].all():
        raise ProofFormatError("indices.npy: a step has an empty batch")
    # padding (-1) only at the end of a row
    if (valid[:, 1:] & ~valid[:, :-1]).any():
        raise ProofFormatError("indices.npy: padding in the middle of a batch")
    if not np.isfinite(lrs).all() or (lrs < 0).any() or (lrs > 1e3).any():
        raise ProofFormatError("lrs.npy: learning rates must be finite and in [0, 1000]")
    log = None
    if spec.step.exact:
        from pol.proof import roundlog as _roundlog
        sha, size = m.files[fmt.ROUNDLOG]
        log = _roundlog.Log(_read_file(root, fmt.ROUNDLOG, size, sha), fmt.ROUNDLOG, T,
                            limits.max_file_bytes)
    extra = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts and rel.parts[0].startswith(".pol-"):
            continue
        for fn in filenames:
            name = (rel / fn).as_posix() if rel.parts else fn
            if name not in m.stored_files and name != fmt.MANIFEST:
                extra.append(name)
    return Proof(path=root, manifest=m, indices=indices, batch_hashes=hashes, lrs=lrs,
                 losses=losses, limits=limits, extra_files=sorted(extra), log=log)


@dataclass(frozen=True)
class ProofInfo:
    """What a proof holds (`pol.inspect`), from its manifest and arrays; checkpoint files are not
    opened. `to_dict()` is the JSON of `pol inspect --json`."""

    path: str
    format_version: int
    root_digest: str
    created: str
    pol_version: str
    task: str
    spec: dict
    init: dict
    epochs: int
    steps_per_epoch: int
    total_steps: int
    k: int
    num_checkpoints: int
    checkpoint_bytes_mean: int
    total_bytes: int
    files: dict
    final_loss: float | None
    extra_files: list
    codec: dict | None = None  # v2 (compressed) proofs: the codec and the decoded sizes
    checkpoint_decoded_bytes_mean: int | None = None
    decoded: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.codec is None:
            for k in ("codec", "checkpoint_decoded_bytes_mean", "decoded"):
                del d[k]
        return d


def inspect(path: str | os.PathLike) -> ProofInfo:
    """What a proof holds, from its manifest and arrays (checkpoint files are not opened)."""
    p = open_proof(path)
    m = p.manifest
    ck_sizes = [m.stored_files[m.stored_name(t)][1] for t in m.checkpoints]
    codec = {}
    if m.codec:
        codec = {"codec": m.codec, "checkpoint_decoded_bytes_mean": int(sum(
            m.files[fmt.checkpoint_name(t)][1] for t in m.checkpoints) / len(m.checkpoints)),
            "decoded": {n: {"sha256": d, "size": s} for n, (d, s) in sorted(m.files.items())
                        if n.startswith(fmt.CKPT_DIR + "/")}}
    return ProofInfo(
        path=str(p.path), format_version=m.version, root_digest=m.root_digest,
        created=m.created, pol_version=m.raw.get("pol_version", ""), task=m.spec.task,
        spec=m.spec.to_dict(), init=m.init, epochs=m.epochs, steps_per_epoch=m.steps_per_epoch,
        total_steps=m.total_steps, k=m.k, num_checkpoints=len(m.checkpoints),
        checkpoint_bytes_mean=int(sum(ck_sizes) / len(ck_sizes)),
        total_bytes=sum(s for _, s in m.stored_files.values()),
        files={n: {"sha256": d, "size": s} for n, (d, s) in sorted(m.stored_files.items())},
        final_loss=float(p.losses[-1]) if len(p.losses) else None,
        extra_files=p.extra_files, **codec)


def inspect_proof(path: str | os.PathLike) -> dict[str, Any]:
    """`inspect(path).to_dict()`: what a proof holds, as the JSON of `pol inspect --json`."""
    return inspect(path).to_dict()
