"""Host buffers: what the proof writer takes, and how a state dict of host tensors becomes them.

A checkpoint reaches the writer as a `HostCheckpoint`: its safetensors header and one flat host
buffer per storage dtype (the file is the header followed by the buffers' bytes), plus the per-step
records. The `Layout` of a state dict says how its tensors map onto those buffers and the header;
it is built once and reused while the state's tensors are the same objects, so a snapshot is one
`torch.cat` and one copy per group, whatever the model.

`HostSnapshotter` makes a `HostCheckpoint` from tensors on the CPU (synchronously: the caller may
change the tensors right after). Snapshotting device memory without stalling training (CUDA graphs,
side streams, pinned buffers) is the prover's: `pol.prover.snapshot.DeviceSnapshotter`, handed to
the writer by the prover. Tensors on another device given to the host snapshotter are copied to the
host synchronously (correct, and slower).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from pol.errors import ProofWriteError
from pol.proof import format as fmt
from pol.step.state import storage_dtype  # the optimizer table's storage rule (fp16 proofs)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32": the names of `pol.proof.format.DTYPES`."""
    return str(dtype).removeprefix("torch.")


@dataclass
class HostCheckpoint:
    """One checkpoint as the writer takes it. `chunks` are 1-d uint8 views of host buffers, written
    after the header in order; `itemsizes` their element sizes (the codec's byte shuffle);
    `records` the per-step rows as numpy arrays (indices int64 [n, B], lrs float64 [n, G], losses
    float32 [n]). The writer calls `ready()` before reading chunks or records (a device copy may
    still be in flight) and `release()` once it no longer needs them (the buffers are reused)."""

    header: fmt.CheckpointHeader
    chunks: list[np.ndarray]
    itemsizes: list[int]
    records: dict[str, np.ndarray] = field(default_factory=dict)
    ready: Callable[[], None] | None = None
    release: Callable[[], None] | None = None


@dataclass
class Layout:
    """How a state dict maps onto a few flat buffers (one per storage dtype and device) and onto the
    safetensors file written from them. `groups`: (storage dtype, device, flat views, numel)."""

    key: tuple
    groups: list[tuple[torch.dtype, torch.device, list[torch.Tensor], int]]
    header: fmt.CheckpointHeader

    @classmethod
    def build(cls, tensors: dict[str, torch.Tensor], precision: str, key: tuple) -> "Layout":
        by_group: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
        for name, v in tensors.items():
            st = storage_dtype(name, v, precision)
            if dtype_name(st) not in fmt.DTYPES:
                raise ProofWriteError(f"{name}: dtype {v.dtype} cannot be stored")
            by_group.setdefault((st, v.device), []).append((name, v))
        groups, entries = [], []
        for (st, dev), items in by_group.items():
            views = [v.detach().reshape(-1) for _, v in items]
            entries += [(name, dtype_name(st), tuple(v.shape)) for name, v in items]
            groups.append((st, dev, views, sum(x.numel() for x in views)))
        return cls(key=key, groups=groups, header=fmt.CheckpointHeader(entries))

    @staticmethod
    def key_of(tensors: dict[str, torch.Tensor]) -> tuple:
        return tuple((name, v.data_ptr(), v.dtype, v.shape) for name, v in tensors.items())

    def header_bytes(self, step: int) -> bytes:
        return self.header.bytes(step)


class HostPool:
    """Reusable host buffers, so steady-state checkpointing allocates nothing. `alloc` makes a new
    buffer (the prover's pool pins them)."""

    def __init__(self) -> None:
        self.free: dict[tuple, list[list[torch.Tensor]]] = {}
        self.lock = threading.Lock()

    def alloc(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(n, dtype=dtype)

    def get(self, layout: Layout) -> list[torch.Tensor]:
        return self.get_key(tuple((st, n) for st, _, _, n in layout.groups))

    def get_flat(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        return self.get_key(((dtype, n),))[0]

    def get_key(self, key: tuple) -> list[torch.Tensor]:
        with self.lock:
            lst = self.free.get(key)
            if lst:
                return lst.pop()
        return [self.alloc(n, st) for st, n in key]

    def put(self, bufs: list[torch.Tensor]) -> None:
        key = tuple((b.dtype, b.numel()) for b in bufs)
        with self.lock:
            self.free.setdefault(key, []).append(bufs)


def chunks_of(bufs: list[torch.Tensor]) -> tuple[list[np.ndarray], list[int]]:
    """uint8 numpy views of host buffers (sharing their memory) and their element sizes."""
    return [b.view(torch.uint8).numpy() for b in bufs], [b.element_size() for b in bufs]


def host_records(records: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """The per-step records as numpy arrays, copied now (losses may be a tensor on any device)."""
    recs = dict(records or {})
    losses = recs.get("losses")
    if isinstance(losses, torch.Tensor):
        recs["losses"] = losses.detach().reshape(-1).to("cpu", torch.float32).numpy().copy()
    return recs


class HostSnapshotter:
    """Makes `HostCheckpoint`s from state dicts of host tensors, into pooled buffers; the layout is
    cached while the state dict is the same object (a caller that caches its dict skips the ~50 µs
    key check)."""

    def __init__(self) -> None:
        self.pool = HostPool()
        self._layout: Layout | None = None
        self._layout_src: dict | None = None

    def layout(self, tensors: dict[str, torch.Tensor], precision: str) -> Layout:
        if self._layout is None or tensors is not self._layout_src:
            key = Layout.key_of(tensors)
            if self._layout is None or self._layout.key != key:
                self._layout = Layout.build(tensors, precision, key)
            self._layout_src = tensors
        return self._layout

    def take(self, tensors: dict[str, torch.Tensor], records: dict[str, Any] | None,
             precision: str) -> HostCheckpoint:
        """Copy `tensors` now (the caller may keep training right after)."""
        layout = self.layout(tensors, precision)
        bufs = self.pool.get(layout)
        with torch.no_grad():
            for buf, (st, dev, views, _) in zip(bufs, layout.groups):
                if dev.type == "cpu" and all(v.dtype == st for v in views):
                    torch.cat(views, out=buf)
                else:  # a conversion, or another device: through a temporary
                    buf.copy_(torch.cat(views).to(st))
        chunks, sizes = chunks_of(bufs)
        pool = self.pool
        return HostCheckpoint(layout.header, chunks, sizes, host_records(records),
                              release=lambda: pool.put(bufs))
