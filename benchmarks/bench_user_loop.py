"""Overhead on the path the README tells users to take: a plain PyTorch loop, written as a user
writes it (their model, optimizer, in-memory data, `.to(device)`, `F.cross_entropy`), against the
same loop with

  rec     the README's Recorder example: `rec.record_batch(idx, x, y)` before the forward pass
          (inputs and targets, as the README shows them, on the training device) and
          `rec.step(loss)` after `opt.step()`
  attach  `pol.attach(...)`: the loop over its batches, `opt.step(loss=loss)`
  plain2  the plain loop again: the A/A control (the noise floor of this machine, this run)
  rec-nowrite  (diagnostic, --blocks only) the Recorder whose writer thread writes nothing: the
          training thread's own share of the recorder's cost

at each k of `--ks`. Every run builds a fresh model and optimizer (the same weights: the
recorders take them as `init="external"`), trains `--warmup` untimed steps then `--steps` timed
ones on the same batches (the seed's order); a run's time is its loop plus the writer's drain at
the end (the loop alone is reported too). Runs are interleaved in a shuffled order per round, and
each ratio is the median over `--repeats` rounds of (mode time ÷ plain time in the same round).

    python benchmarks/bench_user_loop.py --task digits-cnn --device cpu --steps 150 --repeats 7
    python benchmarks/bench_user_loop.py --task resnet20 --device cuda --steps 300 --repeats 5
    python benchmarks/bench_user_loop.py --task digits-cnn --profile rec --ks 1   # cProfile
    python benchmarks/bench_user_loop.py --micro --ks 1,10   # µs per Recorder call, torch ops

`--micro` times the Recorder's own calls on the training thread with a tiny model (an MLP on 20
features, batch 32; the writer thread waits for each snapshot and frees it but writes nothing, so
its disk never holds the training thread up): µs per `record_batch`, per `step` that ends without
a checkpoint, and per `step` that writes one (the lower decile over `--steps` calls, and the
median in parentheses: on a shared machine the lower decile is the call's own cost), then the torch ops each of those calls issues on the training thread
(torch.profiler: the calls' direct children; a tensor's `.numpy()` shows as four of them).

The proofs are written with the Recorder's defaults (durable: fsync per checkpoint), to a temporary
directory (`--out` to choose where: the disk matters at k = 1).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import pol
from pol import ModelSpec, Recorder
from pol.step import epoch_order

LAST: dict[str, float] = {}
DURABLE = [True]
ALLOW: dict = {}  # allow_nondeterministic=True with --nondeterministic  # the Recorder's default: fsync at every checkpoint (`--no-durable`: off)


def user_task(task: str, batch_size: int | None):
    """(X, Y, make_model, make_optimizer, ModelSpec, batch size) as a user would write them."""
    if task == "digits-cnn":
        from sklearn.datasets import load_digits
        x, y = load_digits(return_X_y=True)
        X = (x.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        arch = {"in_channels": 1, "num_classes": 10, "image_size": 8}
        from pol.models import lenet

        def make_model():
            return lenet(**arch)

        def make_opt(m):
            return torch.optim.Adam(m.parameters(), lr=2e-3)
        return X, y.astype(np.int64), make_model, make_opt, ModelSpec("lenet", arch), \
            batch_size or 32
    if task == "resnet20":  # ResNet-20-shaped: CIFAR-sized inputs, SGD as in the paper
        rng = np.random.default_rng(0)
        X = rng.normal(size=(5120, 3, 32, 32)).astype(np.float32)
        Y = rng.integers(0, 10, size=len(X)).astype(np.int64)
        from pol.models import resnet20

        def make_model():
            return resnet20(num_classes=10)

        def make_opt(m):
            return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        return X, Y, make_model, make_opt, ModelSpec("resnet20", {"num_classes": 10}), \
            batch_size or 128
    raise SystemExit(f"unknown task {task!r} (digits-cnn, resnet20)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(mode: str, task, device: torch.device, steps: int, warmup: int, k: int,
        out: Path) -> float:
    X, Y, make_model, make_opt, model_spec, B = task
    torch.manual_seed(0)
    model = make_model().to(device)
    opt = make_opt(model)
    n, total = len(X), steps + warmup
    epochs = -(-total * B // n) + 1
    S = -(-n // B)
    batches = [o[s * B:(s + 1) * B] for o in (epoch_order(0, e, n) for e in range(epochs))
               for s in range(S)][:total]
    rec = None
    common = dict(model=model, data=(X, Y), model_spec=model_spec, epochs=epochs, k=k,
                  init="external", overwrite=True, durable=DURABLE[0], **ALLOW)
    if mode == "rec":
        rec = Recorder(out, optimizer=opt, batch_size=B, **common)
    elif mode == "attach":
        opt, loader = pol.attach(optimizer=opt, out=out, batch_size=B, **common)
        rec = opt.recorder
    t0 = 0.0
    if mode == "attach":
        t = 0
        while t < total:
            for x, y in loader:  # the user's loop over the attached loader
                if t == warmup:
                    _sync(device)
                    t0 = time.perf_counter()
                if t == total:
                    break
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step(loss=loss)
                t += 1
    else:
        for t, idx in enumerate(batches):
            if t == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x = torch.from_numpy(X[idx]).to(device, non_blocking=True)
            y = torch.from_numpy(Y[idx]).to(device, non_blocking=True)
            if rec is not None:
                rec.record_batch(idx, x, y)  # the README's call: inputs and targets
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if rec is not None:
                rec.step(loss)
    _sync(device)
    LAST["loop"] = time.perf_counter() - t0
    if rec is not None:  # the run is cut short of its declared epochs: abort drains the writer
        rec.abort()
        LAST["writer"] = rec.writer.write_seconds  # its background thread's busy time
    return time.perf_counter() - t0


def blocks(mode: str, task, device: torch.device, n_blocks: int, block: int, warmup: int,
           k: int, out: Path):
    """The same loops as `run`, cut into blocks: a generator that trains `warmup` steps, then,
    per `next()`, `block` more steps and returns (seconds, seconds inside pol's calls on the
    training thread). A block ends with the device synchronized and, for the recorders, the
    writer drained (its work on this block's checkpoints is the block's cost)."""
    X, Y, make_model, make_opt, model_spec, B = task
    torch.manual_seed(0)
    model = make_model().to(device)
    opt = make_opt(model)
    n, total = len(X), warmup + n_blocks * block
    epochs = -(-total * B // n) + 1
    S = -(-n // B)
    order = [o[s * B:(s + 1) * B] for o in (epoch_order(0, e, n) for e in range(epochs))
             for s in range(S)]
    common = dict(model=model, data=(X, Y), model_spec=model_spec, epochs=epochs, k=k,
                  init="external", overwrite=True, durable=DURABLE[0], **ALLOW)
    rec = loader = None
    if mode in ("rec", "rec-nowrite"):
        rec = Recorder(out, optimizer=opt, batch_size=B, **common)
        if mode == "rec-nowrite":  # diagnostic: the writer thread waits for each snapshot's
            # copy and frees it, but writes nothing: the training thread's own share of the cost
            rec.writer._write_ready = lambda t, snap: None
    elif mode == "attach":
        opt, loader = pol.attach(optimizer=opt, out=out, batch_size=B, **common)
        rec = opt.recorder
    it = _attach_batches(loader) if loader is not None else None
    clock = time.perf_counter
    t, inside = 0, 0.0
    for b in range(n_blocks + 1):
        steps = warmup if b == 0 else block
        _sync(device)
        t0, inside = clock(), 0.0
        for _ in range(steps):
            if it is not None:
                x, y = next(it)
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                c = clock()
                opt.step(loss=loss)
                inside += clock() - c
            else:
                idx = order[t]
                x = torch.from_numpy(X[idx]).to(device, non_blocking=True)
                y = torch.from_numpy(Y[idx]).to(device, non_blocking=True)
                if rec is not None:
                    c = clock()
                    rec.record_batch(idx, x, y)
                    inside += clock() - c
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                if rec is not None:
                    c = clock()
                    rec.step(loss)
                    inside += clock() - c
            t += 1
        _sync(device)
        if rec is not None:
            rec.writer.drain()
        if b:
            yield clock() - t0, inside
    if rec is not None:
        rec.abort()


def _attach_batches(loader):
    while True:
        yield from loader


def measure_blocks(args, task, device, ks: list[int], tmp: Path) -> dict:
    """Block-interleaved ratios: every round runs one block of each mode in a shuffled order;
    a mode's ratio is the median over rounds of (its block time ÷ plain's block time in the
    same round). Slow drifts of the machine (clocks, other tenants) cancel within a round."""
    modes = args.modes.split(",")
    runs = [(m, None) for m in modes if m.startswith("plain")] + \
        [(m, k) for k in ks for m in modes if not m.startswith("plain")]
    gens = {(m, k): blocks(m, task, device, args.blocks, args.block, args.warmup, k or 10,
                           tmp / f"{m}-{k}") for m, k in runs}
    times: dict[str, list[float]] = {}
    inside: dict[str, list[float]] = {}
    rng = random.Random(0)
    for _ in range(args.blocks):
        order = runs[:]
        rng.shuffle(order)
        for m, k in order:
            key = m if k is None else f"{m}@{k}"
            dt, ins = next(gens[(m, k)])
            times.setdefault(key, []).append(dt)
            inside.setdefault(key, []).append(ins)
    for g in gens.values():
        g.close()
    base = times["plain"]
    res = {}
    for key, v in times.items():
        r = [a / b for a, b in zip(v, base)]
        res[key] = {"ratio": statistics.median(r),
                    "q1": statistics.quantiles(r, n=4)[0], "q3": statistics.quantiles(r, n=4)[2],
                    "step_ms": 1e3 * statistics.median(v) / args.block,
                    "pol_us_per_step": 1e6 * statistics.median(inside[key]) / args.block}
    return {"results": res, "times": times}


def profile(mode: str, task, device, steps: int, warmup: int, k: int, out: Path,
            top: int) -> str:
    run(mode, task, device, steps, warmup, k, out)  # first: imports and lazy inits, unprofiled
    LAST.clear()
    pr = cProfile.Profile()
    pr.enable()
    total = run(mode, task, device, steps, warmup, k, out)
    pr.disable()
    s = io.StringIO()
    s.write(f"{mode} at k={k}: {1e3 * total / steps:.3f} ms/step (profiled), loop "
            f"{LAST['loop']:.3f} s, writer thread busy {LAST.get('writer', 0.0):.3f} s\n")
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats("pol/", top)
    return s.getvalue()


def micro(device: torch.device, ks: list[int], steps: int, warmup: int) -> str:
    """µs per Recorder call and the torch ops each call issues (see the module docstring)."""
    from pol.models import mlp
    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 20)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(np.int64)
    arch = {"in_features": 20, "num_classes": 2, "hidden": [32]}
    lines = [f"Recorder calls, tiny MLP, batch 32, {steps} steps (+{warmup}), {device}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads"]
    for k in ks:
        with tempfile.TemporaryDirectory(prefix="pol-micro-") as tmp:
            us = _micro_times(device, X, Y, arch, mlp, k, steps, warmup, Path(tmp) / "t")
            ops = _micro_ops(device, X, Y, arch, mlp, k, min(steps, 200), Path(tmp) / "o")
        lines.append(f"k={k}, µs: " + ", ".join(f"{name} {v}" for name, v in us.items()))
        for name, (calls, counts) in ops.items():
            per = sum(counts.values()) / max(calls, 1)
            lines.append(f"  {name}: {per:.2f} torch ops per call: " + ", ".join(
                f"{op} ×{c / calls:.2f}" for op, c in sorted(counts.items())))
    return "\n".join(lines)


def _micro_recorder(device, X, Y, arch, mlp, k, steps, out):
    torch.manual_seed(0)
    model = mlp(**arch).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    epochs = -(-steps * 32 // len(X)) + 1
    rec = Recorder(out, model=model, optimizer=opt, data=(X, Y),
                   model_spec=ModelSpec("mlp", arch), batch_size=32, epochs=epochs, k=k,
                   init="external", overwrite=True, durable=DURABLE[0], **ALLOW)
    rec.writer._write_ready = lambda t, snap: None  # the training thread's cost alone
    S = rec.steps_per_epoch
    batches = [b for e in range(epochs) for b in rec.epoch_batches(e)][:steps]
    assert len(batches) == steps and S
    return rec, model, opt, batches


def _micro_step(rec, model, opt, X, Y, idx, device, clock, ranges=None):
    """One README step; returns (record_batch s, step s, whether step checkpointed)."""
    import contextlib
    from torch.profiler import record_function
    x = torch.from_numpy(X[idx]).to(device, non_blocking=True)
    y = torch.from_numpy(Y[idx]).to(device, non_blocking=True)
    ckpt = (rec.t + 1) % rec.k == 0 or rec.t + 1 == rec.total_steps
    r1 = record_function("pol.record_batch") if ranges else contextlib.nullcontext()
    r2 = (record_function("pol.step+checkpoint" if ckpt else "pol.step") if ranges
          else contextlib.nullcontext())
    with r1:
        a = clock()
        rec.record_batch(idx, x, y)
        b = clock()
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    with r2:
        c = clock()
        rec.step(loss)
        d = clock()
    return b - a, d - c, ckpt


def _micro_times(device, X, Y, arch, mlp, k, steps, warmup, out) -> dict[str, str]:
    """Per call: the lower decile and the median of its wall time on the training thread (on a
    shared machine the lower decile is the call's own cost; the median adds the neighbours'),
    and the mean per step."""
    rec, model, opt, batches = _micro_recorder(device, X, Y, arch, mlp, k, steps + warmup, out)
    rb, st, ck = [], [], []
    for i, idx in enumerate(batches):
        a, b, c = _micro_step(rec, model, opt, X, Y, idx, device, time.perf_counter)
        rec.writer.drain()  # the writer thread idle while the next step is timed
        time.sleep(2e-4)  # (and back in its queue's wait, not holding the GIL)
        if i >= warmup:
            rb.append(a)
            (ck if c else st).append(b)
    rec.abort()

    def fmt(v: list[float]) -> str:
        return f"{1e6 * float(np.percentile(v, 10)):.1f} ({1e6 * statistics.median(v):.1f})"
    res = {"record_batch": fmt(rb)}
    if st:
        res["step"] = fmt(st)
    if ck:
        res["step+checkpoint"] = fmt(ck)
    res["mean per step"] = f"{1e6 * (sum(rb) + sum(st) + sum(ck)) / len(rb):.1f}"
    return res


def _micro_ops(device, X, Y, arch, mlp, k, steps, out) -> dict[str, tuple[int, dict]]:
    """{range: (calls, {op: count})}: the torch ops issued directly inside each Recorder call."""
    from torch.profiler import ProfilerActivity, profile
    warm = k + 1  # lazy initializations (the first checkpoint's caches) outside the profile
    rec, model, opt, batches = _micro_recorder(device, X, Y, arch, mlp, k, steps + warm, out)
    for idx in batches[:warm]:
        _micro_step(rec, model, opt, X, Y, idx, device, time.perf_counter)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches[warm:]:
            _micro_step(rec, model, opt, X, Y, idx, device, time.perf_counter, ranges=True)
    rec.writer.drain()
    rec.abort()
    res: dict[str, tuple[int, dict]] = {}
    events = prof.events()
    for ev in events:
        if ev.name.startswith("pol."):
            res.setdefault(ev.name, (0, {}))
            res[ev.name] = (res[ev.name][0] + 1, res[ev.name][1])
    for ev in events:
        parent = ev.cpu_parent
        if parent is not None and parent.name in res and not ev.name.startswith("pol."):
            counts = res[parent.name][1]
            counts[ev.name] = counts.get(ev.name, 0) + 1
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="digits-cnn", choices=["digits-cnn", "resnet20"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--ks", default="1,10")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--modes", default="plain,plain2,rec,attach")
    ap.add_argument("--out", default=None, help="where proofs are written (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's; 1 on a shared CPU is steadier)")
    ap.add_argument("--no-durable", action="store_true",
                    help="durable=False: no fsync per checkpoint (not the README's default)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--blocks", type=int, default=0,
                    help="block-interleaved: this many rounds of one block of each mode")
    ap.add_argument("--block", type=int, default=50, help="steps per block (--blocks)")
    ap.add_argument("--micro", action="store_true",
                    help="µs per Recorder call and the torch ops each issues (tiny model)")
    ap.add_argument("--profile", default=None, metavar="MODE",
                    help="cProfile one run of MODE at the first k instead, print the top")
    ap.add_argument("--nondeterministic", action="store_true",
                    help="on a GPU: PyTorch's default kernels (the recorders then need "
                    "allow_nondeterministic=True); default: deterministic algorithms, as the "
                    "README tells GPU users")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if args.nondeterministic:
            ALLOW["allow_nondeterministic"] = True
        else:  # every mode, plain included, runs with them
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
    DURABLE[0] = not args.no_durable
    if args.threads:
        torch.set_num_threads(args.threads)
    task = user_task(args.task, args.batch_size)
    ks = [int(v) for v in args.ks.split(",")]
    tmp = Path(args.out or tempfile.mkdtemp(prefix="pol-user-loop-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if args.micro:
            print(micro(device, ks, args.steps, args.warmup))
            return
        if args.profile:
            print(profile(args.profile, task, device, args.steps, args.warmup, ks[0],
                          tmp / "prof", 25))
            return
        if args.blocks:
            _report_blocks(args, task, device, ks, tmp)
        else:
            _measure(args, task, device, ks, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(args, task, device, ks: list[int], tmp: Path) -> None:
    modes = args.modes.split(",")
    runs = [(m, None) for m in modes if m.startswith("plain")] + \
        [(m, k) for k in ks for m in modes if not m.startswith("plain")]
    times: dict[str, list[float]] = {}
    loops: dict[str, list[float]] = {}
    rng = random.Random(0)
    for rep in range(args.repeats):
        order = runs[:]
        rng.shuffle(order)
        for m, k in order:
            key = m if k is None else f"{m}@{k}"
            times.setdefault(key, []).append(run(m, task, device, args.steps, args.warmup,
                                                 k or 10, tmp / key))
            loops.setdefault(key, []).append(LAST["loop"])
            shutil.rmtree(tmp / key, ignore_errors=True)
        print(f"round {rep + 1}/{args.repeats}: " + ", ".join(
            f"{key} {1e3 * v[-1] / args.steps:.2f} ms/step" for key, v in times.items()),
            flush=True)
    base = times["plain"]

    def ratio(key: str, src=times) -> float:
        return statistics.median(a / b for a, b in zip(src[key], src["plain"]))
    res = {key: {"ratio": ratio(key), "ratio_loop": ratio(key, loops),
                 "min_ratio": min(a / b for a, b in zip(times[key], base)),
                 "max_ratio": max(a / b for a, b in zip(times[key], base)),
                 "step_ms": 1e3 * statistics.median(times[key]) / args.steps}
           for key in times}
    dev = (torch.cuda.get_device_name() if device.type == "cuda"
           else f"CPU, {torch.get_num_threads()} threads")
    X, _, _, _, _, B = task
    print(f"\n{args.task}, batch {B}, {len(X)} samples, {args.steps} timed steps "
          f"(+{args.warmup}), median of {args.repeats} interleaved rounds, {dev}, "
          f"torch {torch.__version__}")
    print("| run | step ms | ÷ plain (median) | min–max | loop only ÷ plain |")
    print("|---|---|---|---|---|")
    for key, r in res.items():
        print(f"| {key} | {r['step_ms']:.3f} | {r['ratio']:.4f} | {r['min_ratio']:.3f}–"
              f"{r['max_ratio']:.3f} | {r['ratio_loop']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "task": args.task, "batch": B,
                                               "steps": args.steps, "results": res,
                                               "times": times}, indent=1))


def _report_blocks(args, task, device, ks: list[int], tmp: Path) -> None:
    out = measure_blocks(args, task, device, ks, tmp)
    dev = (torch.cuda.get_device_name() if device.type == "cuda"
           else f"CPU, {torch.get_num_threads()} threads")
    X, _, _, _, _, B = task
    print(f"{args.task}, batch {B}, {args.blocks} rounds of {args.block}-step blocks per mode "
          f"(+{args.warmup} warm-up), median of per-round ratios, {dev}, torch {torch.__version__}")
    print("| run | step ms | ÷ plain (median) | quartiles | in pol's calls, µs/step |")
    print("|---|---|---|---|---|")
    for key, r in out["results"].items():
        print(f"| {key} | {r['step_ms']:.3f} | {r['ratio']:.4f} | {r['q1']:.3f}–{r['q3']:.3f} "
              f"| {r['pol_us_per_step']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "task": args.task, "batch": B,
                                               "mode": "blocks", "block": args.block, **out},
                                              indent=1))


if __name__ == "__main__":
    main()
