"""Verifier cost: parallel replay speedup, wall time against its lower bound, peak memory.

(a) `verify --all` with N = 1, 2, 4, 8 worker processes (up to the machine's cores): wall time,
    speedup over N = 1, and whether the report's segments are identical to N = 1's.
(b) the N = 1 verification's wall time ÷ (one read of the whole proof + the replayed steps at the
    training throughput of the same `update()` loop): how close verification is to its floor.
(c) peak RSS (VmHWM) of the verifier and of the prover, each in a fresh subprocess, for a proof of
    T steps and one of 4T steps of the same model (k = 1, so the longer proof has 4× the
    checkpoints): memory must not grow with the proof's length.

Every process runs torch with --threads intra-op threads (default 1), so the prover's and the
verifier's kernels split their reductions the same way (exact replay) and N workers use N cores.

    python benchmarks/bench_verify.py                      # synthetic-resnet20, small
    python benchmarks/bench_verify.py --task digits-cnn --epochs 5 --k 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _peak_rss_mib(code: str, threads: int) -> float:
    """Run `code` in a fresh interpreter; its peak resident set size (VmHWM) in MiB."""
    prog = (f"import torch\ntorch.set_num_threads({threads})\n{code}\n"
            "import re\nprint('VMHWM', re.search(r'VmHWM:\\s+(\\d+)', "
            "open('/proc/self/status').read()).group(1))\n")
    out = subprocess.run([sys.executable, "-c", prog], check=True, capture_output=True,
                         text=True).stdout
    kib = int(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("VMHWM")))
    return kib / 1024


def _train_kwargs(args, epochs: int, k: int) -> dict:
    kw = {"epochs": epochs, "k": k, "overwrite": True}
    if args.n_train:
        kw["dataset_params"] = {"seed": 0, "n_train": args.n_train, "n_test": 100}
    return kw


def step_time(task: str, overrides: dict, steps: int) -> float:
    """Median seconds per `update()` at training throughput (the task's spec, no proof)."""
    from pol.prover.recorder import epoch_order
    from pol.registry import build_context
    from pol.step import update
    from pol.tasks import build_spec
    spec, train, _ = build_spec(task, **overrides)
    ctx = build_context(spec, torch.device("cpu"))
    order = epoch_order(spec.seed, 0, len(train))
    B = spec.batch_size
    lrs = [spec.optimizer.lr]
    times = []
    for t in range(steps + 2):
        idx = order[(t * B) % max(1, len(order) - B):][:B]
        t0 = time.perf_counter()
        update(ctx, torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx]), lrs, t)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def read_time(path: Path) -> float:
    """One read of the whole proof: manifest, per-step arrays, every checkpoint (digests checked)."""
    from pol.proof.reader import open_proof
    t0 = time.perf_counter()
    p = open_proof(path)
    for t in p.manifest.checkpoints:
        p.load_checkpoint(t)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="synthetic-resnet20")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--k", type=int, default=2, help="checkpoint interval for (a) and (b)")
    ap.add_argument("--n-train", type=int, default=1024,
                    help="synthetic dataset size (0: the task's default)")
    ap.add_argument("--mem-epochs", type=int, default=1, help="T for (c), in epochs (k = 1)")
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads everywhere")
    ap.add_argument("--out", type=Path, help="keep proofs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not args.task.startswith("synthetic"):
        args.n_train = 0
    torch.set_num_threads(args.threads)
    from pol.prover.trainer import train_task
    from pol.verifier import verify

    cores = len(os.sched_getaffinity(0))
    ns = [n for n in map(int, args.workers.split(",")) if n <= cores] or [1]
    base = args.out or Path(tempfile.mkdtemp(prefix="pol-bench-verify-"))
    res: dict = {"task": args.task, "cores": cores, "threads": args.threads,
                 "torch": torch.__version__}

    # ---- (a) speedup
    t0 = time.perf_counter()
    run = train_task(args.task, base / "a", **_train_kwargs(args, args.epochs, args.k))
    train_s = time.perf_counter() - t0
    m = json.loads((run.proof / "manifest.json").read_text())
    T = m["total_steps"]
    rows, ref = [], None
    for n in ns:
        t0 = time.perf_counter()
        rep = verify(run.proof, all_segments=True, workers=n)
        wall = time.perf_counter() - t0
        if ref is None:
            ref = rep
        rows.append({"workers": n, "seconds": wall, "speedup": rows[0]["seconds"] / wall
                     if rows else 1.0, "valid": rep.valid,
                     "identical": rep.segments == ref.segments,
                     "exact": sum(s.exact for s in rep.segments), "segments": len(rep.segments)})
    res["speedup"] = {"steps": T, "checkpoints": len(m["checkpoints"]), "train_seconds": train_s,
                      "rows": rows}

    # ---- (b) against the floor
    over = {"dataset_params": {"seed": 0, "n_train": args.n_train, "n_test": 100}} \
        if args.n_train else {}
    st = step_time(args.task, over, steps=5)
    rd = read_time(run.proof)
    replayed = ref.stats["replayed_steps"]
    floor = rd + replayed * st
    res["floor"] = {"verify_seconds": rows[0]["seconds"], "read_seconds": rd,
                    "step_seconds": st, "replayed_steps": replayed, "floor_seconds": floor,
                    "ratio": rows[0]["seconds"] / floor}

    # ---- (c) memory: T and 4T steps, k = 1
    mem = []
    for mult in (1, 4):
        out = base / f"mem{mult}"
        kw = _train_kwargs(args, args.mem_epochs * mult, 1)
        prover = _peak_rss_mib(f"from pol.prover.trainer import train_task\n"
                               f"train_task({args.task!r}, {str(out)!r}, **{kw!r})", args.threads)
        mm = json.loads((out / "manifest.json").read_text())
        verifier = _peak_rss_mib(f"from pol.verifier import verify\n"
                                 f"r = verify({str(out)!r})\nassert r.valid, r.render()",
                                 args.threads)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        mem.append({"steps": mm["total_steps"], "checkpoints": len(mm["checkpoints"]),
                    "proof_mib": size / 2**20, "prover_mib": prover, "verifier_mib": verifier})
    res["memory"] = mem
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    _print(res)


def _print(r: dict) -> None:
    s = r["speedup"]
    print(f"### pol verify: {r['task']}, {r['cores']} cores, torch {r['torch']}, "
          f"{r['threads']} intra-op thread(s) per process\n")
    print(f"(a) `verify --all`, {s['steps']} steps, {s['checkpoints']} checkpoints "
          f"(training took {s['train_seconds']:.1f} s)\n")
    print("| workers | wall (s) | speedup | segments identical to N=1 | exact segments | verdict |")
    print("|---:|---:|---:|:---:|---:|:---|")
    for row in s["rows"]:
        print(f"| {row['workers']} | {row['seconds']:.2f} | {row['speedup']:.2f}× | "
              f"{'yes' if row['identical'] else 'NO'} | {row['exact']}/{row['segments']} | "
              f"{'valid' if row['valid'] else 'invalid'} |")
    f = r["floor"]
    print("\n(b) verification (N=1) against its floor\n")
    print("| verify wall (s) | read proof once (s) | replayed steps | step at training "
          "throughput (ms) | floor (s) | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {f['verify_seconds']:.2f} | {f['read_seconds']:.3f} | {f['replayed_steps']} | "
          f"{1e3 * f['step_seconds']:.1f} | {f['floor_seconds']:.2f} | "
          f"{f['ratio']:.2f}× |")
    print("\n(c) peak RSS (VmHWM), each in a fresh process (k = 1; verifier: default top-Q)\n")
    print("| steps | checkpoints | proof size (MiB) | prover peak (MiB) | verifier peak (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for row in r["memory"]:
        print(f"| {row['steps']} | {row['checkpoints']} | {row['proof_mib']:.1f} | "
              f"{row['prover_mib']:.0f} | {row['verifier_mib']:.0f} |")


if __name__ == "__main__":
    main()
