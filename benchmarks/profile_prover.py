"""Where does the prover's per-step cost go? Ablations of pol's Recorder measured in one run, plus a
torch.profiler table and a cProfile of the training thread (issue 5: profile before optimizing).

Modes, each over the same loop as bench_overhead.py (pol's `update()` on the same batches):
  none        no proof
  pol         the Recorder as shipped (snapshot → pinned buffer → background writer)
  no-write    the Recorder, but the writer thread only waits for the copy and recycles the buffers
              (what is left is the training thread's own cost: records, snapshot, queue)
  no-snap     records only: step() never checkpoints (the per-step bookkeeping alone)
Also: time spent inside Recorder calls on the training thread, and whether the writer's queue
was ever full (back-pressure: the writer cannot keep up).

    python benchmarks/profile_prover.py --device cuda --k 1 --steps 300 --out prof/
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_overhead import run as overhead_run  # noqa: E402  (same folder)
from pol.proof import writer as wmod
from pol.prover.recorder import Recorder
from pol.registry import resolve_device
from pol.tasks import build_spec


def no_write(self, t, snap) -> None:
    """A ProofWriter._write that only waits for the snapshot's copy and recycles its buffers:
    what is left is the training thread's own cost."""
    if snap.ready is not None:
        snap.ready()
    if snap.release is not None:
        snap.release()


class Clock:
    """Time spent in Recorder calls and in put_checkpoint on the training thread, and how often
    the writer's queue was full at a put."""

    def __init__(self):
        self.rec = 0.0
        self.put = 0.0
        self.full = 0


def _timed(fn, clock: Clock, attr: str):
    def wrapper(self, *a, **kw):
        s = time.perf_counter()
        if attr == "put":
            clock.full += int(self._q.full())
        try:
            return fn(self, *a, **kw)
        finally:
            setattr(clock, attr, getattr(clock, attr) + time.perf_counter() - s)
    return wrapper


def run(mode, spec, train, device, steps, k, out, warmup, compress=False) -> float:
    """One timed run of bench_overhead's loop: none, pol (pol-z when compressing), no-write (pol
    with `no_write`) or no-snap (pol, never checkpointing before the last step)."""
    if mode == "none":
        return overhead_run("none", spec, train, device, steps, k, out, warmup)
    orig = wmod.ProofWriter._write
    if mode == "no-write":
        wmod.ProofWriter._write = no_write
    try:
        return overhead_run("pol-z" if compress else "pol", spec, train, device, steps,
                            10 ** 9 if mode == "no-snap" else k, out, warmup)
    finally:
        wmod.ProofWriter._write = orig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="synthetic-resnet20")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compress", action="store_true")
    ap.add_argument("--out", default="prof")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    spec, train, _ = build_spec(args.task, device=device.type)
    tmp = Path(tempfile.mkdtemp(prefix="pol-prof-"))
    orig = {"put": wmod.ProofWriter.put_checkpoint, "record_batch": Recorder.record_batch,
            "step": Recorder.step}
    clock = Clock()
    wmod.ProofWriter.put_checkpoint = _timed(orig["put"], clock, "put")
    Recorder.record_batch = _timed(orig["record_batch"], clock, "rec")
    Recorder.step = _timed(orig["step"], clock, "rec")

    modes = ["none", "pol", "no-write", "no-snap"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    inside: dict[str, list[float]] = {m: [] for m in modes}
    puts: dict[str, list[float]] = {m: [] for m in modes}
    fulls: dict[str, list[int]] = {m: [] for m in modes}
    writer_s: list[float] = []
    try:
        for rep in range(args.repeats):
            for mode in modes[rep % len(modes):] + modes[:rep % len(modes)]:
                clock.__init__()
                dt = run(mode, spec, train, device, args.steps, args.k, tmp / mode,
                         args.warmup, compress=args.compress)
                times[mode].append(dt)
                inside[mode].append(clock.rec)
                puts[mode].append(clock.put)
                fulls[mode].append(clock.full)
                shutil.rmtree(tmp / mode, ignore_errors=True)
        # the writer's own time per checkpoint (its thread), from one more pol run
        holder = {}
        orig_init = wmod.ProofWriter.__init__

        def grab(self, *a, **kw):
            orig_init(self, *a, **kw)
            holder["w"] = self
        wmod.ProofWriter.__init__ = grab
        run("pol", spec, train, device, args.steps, args.k, tmp / "w", args.warmup,
            compress=args.compress)
        wmod.ProofWriter.__init__ = orig_init
        w = holder["w"]
        n_ck = args.steps // args.k + 2
        writer_s.append(w.write_seconds / max(n_ck, 1))
        shutil.rmtree(tmp / "w", ignore_errors=True)
        # torch.profiler over the pol mode
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:  # warm-up steps included
            run("pol", spec, train, device, min(args.steps, 60), args.k, tmp / "p", args.warmup,
                compress=args.compress)
        shutil.rmtree(tmp / "p", ignore_errors=True)
        ka = prof.key_averages()
        (out / "torch_profile_cpu.txt").write_text(
            ka.table(sort_by="self_cpu_time_total", row_limit=35))
        if device.type == "cuda":
            (out / "torch_profile_cuda.txt").write_text(
                ka.table(sort_by="self_cuda_time_total", row_limit=25))
        # cProfile of the training thread
        pr = cProfile.Profile()
        pr.enable()
        run("pol", spec, train, device, args.steps, args.k, tmp / "c", args.warmup,
            compress=args.compress)
        pr.disable()
        shutil.rmtree(tmp / "c", ignore_errors=True)
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(35)
        (out / "cprofile_tottime.txt").write_text(s.getvalue())
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45)
        (out / "cprofile_cumulative.txt").write_text(s.getvalue())
    finally:
        wmod.ProofWriter.put_checkpoint = orig["put"]
        Recorder.record_batch, Recorder.step = orig["record_batch"], orig["step"]
        shutil.rmtree(tmp, ignore_errors=True)
    med = {m: statistics.median(v) for m, v in times.items()}
    step_ms = {m: 1e3 * v / args.steps for m, v in med.items()}
    n_all = args.steps + args.warmup
    res = {
        "task": args.task, "device": (torch.cuda.get_device_name() if device.type == "cuda"
                                      else f"CPU, {torch.get_num_threads()} threads"),
        "k": args.k, "steps": args.steps, "repeats": args.repeats, "compress": args.compress,
        "step_ms": step_ms,
        "ratio_over_none": {m: med[m] / med["none"] for m in modes},
        # Recorder and put_checkpoint times are summed over warm-up and timed steps alike
        "recorder_calls_ms_per_step": {m: 1e3 * statistics.median(inside[m]) / n_all
                                       for m in modes},
        "put_checkpoint_ms_per_step": {m: 1e3 * statistics.median(puts[m]) / n_all
                                       for m in modes},
        "queue_full_at_put": {m: statistics.median(fulls[m]) for m in modes},
        "writer_ms_per_checkpoint": 1e3 * writer_s[0],
        "all_s": times,
    }
    (out / "profile.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({x: y for x, y in res.items() if x != "all_s"}, indent=1))


if __name__ == "__main__":
    main()
