"""Exact mode across hardware (issue 14): record an exact-mode proof on `--device`, verify it on
`--verify-device` with the default (hardened) verifier, and measure what exact mode costs.

Per task: training time of the exact proof ÷ the same run in plain float32 (and ÷ bf16 autocast on a
GPU), each recording a proof, interleaved over `--repeats`; the rounding log's size (entries per
step, bytes per step ÷ one checkpoint's bytes, whole log ÷ one checkpoint); the verification on the
other device (valid, segments bitwise exact / replayed, the rounding-log check); where a segment is
not bitwise exact, which tensors differ (and in how many elements) after its replay, and with
`--no-log-control` how many segments would replay exactly without the log.

    python benchmarks/bench_exact.py --tasks digits-cnn --device cpu --verify-device cpu
    python benchmarks/bench_exact.py --tasks digits-cnn,resnet20,gpt --device cuda \\
        --verify-device cpu --k 100 --resnet-steps 200 --gpt-layers 8 --gpt-embd 512 --json r.json

Tasks: `digits-cnn`; `resnet20` (ResNet-20 on the seeded CIFAR-shaped synthetic set,
`--resnet-steps` steps of batch 128, augmentation on); `gpt` (pol's GPT, AdamW, synthetic tokens,
size from `--gpt-*`). `--k` applies to all tasks (default: each task's own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pol.proof import format as fmt
from pol.proof.reader import open_proof
from pol.prover.trainer import train_spec
from pol.registry import resolve_device
from pol.spec import StepSpec
from pol.step import graphed
from pol.tasks import build_spec
from pol.verifier import verify


def task_spec(name: str, args, device: torch.device):
    """(plain fp32 spec, train set, test set) of a benchmark task on `device`."""
    det = device.type == "cuda"  # pol's default on a GPU (pol train): bitwise on that GPU
    common = dict(device=device.type, deterministic=det, seed=args.seed)
    if args.k:
        common["k"] = args.k
    if name == "digits-cnn":
        return build_spec("digits-cnn", epochs=args.epochs, **common)
    if name == "resnet20":
        dp = {"seed": 0, "n_train": args.resnet_steps * 128, "n_test": 256}
        return build_spec("synthetic-resnet20", epochs=1, dataset_params=dp, **common)
    if name == "gpt":
        dp = {"seed": 0, "n_train": args.gpt_steps * args.gpt_batch, "n_test": 64,
              "block_size": args.gpt_block, "vocab_size": args.gpt_vocab}
        spec, train, test = build_spec("synthetic-gpt", epochs=1, batch_size=args.gpt_batch,
                                       dataset_params=dp, **common)
        kw = {**spec.model.kwargs, "n_layer": args.gpt_layers, "n_head": args.gpt_heads,
              "n_embd": args.gpt_embd, "block_size": args.gpt_block,
              "vocab_size": args.gpt_vocab}
        return spec.with_(model=replace(spec.model, kwargs=kw)), train, test
    raise SystemExit(f"unknown task {name!r} (digits-cnn, resnet20, gpt)")


def modes(device: torch.device) -> dict[str, StepSpec]:
    out = {"fp32": StepSpec(), "exact": StepSpec(exact=True)}
    if device.type == "cuda":
        out["bf16"] = StepSpec(autocast="bf16")
    return out


def train_times(spec, train, device, tmp: Path, repeats: int, warm=None
                ) -> tuple[dict, dict, Path]:
    """Median training seconds (recording a proof) per mode, interleaved, and every run's; the
    exact proof kept. On a GPU each mode first runs once untimed (on `warm`, a (spec, train)
    pair of a shorter run, when given): the CUDA context, cuDNN and cuBLAS handles, each mode's
    kernels loaded (float64's for exact mode) are a process's, not a run's; a run's own fixed
    costs (exact mode's eager steps and graph capture) are timed."""
    ms = modes(device)
    wspec, wtrain = warm or (spec, train)
    times: dict[str, list[float]] = {m: [] for m in ms}
    names = list(ms)
    keep = tmp / "exact-proof"
    if device.type == "cuda":
        for m in names:
            train_spec(wspec.with_(step=ms[m]), wtrain, None, tmp / "warmup", device=device,
                       durable=False, overwrite=True)
    for rep in range(repeats):
        for m in names[rep % len(names):] + names[:rep % len(names)]:
            out = keep if m == "exact" and rep == 0 else tmp / m
            r = train_spec(spec.with_(step=ms[m]), train, None, out, device=device,
                           durable=False, overwrite=True)
            times[m].append(r.train_seconds)
            if out != keep:
                shutil.rmtree(out, ignore_errors=True)
    return {m: statistics.median(v) for m, v in times.items()}, times, keep


def log_sizes(path: Path) -> dict:
    p = open_proof(path)
    m = p.manifest
    ck = [m.files[fmt.checkpoint_name(t)][1] for t in m.checkpoints[1:]]  # with optimizer state
    log_bytes = m.files[fmt.ROUNDLOG][1]
    per_point = {name: int((p.roundlog[:, 1] == i).sum())
                 for i, name in enumerate(("gradients", "state", "loss"))}
    ck_bytes = statistics.mean(ck)
    return {"entries": len(p.roundlog), "entries_per_step": len(p.roundlog) / m.total_steps,
            "entries_by_point": per_point, "log_bytes": log_bytes,
            "bytes_per_entry": log_bytes / max(len(p.roundlog), 1),
            "checkpoint_bytes": ck_bytes,
            "log_per_step_over_checkpoint": log_bytes / m.total_steps / ck_bytes,
            "log_over_checkpoint": log_bytes / ck_bytes}


def diagnose(path: Path, device: torch.device, segments, use_log: bool = True) -> list[dict]:
    """Replay `segments` [(a, b)] on `device` with pol's step: per segment, the tensors that
    differ from the claim (how many elements) and the rounding-log problems."""
    from pol.datasets import load_training_set
    from pol.step import build_context, load_state, numerics, state_tensors, update
    from pol.step.exact import use_proof_log
    p = open_proof(path)
    spec = p.manifest.spec
    data = load_training_set(spec, None)
    out = []
    with numerics(spec, device):
        ctx = build_context(spec, device)
        for a, b in segments:
            load_state(ctx.model, ctx.optimizer, spec.optimizer.name, p.load_checkpoint(a))
            use_proof_log(ctx.exact, p.roundlog if use_log else None, a, b)
            for t in range(a, b):
                idx = p.batch(t)
                update(ctx, torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx]),
                       p.lrs[t].tolist(), t)
            end, mine = p.load_checkpoint(b), state_tensors(ctx.model, ctx.optimizer)
            differ = {k: int((mine[k].detach().cpu() != end[k]).sum()) for k in end
                      if not torch.equal(mine[k].detach().cpu(), end[k])}
            out.append({"segment": [a, b], "exact": not differ, "differ": differ,
                        "log_problems": [ctx.exact.problems[t]
                                         for t in ctx.exact.problems_in(a, b)]})
    return out


