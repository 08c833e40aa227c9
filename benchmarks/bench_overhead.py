"""Prover overhead: training with a proof ÷ training without, measured in one run, same seeds.

Three modes over the same loop (pol's `update()` on the same batches):
  none       no proof at all
  pol        pol's Recorder (flat snapshot → pinned buffer → background writer), every k steps
  reference  the reference implementation's pattern: a hash over str() of the whole dataset at the
             start, then a synchronous torch.save of model + optimizer state every k steps
Runs are interleaved (none, pol, reference, none, ...) and the median of `--repeats` is reported.

    python benchmarks/bench_overhead.py --task synthetic-resnet20 --device cuda --steps 200 --ks 1,10
    python benchmarks/bench_overhead.py --task digits-cnn --steps 300 --ks 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pol.prover.recorder import Recorder
from pol.step import epoch_order
from pol.registry import resolve_device
from pol.step import update

try:
    from pol.step import build_context
except ImportError:  # code from before the step package (before/after comparisons)
    from pol.registry import build_context
from pol.tasks import build_spec


LAST: dict[str, float] = {}  # the last run's loop time and writer drain time (seconds)


def run(mode: str, spec, train, device, steps: int, k: int, out: Path, warmup: int) -> float:
    ctx = build_context(spec, device)
    B = spec.batch_size
    n = len(train)
    spec_k = spec.with_(k=k, epochs=max(1, -(-(steps + warmup) * B // n)))
    rec = None
    if mode in ("pol", "pol-z"):  # ("none2" is an A/A control: no proof, the noise floor)
        rec = Recorder(out, model=ctx.model, optimizer=ctx.optimizer, data=train, spec=spec_k,
                       overwrite=True, durable=False, compress=mode == "pol-z")
    elif mode == "reference":
        out.mkdir(parents=True, exist_ok=True)
        hashlib.sha256(str(train.x).encode()).hexdigest()  # the reference's dataset "hash"
    S = -(-n // B)  # the seed's batches, epoch by epoch (the last one of an epoch short)
    batches = [o[s * B:(s + 1) * B] for o in (epoch_order(spec.seed, e, n)
                                              for e in range(spec_k.epochs)) for s in range(S)]
    lrs = [spec.optimizer.lr]
    t0 = 0.0
    for t in range(steps + warmup):
        if t == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = batches[t]
        x, y = torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx])
        if rec is not None:
            rec.record_batch(idx, seed_rng=False)  # update() seeds this step itself
        loss = update(ctx, x, y, lrs, t)
        if rec is not None:
            rec.step(loss)
        elif mode == "reference" and (t + 1) % k == 0:
            torch.save({"net": ctx.model.state_dict(), "opt": ctx.optimizer.state_dict()},
                       out / f"model_step_{t + 1}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    LAST["loop"] = time.perf_counter() - t0  # the training loop, before the writer drains
    if rec is not None:  # drain the writer (abort waits for queued checkpoints): its work counts
        rec.abort()
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    LAST["drain"] = total - LAST["loop"]
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="digits-cnn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--ks", default="1,10")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--compress", action="store_true",
                    help="also measure pol-z: the lossless checkpoint codec (format v2)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    spec, train, _ = build_spec(args.task, device=device.type, batch_size=args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="pol-overhead-"))
    results = {}
    try:
        for k in [int(x) for x in args.ks.split(",")]:
            times: dict[str, list[float]] = {"none": [], "pol": [], "reference": [],
                                             "none2": []}
            if args.compress:
                times["pol-z"] = []
            modes = list(times)
            loops: dict[str, list[float]] = {m: [] for m in modes}
            for rep in range(args.repeats):
                for mode in modes[rep % len(modes):] + modes[:rep % len(modes)]:  # rotate order
                    times[mode].append(run(mode, spec, train, device, args.steps, k,
                                           tmp / mode, args.warmup))
                    loops[mode].append(LAST["loop"])
                    shutil.rmtree(tmp / mode, ignore_errors=True)
            med = {m: statistics.median(v) for m, v in times.items()}
            lmed = {m: statistics.median(v) for m, v in loops.items()}
            results[k] = {"median_s": med, "pol_over_none": med["pol"] / med["none"],
                          # the loop alone, without the final drain of the writer
                          "pol_over_none_loop": lmed["pol"] / lmed["none"],
                          "none2_over_none": med["none2"] / med["none"],
                          "reference_over_none": med["reference"] / med["none"],
                          **({"polz_over_none": med["pol-z"] / med["none"]}
                             if "pol-z" in med else {}),
                          "step_ms_none": 1e3 * med["none"] / args.steps, "all": times}
            print(json.dumps({"k": k, **{x: y for x, y in results[k].items() if x != "all"}}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.task}, batch {spec.batch_size}, {args.steps} steps, {dev}, torch {torch.__version__}")
    print("| k | step ms (no proof) | pol / none | pol-z / none | reference / none "
          "| A/A control none2 / none |")
    print("|---|---|---|---|---|---|")
    for k, r in results.items():
        z = f"{r['polz_over_none']:.4f}" if "polz_over_none" in r else "—"
        print(f"| {k} | {r['step_ms_none']:.2f} | {r['pol_over_none']:.4f} | {z} | "
              f"{r['reference_over_none']:.4f} | {r['none2_over_none']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "results": results}, indent=1))


if __name__ == "__main__":
    main()
