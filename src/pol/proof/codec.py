"""Lossless checkpoint codec of proof format v2: XOR with the previous checkpoint, byte shuffle, zstd.

A checkpoint's raw bytes (the v1 safetensors file: header, then one flat run of elements per storage
dtype) are

1. XORed with the previous checkpoint's raw bytes when both have the same layout (a *delta* frame);
   every `keyframe_interval`-th checkpoint (and the first, and any whose layout changed) is a
   *keyframe*, coded on its own, so that reading one checkpoint decodes at most N − 1 predecessors;
2. byte-shuffled per segment: for a run of 4-byte elements, all byte 0s, then all byte 1s, ... (the
   sign/exponent bytes of slowly changing weights XOR to long runs of zeros);
3. compressed as one zstd frame (content size and checksum in the frame header).

Stored file (``checkpoints/step_<t:09d>.polz``)::

    b"POLZ" | u8 codec version (1) | u8 kind (0 keyframe, 1 delta) | u16 LE number of segments n
    u64 LE raw size
    n × (u64 LE segment length, u8 element size in {1, 2, 4, 8})   segments cover the raw bytes
    one zstd frame (content size = raw size)

Decoding is bitwise exact: the manifest binds both the stored file (SHA-256 of its bytes) and the
decoded bytes (SHA-256 and size), so exact-mode verification compares the same digests as for v1.
Every field is checked before anything is allocated; the frame's declared content size must equal
the raw size the manifest gives (itself under the reader's limits, `max_checkpoint_bytes`), so a
decompression bomb is refused before decompressing, and decompression never writes more.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from pol.errors import LimitExceeded, ProofFormatError

CODEC_NAME = "xor-shuffle-zstd"
CODEC_VERSION = 1
MAGIC = b"POLZ"
KEYFRAME, DELTA = 0, 1
DEFAULT_KEYFRAME_INTERVAL = 16
MAX_KEYFRAME_INTERVAL = 1024
# zstd level 1: ~1.4× the speed of level 3 for the same size on shuffled XOR deltas (the mantissa
# bytes are noise at any level); the writer must keep up with a GPU step at k = 1
DEFAULT_LEVEL = 1
MAX_SEGMENTS = 4096
_HEAD = struct.Struct("<4sBBHQ")  # 16 bytes
_SEG = struct.Struct("<QB")  # 9 bytes
ITEMSIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Frame:
    kind: int
    raw_size: int
    segments: tuple[tuple[int, int], ...]  # (length, element size), covering the raw bytes
    payload: memoryview  # the zstd frame


def _zstd():
    try:
        import zstandard
    except ImportError as e:  # pragma: no cover - a dependency of pol
        raise ProofFormatError("this proof is compressed (format v2): install zstandard") from e
    return zstandard


def _byte_planes(data: np.ndarray, segments, out: np.ndarray | None, inverse: bool) -> np.ndarray:
    """Per segment of n-byte elements, view the bytes as [elements, n] and transpose them to
    [n, elements] (the byte planes) or, `inverse`, back."""
    out = np.empty_like(data) if out is None else out
    off = 0
    for length, size in segments:
        src, dst = data[off:off + length], out[off:off + length]
        if size == 1:
            dst[:] = src
        elif inverse:
            dst.reshape(-1, size)[...] = src.reshape(size, length // size).T
        else:
            dst.reshape(size, length // size)[...] = src.reshape(-1, size).T
        off += length
    return out


def shuffle(data: np.ndarray, segments, out: np.ndarray | None = None) -> np.ndarray:
    """Byte planes per segment: element i's byte j goes to j * n + i."""
    return _byte_planes(data, segments, out, inverse=False)


def unshuffle(data: np.ndarray, segments, out: np.ndarray | None = None) -> np.ndarray:
    return _byte_planes(data, segments, out, inverse=True)


class Encoder:
    """Stateful encoder of one proof's checkpoint sequence (used by the writer's thread). It keeps
    the previous checkpoint's raw bytes, the XOR base of the next delta frame."""

    def __init__(self, keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
                 level: int = DEFAULT_LEVEL) -> None:
        if not 1 <= keyframe_interval <= MAX_KEYFRAME_INTERVAL:
            raise ValueError(f"keyframe interval must be in [1, {MAX_KEYFRAME_INTERVAL}]")
        self.keyframe_interval = keyframe_interval
        self.level = level
        self._cctx = _zstd().ZstdCompressor(level=level, write_checksum=True,
                                            write_content_size=True)
        self.prev: np.ndarray | None = None
        self.prev_segments: tuple | None = None
        self._work: np.ndarray | None = None
        self._shuf: np.ndarray | None = None

    def set_base(self, raw: np.ndarray | None, segments) -> None:
        """The XOR base after a resume: the last checkpoint on disk, decoded."""
        self.prev = None if raw is None else np.array(raw, dtype=np.uint8, copy=True)
        self.prev_segments = None if segments is None else tuple(map(tuple, segments))

    def encode(self, raw: np.ndarray, segments, index: int) -> tuple[bytes, int]:
        """Encode checkpoint number `index` (0-based in the proof's checkpoint list) from its raw
        bytes (uint8, 1-D; the encoder keeps this array, not a copy, as the next base: do not
        modify it afterwards). Returns (file bytes, kind)."""
        segments = tuple((int(n), int(s)) for n, s in segments)
        check_segments(segments, raw.size)
        delta = (self.prev is not None and index % self.keyframe_interval != 0
                 and self.prev_segments == segments and self.prev.size == raw.size)
        if self._work is None or self._work.size != raw.size:
            self._work = np.empty(raw.size, dtype=np.uint8)
            self._shuf = np.empty(raw.size, dtype=np.uint8)
        if delta:
            np.bitwise_xor(raw, self.prev, out=self._work)
            src = self._work
        else:
            src = raw
        shuffle(src, segments, self._shuf)
        payload = self._cctx.compress(self._shuf)
        kind = DELTA if delta else KEYFRAME
        head = _HEAD.pack(MAGIC, CODEC_VERSION, kind, len(segments), raw.size)
        head += b"".join(_SEG.pack(n, s) for n, s in segments)
        self.prev = raw
        self.prev_segments = segments
        return head + payload, kind


