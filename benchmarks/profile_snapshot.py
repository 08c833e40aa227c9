"""What does one GPU snapshot cost the training thread? Each piece of a device snapshot
(`pol.prover.snapshot.DeviceSnapshotter.take`, which `ProofWriter.put_checkpoint` calls) timed in
isolation on the host (CPU µs per call, averaged over many calls, the device kept busy enough not
to block), for the state of a ResNet-20 after a few SGD steps.

    python benchmarks/profile_snapshot.py --task synthetic-resnet20 --reps 500
"""

from __future__ import annotations

import argparse
import json
import queue
import time

import numpy as np
import torch

from pol.proof import writer as wmod
from pol.proof.host import Layout
from pol.prover.snapshot import DeviceSnapshotter
from profile_prover import no_write  # noqa: E402  (same folder)
from pol.step import build_context
from pol.step import state_tensors, update
from pol.tasks import build_spec


def per_call_us(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    return 1e6 * dt / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="synthetic-resnet20")
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    spec, train, _ = build_spec(args.task, device="cuda")
    ctx = build_context(spec, dev)
    B = spec.batch_size
    for t in range(3):
        idx = np.arange(t * B, (t + 1) * B) % len(train)
        update(ctx, torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx]), [0.1], t)
    tensors = state_tensors(ctx.model, ctx.optimizer)
    layout = Layout.build(tensors, "fp32", ())
    groups = [(st, d, views, n) for st, d, views, n in layout.groups]
    side = torch.cuda.Stream()
    cur = torch.cuda.current_stream()
    pinned = [torch.empty(n, dtype=st, pin_memory=True) for st, _, _, n in groups]
    tmps = [torch.cat(v) for _, _, v, _ in groups]
    statics = [torch.empty(n, dtype=st, device=dev) for st, _, _, n in groups]
    q: queue.Queue = queue.Queue()
    res = {"tensors": len(tensors), "groups": [(str(st), len(v), n) for st, _, v, n in groups]}
    R = args.reps
    res["cat (all groups)"] = per_call_us(lambda: [torch.cat(v) for _, _, v, _ in groups], R)
    res["cat out= static buffer"] = per_call_us(
        lambda: [torch.cat(v, out=s) for (_, _, v, _), s in zip(groups, statics)], R)
    res["_foreach_copy_ into static views"] = None
    try:
        dst_views = []
        for (_, _, v, _), s in zip(groups, statics):
            off, vs = 0, []
            for x in v:
                vs.append(s[off:off + x.numel()])
                off += x.numel()
            dst_views.append(vs)
        res["_foreach_copy_ into static views"] = per_call_us(
            lambda: [torch._foreach_copy_(dv, v) for dv, (_, _, v, _) in zip(dst_views, groups)],
            R)
    except Exception as e:  # noqa: BLE001
        res["_foreach_copy_ into static views"] = f"failed: {e}"
    # the same copy captured once in a CUDA graph, replayed per snapshot
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(cur)
        with torch.cuda.stream(s):
            for _ in range(2):
                for (_, _, v, _), st in zip(groups, statics):
                    torch.cat(v, out=st)
        cur.wait_stream(s)
        with torch.cuda.graph(g):
            for (_, _, v, _), st in zip(groups, statics):
                torch.cat(v, out=st)
        res["cuda graph replay of the cat"] = per_call_us(g.replay, R)
    except Exception as e:  # noqa: BLE001
        res["cuda graph replay of the cat"] = f"failed: {e}"
    res["Event()"] = per_call_us(lambda: torch.cuda.Event(), R)
    ev = torch.cuda.Event()
    res["event.record(side)"] = per_call_us(lambda: ev.record(side), R)
    res["side.wait_stream(current)"] = per_call_us(lambda: side.wait_stream(cur), R)

    def ctxswitch():
        with torch.cuda.stream(side):
            pass
    res["with torch.cuda.stream(side)"] = per_call_us(ctxswitch, R)
    res["copy_ D2H non_blocking (all groups)"] = per_call_us(
        lambda: [p.copy_(t, non_blocking=True) for p, t in zip(pinned, tmps)], R)
    res["record_stream (all groups)"] = per_call_us(lambda: [t.record_stream(side) for t in tmps],
                                                    R)
    res["queue put+get"] = per_call_us(lambda: (q.put(1), q.get()), R)
    loss = torch.zeros((), device=dev)
    res["loss reshape(1)"] = per_call_us(lambda: loss.reshape(1), R)
    res["loss detach().reshape(-1).float()"] = per_call_us(
        lambda: loss.detach().reshape(-1).float(), R)

    class NoWrite(wmod.ProofWriter):
        _write = no_write

    import tempfile
    w = NoWrite(tempfile.mkdtemp(prefix="pol-snap-"), precision="fp32", overwrite=True,
                durable=False, snapshotter=DeviceSnapshotter())
    t_box = [0]

    def put():
        t_box[0] += 1
        w.put_checkpoint(t_box[0], tensors, {"indices": np.zeros((1, B), np.int64),
                                             "lrs": np.zeros((1, 1)), "losses": loss.reshape(1)})
        time.sleep(0)  # let the writer thread drain
    res["put_checkpoint (whole, writer does nothing)"] = per_call_us(put, min(R, 300))
    w.abort()
    out = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in res.items()}
    print(json.dumps(out, indent=1))
    if args.json:
        open(args.json, "w").write(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
