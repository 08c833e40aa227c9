"""Device→host snapshots of the training state, for the proof writer.

The training thread only copies state into reusable host buffers and hands them to the writer
(`pol.proof.writer.ProofWriter`, which serializes, hashes and writes in its own thread). On a GPU:

- one device-side gather of the state (`torch.cat` per storage dtype, on the training stream, so
  it sees the weights of step t), captured once as a CUDA graph into static buffers where possible
  (a replay costs ~5 µs of host time where torch.cat over ~175 tensors costs ~86 µs, measured on an
  H100; `POL_SNAPSHOT_GRAPHS=0` turns it off);
- then the device→host copy into pinned buffers on a side stream, so that the training stream (and
  the next batch's host→device copy) never waits for it; the writer waits for the copy's event;
- pinned buffers come from a pool: steady-state checkpointing allocates nothing (pinned
  allocations are slow and synchronize the device).

Use: `ProofWriter(out, ..., snapshotter=DeviceSnapshotter())`; `put_checkpoint(t, tensors,
records)` then snapshots through it. State on the CPU goes the host path of
`pol.proof.host.HostSnapshotter`, unchanged.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from pol.proof.host import (HostCheckpoint, HostPool, HostSnapshotter, Layout, chunks_of,
                            host_records)

log = logging.getLogger(__name__)

__all__ = ["DeviceSnapshotter", "PinnedPool", "GraphGather"]


class PinnedPool(HostPool):
    """Host buffers in pinned (page-locked) memory: device→host copies into them are asynchronous."""

    def alloc(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(n, dtype=dtype, pin_memory=True)


class GraphGather:
    """The device-side gather of a layout's CUDA groups, captured once as a CUDA graph into static
    buffers. `ok` is False where it cannot be done (a dtype conversion, several devices, or a
    capture error): the eager path is used, and is exact too."""

    def __init__(self, layout: Layout) -> None:
        self.graph: Any = None
        self.statics: list[torch.Tensor] = []
        self.copied: Any = None  # event: the side stream's last copy out of the static buffers
        self.ok = self._capture(layout)

    def _capture(self, layout: Layout) -> bool:
        cuda = [(st, dev, views) for st, dev, views, _ in layout.groups if dev.type == "cuda"]
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


class DeviceSnapshotter(HostSnapshotter):
    """Snapshots state on a CUDA device without stalling training (see the module docstring);
    state on the CPU goes the host path."""

    def __init__(self, use_graphs: bool | None = None) -> None:
        super().__init__()
        self.use_graphs = (os.environ.get("POL_SNAPSHOT_GRAPHS", "1") != "0"
                           if use_graphs is None else use_graphs)
        self.pinned = PinnedPool()
        self._stream: Any = None
        self._gather: GraphGather | None = None
        self._gather_for: Layout | None = None

    def prewarm(self, numel: int) -> None:
        """Pin `numel` float32 elements of host memory once now, and free them: the first snapshot
        that includes the optimizer's state needs a pinned buffer as large as weights + moments
        (1 GB for a 100M-parameter AdamW model), and pinning that much memory stalls training;
        torch's caching host allocator hands the same block to the snapshot later. Does nothing
        without CUDA or when out of pinned memory (the snapshot then pins lazily)."""
        if numel <= 0 or not torch.cuda.is_available():
            return
        try:
            torch.empty(numel, dtype=torch.float32, pin_memory=True)
        except RuntimeError:
            pass

    def side_stream(self) -> "torch.cuda.Stream":
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def gather(self, layout: Layout) -> GraphGather | None:
        """The captured gather of this layout (captured on first use), or None."""
        if self._gather_for is not layout:
            self._gather, self._gather_for = GraphGather(layout), layout
        return self._gather if self._gather.ok else None

    def take(self, tensors: dict[str, torch.Tensor], records: dict[str, Any] | None,
             precision: str) -> HostCheckpoint:
        layout = self.layout(tensors, precision)
        losses = (records or {}).get("losses")
        if not any(dev.type == "cuda" for _, dev, _, _ in layout.groups):
            return super().take(tensors, records, precision)
        pool = self.pinned
        bufs = pool.get(layout)
        side = self.side_stream()
        gpu_tmps: list[torch.Tensor] = []
        g = self.gather(layout) if self.use_graphs else None
        with torch.no_grad():
            if g is not None:
                if g.copied is not None:  # the previous copy out of the statics is done
                    torch.cuda.current_stream().wait_event(g.copied)
                g.graph.replay()
            for buf, (st, dev, views, _) in zip(bufs, layout.groups):
                if dev.type == "cpu" and all(v.dtype == st for v in views):
                    torch.cat(views, out=buf)
                elif dev.type == "cuda":
                    if g is None:
                        gpu_tmps.append(torch.cat(views).to(st))
                else:
                    buf.copy_(torch.cat(views).to(st))
            if g is not None:
                gpu_tmps = list(g.statics) + gpu_tmps
        recs = host_records({k: v for k, v in (records or {}).items() if k != "losses"})
        host_losses = None
        if isinstance(losses, torch.Tensor):
            # into a pooled pinned buffer: no pinned allocation (which synchronizes the device)
            host_losses = pool.get_flat(losses.numel(), torch.float32)
            if losses.device.type == "cuda":
                gpu_tmps.append(losses.detach().reshape(-1).float())
            else:
                host_losses.copy_(losses.detach().reshape(-1))
        elif losses is not None:
            recs["losses"] = losses
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            dsts = [b for b, grp in zip(bufs, layout.groups) if grp[1].type == "cuda"]
            if host_losses is not None and losses.device.type == "cuda":
                dsts.append(host_losses)
            for dst, src in zip(dsts, gpu_tmps):
                dst.copy_(src, non_blocking=True)
                src.record_stream(side)  # keep the temporary alive until copied
            event = torch.cuda.Event()
            event.record(side)
        if g is not None:
            g.copied = event
        if host_losses is not None:
            recs["losses"] = host_losses.numpy()  # a view: read by the writer after ready()
        chunks, sizes = chunks_of(bufs)

        def release() -> None:
            pool.put(bufs)
            if host_losses is not None:
                pool.put([host_losses])
        return HostCheckpoint(layout.header, chunks, sizes, recs, ready=event.synchronize,
                              release=release)