def check_segments(segments, raw_size: int) -> None:
    total = 0
    for n, s in segments:
        if s not in ITEMSIZES or n < 0 or n % s:
            raise ProofFormatError(f"checkpoint codec: bad segment ({n} bytes of {s}-byte "
                                   "elements)")
        total += n
    if total != raw_size:
        raise ProofFormatError("checkpoint codec: segments do not cover the checkpoint")


def parse_frame(data: bytes, name: str, raw_size: int) -> Frame:
    """Parse and check a stored checkpoint's header; `raw_size` is the decoded size the manifest
    gives (already under the reader's limits)."""
    mv = memoryview(data)
    if len(data) < _HEAD.size:
        raise ProofFormatError(f"{name}: truncated compressed checkpoint")
    magic, ver, kind, nseg, size = _HEAD.unpack_from(mv, 0)
    if magic != MAGIC or ver != CODEC_VERSION:
        raise ProofFormatError(f"{name}: not a pol compressed checkpoint (codec version {ver})")
    if kind not in (KEYFRAME, DELTA):
        raise ProofFormatError(f"{name}: unknown frame kind {kind}")
    if size != raw_size:
        raise ProofFormatError(f"{name}: frame declares {size} decoded bytes, the manifest "
                               f"{raw_size}")
    if nseg > MAX_SEGMENTS or len(data) < _HEAD.size + nseg * _SEG.size:
        raise ProofFormatError(f"{name}: bad segment table")
    segs = tuple(_SEG.unpack_from(mv, _HEAD.size + i * _SEG.size) for i in range(nseg))
    try:
        check_segments(segs, size)
    except ProofFormatError as e:
        raise ProofFormatError(f"{name}: {e}") from None
    payload = mv[_HEAD.size + nseg * _SEG.size:]
    zstd = _zstd()
    try:
        declared = zstd.frame_content_size(payload)
    except zstd.ZstdError as e:
        raise ProofFormatError(f"{name}: bad zstd frame ({e})") from None
    if declared != size:  # -1: unknown content size; anything else: a bomb or a lie
        raise ProofFormatError(f"{name}: zstd frame declares {declared} bytes, expected {size}")
    return Frame(kind=kind, raw_size=size, segments=segs, payload=payload)


def decode(frame: Frame, name: str, base: np.ndarray | None,
           base_segments: tuple | None, max_size: int | None = None) -> np.ndarray:
    """Decode a parsed frame to raw bytes (a fresh uint8 array). `base`: the previous checkpoint's
    raw bytes, required for a delta frame. `max_size`: refuse, before decompressing anything, a
    frame that decodes to more bytes (the reader passes `Limits.max_checkpoint_bytes`). zstd never
    writes past the frame's declared content size (equal to `frame.raw_size`, see `parse_frame`):
    a frame whose data would decode to more fails as corrupt."""
    if max_size is not None and frame.raw_size > max_size:
        raise LimitExceeded(f"{name} decodes to {frame.raw_size:,} bytes",
                            "max_checkpoint_bytes", max_size)
    zstd = _zstd()
    if frame.kind == DELTA and (base is None or base.size != frame.raw_size
                                or base_segments != frame.segments):
        raise ProofFormatError(f"{name}: delta frame whose base checkpoint has another layout")
    try:
        out = zstd.ZstdDecompressor().decompress(frame.payload, max_output_size=frame.raw_size,
                                                 allow_extra_data=False)
    except zstd.ZstdError as e:
        raise ProofFormatError(f"{name}: corrupt zstd frame ({e})") from None
    if len(out) != frame.raw_size:
        raise ProofFormatError(f"{name}: decoded {len(out)} bytes, expected {frame.raw_size}")
    raw = unshuffle(np.frombuffer(out, dtype=np.uint8), frame.segments,
                    np.empty(frame.raw_size, dtype=np.uint8))
    if frame.kind == DELTA:
        np.bitwise_xor(raw, base, out=raw)
    return raw
