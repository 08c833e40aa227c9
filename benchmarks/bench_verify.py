"""Verifier cost: parallel replay speedup, wall time against its lower bound, peak memory.

(a) `verify --all` with N = 1, 2, 4, 8 worker processes (up to the machine's cores): wall time,
    speedup over N = 1, the machine's capacity (the speedup that N one-thread processes of a
    fixed torch workload reach at the same time: other jobs on a shared machine lower it), and
    whether the report's segments are identical to N = 1's; the same for a top-Q verification (the default: top-1 + 1 random segment per epoch, fixed verifier entropy).
(b) the N = 1 verification's wall time ÷ its floor = (one read of the whole proof + the replayed
    steps at the training throughput of the same `update()` loop), for top-Q and for --all: how
    close verification is to its floor (each repeat times both back to back; median ratio). Also `pol verify` in a fresh process (imports included).
(c) peak RSS (VmHWM) of the verifier and of the prover, each in a fresh subprocess, for a proof of
    T steps and one of 4T steps of the same model (k = 1, so the longer proof has 4× the
    checkpoints): memory must not grow with the proof's length.

Every process runs torch with --threads intra-op threads (default 1), so the prover's and the
verifier's kernels split their reductions the same way (exact replay) and N workers use N cores.

Every wall time is the median of --repeats runs in one process (after one untimed warm-up run);
the output is a markdown table per part and one line of compact JSON (also --json FILE).

    python benchmarks/bench_verify.py                      # synthetic-resnet20, small
    python benchmarks/bench_verify.py --task digits-cnn --epochs 10 --k 10 --workers 1,2
    python benchmarks/bench_verify.py --task digits-cnn --epochs 20 --k 5 --no-memory
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
    from pol.step import build_context
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


def _burn(barrier, q, steps: int) -> None:
    torch.set_num_threads(1)
    a = torch.randn(192, 192, generator=torch.Generator().manual_seed(0))
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(steps):
        a = torch.tanh(a @ a * 1e-2)
    q.put(time.perf_counter() - t0)


def parallel_capacity(n: int, steps: int = 1500) -> float:
    """The speedup that n one-thread processes can reach on this machine now (others' jobs
    included): n · t(1) / t(n) for a fixed torch workload, run at once behind a barrier."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    times = {}
    for k in (1, n):
        barrier, q = ctx.Barrier(k), ctx.Queue()
        ps = [ctx.Process(target=_burn, args=(barrier, q, steps)) for _ in range(k)]
        for p in ps:
            p.start()
        times[k] = max(q.get() for _ in ps)
        for p in ps:
            p.join()
    return n * times[1] / times[n]