def _timed_steps(ctx, spec, train, device, steps: int) -> float:
    """Seconds per step of `update` over `steps` steps (after 3 untimed), synchronized."""
    import numpy as np

    from pol.step import epoch_order, update
    order = np.concatenate([epoch_order(spec.seed, e, len(train)) for e in range(64)])
    B = spec.batch_size

    def go(t0: int, n: int) -> None:
        for t in range(t0, t0 + n):
            idx = np.sort(order[(t * B) % (len(order) - B):][:B])
            update(ctx, torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx]),
                   [spec.optimizer.lr] * len(ctx.optimizer.param_groups), t)
    go(0, 3)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    go(3, steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def _sync_sites(run, device: torch.device) -> dict:
    """Host synchronizations while `run()` runs (CUDA's sync debug mode): how many, and where
    (file:line of pol's code, most frequent first)."""
    import traceback
    import warnings
    if device.type != "cuda":
        return {"count": None, "sites": []}
    sites: dict[str, int] = {}
    real = warnings.showwarning

    def seen(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "/pol/" in f.filename]
        where = f"{frames[-1].filename.split('/pol/')[-1]}:{frames[-1].lineno}" if frames \
            else f"{filename}:{lineno}"
        sites[where] = sites.get(where, 0) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = seen
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = real
    return {"count": sum(sites.values()),
            "sites": sorted(sites.items(), key=lambda kv: -kv[1])[:12]}


def breakdown(spec, train, device, steps: int) -> dict:
    """ms per step of pol's step (no proof written): float32; the same model and optimizer in
    float64 without rounding; exact mode recording its log, and replaying it; the part of it
    spent rounding (timed in a separate run, synchronized around each rounding point, which
    slows that run); and on a GPU the host synchronizations per exact step, with their sites."""
    import dataclasses

    from pol.step import build_context, make_optimizer, numerics
    out = {}
    with numerics(spec, device):
        ctx = build_context(spec, device)
        out["fp32_ms"] = 1e3 * _timed_steps(ctx, spec, train, device, steps)
        if PROFILE_OUT:
            _profile(f"{spec.model.arch}: float32, 2 steps",
                     lambda: _timed_steps(ctx, spec, train, device, 2), device)
        ctx.model.double()
        prep = ctx.prepare

        def prep64(x: torch.Tensor) -> torch.Tensor:
            x = prep(x)
            return x.double() if x.is_floating_point() else x
        ctx64 = dataclasses.replace(
            ctx, optimizer=make_optimizer(spec.optimizer, ctx.model.parameters()), prepare=prep64)
        out["fp64_ms"] = 1e3 * _timed_steps(ctx64, spec, train, device, steps)
        exact_spec = spec.with_(step=StepSpec(exact=True))
        ctxe = build_context(exact_spec, device)
        out["exact_ms"] = 1e3 * _timed_steps(ctxe, exact_spec, train, device, steps)
        out["exact_graphs"] = graphed.describe(ctxe)
        with _graphs_off():  # the same steps eagerly (on a GPU; the same run on a CPU)
            ctx_eager = build_context(exact_spec, device)
            out["exact_eager_ms"] = 1e3 * _timed_steps(ctx_eager, exact_spec, train, device, steps)
            if PROFILE_OUT:  # the kernels a graph would hide
                _profile(f"{spec.model.arch}: exact mode, recording, eager, 2 steps",
                         lambda: _timed_steps(ctx_eager, exact_spec, train, device, 2), device)
        entries = ctxe.exact.take()
        out["syncs_record"] = _sync_sites(
            lambda: _timed_steps(ctxe, exact_spec, train, device, 3), device)
        ctxe.exact.take()
        ctxr = build_context(exact_spec, device)
        ctxr.exact.replay(entries)
        out["exact_replay_ms"] = 1e3 * _timed_steps(ctxr, exact_spec, train, device, steps)
        out["exact_replay_graphs"] = graphed.describe(ctxr)
        # (read before the sync count below replays steps 0-2 again from a later state)
        out["replay_problems"] = len(ctxr.exact.problems)
        out["syncs_replay"] = _sync_sites(
            lambda: _timed_steps(ctxr, exact_spec, train, device, 3), device)
        if PROFILE_OUT:
            _profile(f"{spec.model.arch}: exact mode, recording, 2 steps",
                     lambda: _timed_steps(ctxe, exact_spec, train, device, 2), device)
            _profile(f"{spec.model.arch}: exact mode, replaying, 2 steps",
                     lambda: _timed_steps(ctxr, exact_spec, train, device, 2), device)
        out.update(_rounding_time(exact_spec, train, device, steps))
    return out


PROFILE_OUT: list[str] = []  # --profile-out FILE: torch.profiler tables appended there


def _profile(label: str, run, device: torch.device) -> None:
    """torch.profiler's op tables of `run()` (by self device time, then by self CPU time),
    appended to the --profile-out file."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run()
    ka = prof.key_averages()
    tables = []
    for key in (["self_cuda_time_total"] if device.type == "cuda" else []) + \
            ["self_cpu_time_total"]:
        try:
            tables.append(ka.table(sort_by=key, row_limit=20, max_name_column_width=70))
        except Exception as e:  # noqa: BLE001 - a key this torch does not know
            tables.append(f"({key}: {e})")
    with open(PROFILE_OUT[0], "a") as f:
        f.write(f"=== {label}\n" + "\n".join(tables) + "\n")


@contextlib.contextmanager
def _graphs_off():
    """Exact steps eagerly, not as CUDA graphs (`pol.step.graphed`), inside the block."""
    before = os.environ.get(graphed.ENV)
    os.environ[graphed.ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(graphed.ENV, None)
        else:
            os.environ[graphed.ENV] = before


def _rounding_time(exact_spec, train, device, steps: int) -> dict:
    """ms per step in `round_exact` (synchronized around each call: a run of its own)."""
    from pol.step import build_context
    from pol.step import exact as ex
    spent = {"round": 0.0, "calls": 0}
    real = ex.round_exact

    def timed(*a, **kw):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        r = real(*a, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent["round"] += time.perf_counter() - t0
        spent["calls"] += 1
        return r
    ex.round_exact = timed
    try:
        with _graphs_off():  # (synchronizing inside a CUDA graph capture fails it)
            ctxe = build_context(exact_spec, device)
            _timed_steps(ctxe, exact_spec, train, device, steps)
    finally:
        ex.round_exact = real
    return {"rounding_ms": 1e3 * spent["round"] / (steps + 3),
            "rounding_calls_per_step": spent["calls"] / (steps + 3)}


def verify_on(path: Path, device: torch.device, all_segments: bool) -> dict:
    t0 = time.perf_counter()
    r = verify(path, device=device.type, all_segments=all_segments)
    return {"valid": r.valid, "segments_exact": sum(s.exact for s in r.segments),
            "segments": len(r.segments), "seconds": time.perf_counter() - t0,
            "replayed": [[s.start, s.end] for s in r.segments],
            "not_exact": [[s.start, s.end] for s in r.segments if not s.exact],
            "failed": [f"{c.name}: {c.reason}" for c in r.checks if c.status == "fail"]}


def bench_task(name: str, args, device, vdevice, tmp: Path) -> dict:
    spec, train, _ = task_spec(name, args, device)
    if args.breakdown_only:
        return {"task": name, "device": device.type,
                "step_ms": breakdown(spec, train, device, args.breakdown)}
    warm = None
    if args.warmup_steps:  # the untimed warm-up runs: a shorter run of the same task
        short = argparse.Namespace(**{**vars(args), "gpt_steps": args.warmup_steps,
                                      "resnet_steps": args.warmup_steps, "epochs": 1})
        warm = task_spec(name, short, device)[:2]
    secs, runs, proof = train_times(spec, train, device, tmp, args.repeats, warm)
    step_ms = breakdown(spec, train, device, args.breakdown) if args.breakdown else None
    from pol.step import build_model
    row = {"task": name, "device": device.type, "verify_device": vdevice.type,
           "params": sum(q.numel() for q in build_model(spec.model).parameters()),
           "steps": open_proof(proof).manifest.total_steps, "k": spec.k,
           "threads": torch.get_num_threads(), "train_seconds": secs, "train_seconds_runs": runs,
           "exact_over_fp32": secs["exact"] / secs["fp32"]}
    if "bf16" in secs:
        row["exact_over_bf16"] = secs["exact"] / secs["bf16"]
    if step_ms:
        row["step_ms"] = step_ms
    row["log"] = log_sizes(proof)
    row["verify"] = verify_on(proof, vdevice, args.all)
    bad = row["verify"]["not_exact"]
    if bad:  # where exactness fails: which tensors, how many elements
        row["diagnosis"] = diagnose(proof, vdevice, bad[:args.diagnose])
    if args.no_log_control:
        segs = row["verify"]["replayed"][:args.diagnose]
        ctl = diagnose(proof, vdevice, segs, use_log=False)
        row["without_log_exact"] = f"{sum(c['exact'] for c in ctl)}/{len(ctl)}"
    shutil.rmtree(proof, ignore_errors=True)
    return row


def add_task_args(ap: argparse.ArgumentParser, **defaults) -> None:
    """The tasks' size arguments `task_spec` reads (`defaults` overrides their defaults, e.g.
    gpt_steps=30): shared with diag_graphed.py and bench_roundlog.py."""
    sizes = dict(epochs=2, resnet_steps=100, gpt_layers=4, gpt_heads=4, gpt_embd=128,
                 gpt_block=128, gpt_vocab=256, gpt_batch=16, gpt_steps=100, seed=0)
    sizes.update(defaults)
    helps = {"epochs": "digits-cnn epochs", "resnet_steps": "resnet20: steps (batch 128)"}
    for name, value in sizes.items():
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=value,
                        help=helps.get(name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="digits-cnn")
    ap.add_argument("--device", default="cpu", help="where the proofs are recorded: cpu, cuda")
    ap.add_argument("--verify-device", default="cpu", help="where the exact proof is verified")
    ap.add_argument("--k", type=int, default=0, help="checkpoint interval (0: each task's)")
    add_task_args(ap)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per mode (median)")
    ap.add_argument("--warmup-steps", type=int, default=0,
                    help="a GPU's untimed warm-up runs: this many steps (gpt, resnet20; "
                         "digits-cnn: one epoch) instead of the timed run's length (0)")
    ap.add_argument("--all", action="store_true", help="verify every segment (default: top-1 "
                    "per epoch and the hardened policy's random ones)")
    ap.add_argument("--diagnose", type=int, default=2, help="segments diagnosed / controlled")
    ap.add_argument("--no-log-control", action="store_true",
                    help="also replay the verified segments without the rounding log")
    ap.add_argument("--breakdown", type=int, default=0, metavar="STEPS",
                    help="also time STEPS steps of pol's step without a proof: float32, float64 "
                    "without rounding, exact mode and its rounding")
    ap.add_argument("--breakdown-only", action="store_true",
                    help="only the --breakdown (no proofs recorded or verified)")
    ap.add_argument("--profile-out", default=None, metavar="FILE",
                    help="with --breakdown: torch.profiler tables of 2 exact steps (recording, "
                    "replaying) appended to FILE")
    ap.add_argument("--conv-composite", action="store_true",
                    help="exact mode's GPU convolutions as autograd-differentiated torch "
                         "operations (pol.step.gemm_conv.COMPOSITE), not a custom Function")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.profile_out:
        PROFILE_OUT.append(args.profile_out)
    if args.conv_composite:
        from pol.step import gemm_conv
        gemm_conv.COMPOSITE = True
    device, vdevice = resolve_device(args.device), resolve_device(args.verify_device)
    tmp = Path(tempfile.mkdtemp(prefix="pol-exact-"))
    rows = []
    try:
        for name in args.tasks.split(","):
            row = bench_task(name, args, device, vdevice, tmp)
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
