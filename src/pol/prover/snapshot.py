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


ALIGN = 64  # bytes: where each group starts in a snapshot's block (any dtype's view fits)


def block_offsets(nbytes: list[int]) -> tuple[list[int], int]:
    """Byte offsets of groups of these sizes laid end to end in one block, each at a multiple of
    ALIGN; and the block's size."""
    offsets, off = [], 0
    for nb in nbytes:
        offsets.append(off)
        off += -(-nb // ALIGN) * ALIGN
    return offsets, off


class PinnedPool(HostPool):
    """Host buffers in pinned (page-locked) memory: device→host copies into them are asynchronous.
    A layout's buffers are typed views into one pinned block, the CUDA groups' first and placed
    as `GraphGather` places its device block: one copy brings them all to the host."""

    def __init__(self) -> None:
        super().__init__()
        # id(bufs) -> (bufs, the block's CUDA part, pool key) for the sets `get` made
        self.sets: dict[int, tuple[list[torch.Tensor], torch.Tensor, tuple]] = {}

    def alloc(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(n, dtype=dtype, pin_memory=True)

    def get(self, layout: Layout) -> list[torch.Tensor]:
        key = tuple((st, n, dev.type == "cuda") for st, dev, _, n in layout.groups)
        with self.lock:
            free = self.free.get(key)
            if free:
                return free.pop()
        return self._alloc_set(key)

    def _alloc_set(self, key: tuple) -> list[torch.Tensor]:
        order = ([i for i, (_, _, cuda) in enumerate(key) if cuda]
                 + [i for i, (_, _, cuda) in enumerate(key) if not cuda])
        nbytes = [key[i][1] * key[i][0].itemsize for i in order]
        offsets, total = block_offsets(nbytes)
        block = self.alloc(total, torch.uint8)
        bufs: list[Any] = [None] * len(key)
        for i, off, nb in zip(order, offsets, nbytes):
            bufs[i] = block[off:off + nb].view(key[i][0])
        n_cuda = sum(1 for _, _, cuda in key if cuda)
        cuda_end = offsets[n_cuda] if n_cuda < len(key) else total
        self.sets[id(bufs)] = (bufs, block[:cuda_end], key)
        return bufs

    def cuda_block(self, bufs: list[torch.Tensor]) -> torch.Tensor | None:
        """The part of `bufs`' block that holds its CUDA groups (None: not a set of `get`)."""
        entry = self.sets.get(id(bufs))
        return entry[1] if entry is not None and entry[0] is bufs else None

    def put(self, bufs: list[torch.Tensor]) -> None:
        entry = self.sets.get(id(bufs))
        if entry is None or entry[0] is not bufs:
            return super().put(bufs)
        with self.lock:
            self.free.setdefault(entry[2], []).append(bufs)


class GraphGather:
    """The device-side gather of a layout's CUDA groups, captured once as a CUDA graph into static
    buffers: typed views into one device block, laid out as `PinnedPool` lays out the CUDA part
    of its host block (so one copy moves them). `ok` is False where it cannot be done (a dtype
    conversion, several devices, or a capture error): the eager path is used, and is exact too."""

    def __init__(self, layout: Layout) -> None:
        self.graph: Any = None
        self.block: Any = None
        self.statics: list[torch.Tensor] = []
        self.copied: Any = None  # event: the side stream's last copy out of the static buffers
        self.ok = self._capture(layout)

    def _capture(self, layout: Layout) -> bool:
        cuda = [(st, dev, views) for st, dev, views, _ in layout.groups if dev.type == "cuda"]
        if (not cuda or len({d for _, d, _ in cuda}) != 1
                or any(v.dtype != st for st, _, views in cuda for v in views)):
            return False
        try:
            nbytes = [sum(v.numel() for v in views) * st.itemsize for st, _, views in cuda]
            offsets, total = block_offsets(nbytes)
            block = torch.empty(total, dtype=torch.uint8, device=cuda[0][1])
            statics = [block[off:off + nb].view(st)
                       for (st, _, _), off, nb in zip(cuda, offsets, nbytes)]
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
        self.graph, self.block, self.statics = g, block, statics
        return True


class DeviceSnapshotter(HostSnapshotter):
    """Snapshots state on a CUDA device without stalling training (see the module docstring);
    state on the CPU goes the host path. Every call on the training thread costs host time (a
    CUDA call 5–20 µs), so a snapshot issues few: with the captured gather, a wait, the graph's
    replay, the loss's copy, one event on the training stream and a wait for it on the side
    stream, one copy of all CUDA groups, and the copy's event (kept with its buffers)."""

    def __init__(self, use_graphs: bool | None = None) -> None:
        super().__init__()
        self.use_graphs = (os.environ.get("POL_SNAPSHOT_GRAPHS", "1") != "0"
                           if use_graphs is None else use_graphs)
        self.pinned = PinnedPool()
        self._stream: Any = None
        self._gather: GraphGather | None = None
        self._gather_for: Layout | None = None
        self._plan_for: Layout | None = None
        self._plan: list[str] = []  # per group: "cuda", "cat" (host, same dtype) or "convert"
        self._gathered: Any = None  # event: the training stream's work the copies wait for
        self._sets: dict[int, tuple] = {}  # id(bufs) -> (bufs, copy event, chunks, itemsizes)
        # the device whose current stream the last snapshot's copies were ordered after (the
        # recorder's target check relies on it), None for a host snapshot
        self.waited_on: torch.device | None = None

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
            old = self._gather
            if old is not None and old.block is not None and self._stream is not None:
                old.block.record_stream(self._stream)  # its last copy may still be in flight
            self._gather, self._gather_for = GraphGather(layout), layout
        return self._gather if self._gather.ok else None

    def plan(self, layout: Layout) -> list[str]:
        """How each group of `layout` is gathered (worked out once per layout)."""
        if self._plan_for is not layout:
            self._plan = ["cuda" if dev.type == "cuda"
                          else "cat" if dev.type == "cpu" and all(v.dtype == st for v in views)
                          else "convert" for st, dev, views, _ in layout.groups]
            self._plan_for = layout
        return self._plan

    def take(self, tensors: dict[str, torch.Tensor], records: dict[str, Any] | None,
             precision: str) -> HostCheckpoint:
        self.waited_on = None
        layout = self.layout(tensors, precision)
        plan = self.plan(layout)
        if "cuda" not in plan:
            return self._take_host(layout, plan, records)
        pool = self.pinned
        bufs = pool.get(layout)
        cur = torch.cuda.current_stream()
        g = self.gather(layout) if self.use_graphs else None
        tmps = self._gather_into(layout, plan, bufs, g, cur)
        recs = {k: v for k, v in records.items() if k != "losses"} if records else {}
        host_losses = self._copy_losses((records or {}).get("losses"), recs)
        side = self.side_stream()
        if self._gathered is None or self._gathered.device != cur.device:
            self._gathered = torch.cuda.Event()
        self._gathered.record(cur)  # after the gather and the loss's copy
        side.wait_event(self._gathered)
        self.waited_on = cur.device
        event, chunks, sizes = self._set_of(bufs)
        torch.cuda.set_stream(side)
        try:
            block = pool.cuda_block(bufs) if g is not None else None
            if block is not None and block.numel() == g.block.numel():
                block.copy_(g.block, non_blocking=True)  # every CUDA group at once
            else:
                dsts = [b for b, kind in zip(bufs, plan) if kind == "cuda"]
                for dst, src in zip(dsts, tmps):
                    dst.copy_(src, non_blocking=True)
                    if g is None:
                        src.record_stream(side)  # keep the temporary alive until copied
            event.record(side)
        finally:
            torch.cuda.set_stream(cur)
        if g is not None:
            g.copied = event

        def release() -> None:
            pool.put(bufs)
            if host_losses is not None:
                pool.put([host_losses])
        return HostCheckpoint(layout.header, chunks, sizes, recs, ready=event.synchronize,
                              release=release)

    def _gather_into(self, layout: Layout, plan: list[str], bufs: list[torch.Tensor],
                     g: GraphGather | None, cur: Any) -> list[torch.Tensor]:
        """Gather the state on the training stream: the CUDA groups into the graph's statics (a
        replay) or into temporaries (returned); host groups straight into their buffers."""
        if g is not None:
            if g.copied is not None:  # the previous copy out of the statics is done
                cur.wait_event(g.copied)
            g.graph.replay()
            if all(kind == "cuda" for kind in plan):
                return g.statics
        tmps: list[torch.Tensor] = []
        for buf, kind, (st, _, views, _) in zip(bufs, plan, layout.groups):  # detached views
            if kind == "cuda":
                if g is None:
                    tmps.append(torch.cat(views).to(st))
            elif kind == "cat":
                torch.cat(views, out=buf)
            else:
                buf.copy_(torch.cat(views).to(st))
        return g.statics if g is not None else tmps

    def _take_host(self, layout: Layout, plan: list[str],
                   records: dict[str, Any] | None) -> HostCheckpoint:
        """`HostSnapshotter.take` for state with no CUDA group, minus its per-call Python: the
        plan and the uint8 views of each pooled buffer set are made once."""
        pool = self.pool
        bufs = pool.get(layout)
        for buf, kind, (st, _, views, _) in zip(bufs, plan, layout.groups):  # detached views
            if kind == "cat":
                torch.cat(views, out=buf)
            else:  # a conversion, or another device: through a temporary
                buf.copy_(torch.cat(views).to(st))
        _, chunks, sizes = self._set_of(bufs, event=False)
        return HostCheckpoint(layout.header, chunks, sizes, host_records(records),
                              release=lambda: pool.put(bufs))

    def _copy_losses(self, losses: Any, recs: dict[str, Any]) -> torch.Tensor | None:
        """The window's losses into a pooled pinned buffer (a pinned allocation would synchronize
        the device); a device tensor's copy is issued on the training stream, behind the steps
        that made it (the side stream's wait then covers it, and nothing must keep it alive).
        Returns the buffer to release, None where the losses are not a tensor."""
        if not isinstance(losses, torch.Tensor):
            if losses is not None:
                recs["losses"] = losses
            return None
        host = self.pinned.get_flat(losses.numel(), torch.float32)
        src = losses.detach() if losses.requires_grad else losses  # each a no-op skipped
        if src.dtype != torch.float32:
            src = src.float()
        if src.dim() > 1:
            src = src.reshape(-1)
        host.copy_(src, non_blocking=src.is_cuda)  # a 0-d loss (k = 1) fills the one element
        recs["losses"] = host.numpy()  # a view: read by the writer after ready()
        return host

    def _set_of(self, bufs: list[torch.Tensor], event: bool = True) -> tuple[Any, list, list[int]]:
        """The copy event and the uint8 views of a pooled buffer set, made once per set (a set
        is reused only after the writer released it, so its event is free again by then)."""
        entry = self._sets.get(id(bufs))
        if entry is None or entry[0] is not bufs:
            chunks, sizes = chunks_of(bufs)
            entry = (bufs, torch.cuda.Event() if event else None, chunks, sizes)
            self._sets[id(bufs)] = entry
        return entry[1], entry[2], entry[3]