def _median_time(fn, repeats: int):
    """(median seconds over `repeats` calls, the last result)."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def cold_cli_time(path: Path, threads: int) -> float:
    """`pol verify PROOF` in a fresh interpreter: imports, data, model, everything."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pol.cli", "verify", str(path)], check=True,
                   capture_output=True, env=env)
    return time.perf_counter() - t0


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
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    ap.add_argument("--no-memory", action="store_true", help="skip (c)")
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
    entropy = b"bench_verify"  # the same random segments in every top-Q run
    verify(run.proof, all_segments=True)  # warm-up: first-call costs (allocator, lazy imports)
    modes = {"all": {"all_segments": True}, "top-q": {"entropy": entropy}}
    capacity = {n: parallel_capacity(n) if n > 1 else 1.0 for n in ns}
    tables: dict = {}
    for mode, kw in modes.items():
        rows, ref = [], None
        for n in ns:
            wall, rep = _median_time(lambda: verify(run.proof, workers=n, **kw), args.repeats)
            if ref is None:
                ref = rep
            rows.append({"workers": n, "seconds": wall, "speedup": rows[0]["seconds"] / wall
                         if rows else 1.0, "capacity": capacity[n], "valid": rep.valid,
                         "identical": rep.segments == ref.segments,
                         "exact": sum(s.exact for s in rep.segments),
                         "segments": len(rep.segments),
                         "replayed_steps": rep.stats["replayed_steps"]})
        tables[mode] = rows
    res["speedup"] = {"steps": T, "checkpoints": len(m["checkpoints"]), "train_seconds": train_s,
                      "rows": tables["all"], "top_q_rows": tables["top-q"]}

    # ---- (b) against the floor. On a shared machine the load drifts: each repeat measures the
    # verification and its floor (read once + step time) back to back; the ratio is the median
    # of the per-repeat ratios
    over = {"dataset_params": {"seed": 0, "n_train": args.n_train, "n_test": 100}} \
        if args.n_train else {}
    res["floor"] = {}
    for mode, kw in modes.items():
        per = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            rep = verify(run.proof, **kw)
            wall = time.perf_counter() - t0
            rd = read_time(run.proof)
            st = step_time(args.task, over, steps=max(10, min(rep.stats["replayed_steps"], 50)))
            floor = rd + rep.stats["replayed_steps"] * st
            per.append((wall / floor, wall, rd, st, floor, rep.stats["replayed_steps"]))
        per.sort()
        ratio, wall, rd, st, floor, replayed = per[len(per) // 2]
        res["floor"][mode] = {"verify_seconds": wall, "read_seconds": rd, "step_seconds": st,
                              "replayed_steps": replayed, "floor_seconds": floor,
                              "ratio": ratio, "ratios": [round(p[0], 4) for p in per]}
    res["cold_cli_seconds"] = cold_cli_time(run.proof, args.threads)

    # ---- (c) memory: T and 4T steps, k = 1
    mem = []
    for mult in (() if args.no_memory else (1, 4)):
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
    print("\nJSON: " + json.dumps(res, separators=(",", ":")))


def _print(r: dict) -> None:
    s = r["speedup"]
    print(f"### pol verify: {r['task']}, {r['cores']} cores, torch {r['torch']}, "
          f"{r['threads']} intra-op thread(s) per process\n")
    for title, key in (("`verify --all`", "rows"), ("`verify` (top-Q)", "top_q_rows")):
        print(f"(a) {title}, {s['steps']} steps, {s['checkpoints']} checkpoints "
              f"(training took {s['train_seconds']:.1f} s), median wall time\n")
        print("| workers | wall (s) | speedup | machine's capacity | segments identical to N=1 "
              "| exact segments | verdict |")
        print("|---:|---:|---:|---:|:---:|---:|:---|")
        for row in s[key]:
            print(f"| {row['workers']} | {row['seconds']:.2f} | {row['speedup']:.2f}× | "
                  f"{row['capacity']:.2f}× | "
                  f"{'yes' if row['identical'] else 'NO'} | {row['exact']}/{row['segments']} | "
                  f"{'valid' if row['valid'] else 'invalid'} |")
        print()
    print("(b) verification (N=1) against its floor\n")
    print("| mode | verify wall (s) | read proof once (s) | replayed steps | step at training "
          "throughput (ms) | floor (s) | ratio (median) | all ratios |")
    print("|:---|---:|---:|---:|---:|---:|---:|:---|")
    for mode, f in r["floor"].items():
        print(f"| {mode} | {f['verify_seconds']:.3f} | {f['read_seconds']:.3f} | "
              f"{f['replayed_steps']} | {1e3 * f['step_seconds']:.2f} | "
              f"{f['floor_seconds']:.3f} | {f['ratio']:.2f}× | "
              f"{', '.join(f'{x:.2f}' for x in f['ratios'])} |")
    print(f"\n`pol verify` in a fresh process (imports included): "
          f"{r['cold_cli_seconds']:.2f} s")
    if r["memory"]:
        print("\n(c) peak RSS (VmHWM), each in a fresh process (k = 1; verifier: default top-Q)\n")
        print("| steps | checkpoints | proof size (MiB) | prover peak (MiB) | verifier peak (MiB) |")
        print("|---:|---:|---:|---:|---:|")
        for row in r["memory"]:
            print(f"| {row['steps']} | {row['checkpoints']} | {row['proof_mib']:.1f} | "
                  f"{row['prover_mib']:.0f} | {row['verifier_mib']:.0f} |")


if __name__ == "__main__":
    main()
