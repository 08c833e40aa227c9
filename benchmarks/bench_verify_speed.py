"""Verification at the speed of training (issue 13): in one run, train a proof through pol's own
path (`pol.prover.trainer.train_task`, what `pol train` runs) and measure

  train      training time per step, inside the proof's recording (the Recorder, the writer's
             drain at the end included); trained twice per round: the second run is the A/A
             control (the noise floor of this machine, this run)
  replay     replay time per replayed step, `verify(all_segments=True)` (`pol verify --all`) and the
             default top-Q, in this process (same device, same threads as training), and its ratio
             to the training step
  wall       a whole in-process verification against (one read of the proof + its replayed steps
             at training speed): what is left that does not hide behind the replay
  cli        `pol verify` in a fresh process, top-Q and --all: seconds before the first replayed
             step (imports, data, its commitment, model, checkpoint 0, init), the replay, the
             rest; peak host RSS (and peak CUDA memory); the first call with an empty dataset
             cache, the others with it filled
  init       the init checks (KS, regeneration, rank correlation) in seconds per million
             parameters
  commit     the dataset commitment: leaves + root from scratch, and from the content-keyed cache

Rounds repeat the in-process measures (`--repeats`); figures are medians over rounds (min–max
kept in the JSON). An untimed training runs first (imports, allocator, first kernels).

    python benchmarks/bench_verify_speed.py --task digits-cnn --device cpu --threads 1 \
        --out benchmarks/results/2026-12-02-cpu-verify-speed
    python benchmarks/bench_verify_speed.py --task synthetic-resnet20 --n-train 512 --epochs 2 \
        --k 4 --device cpu --threads 1 --out DIR
    python benchmarks/bench_verify_speed.py --task cifar10-resnet20 --data DIR --epochs 1 \
        --k 100 --device cuda --out DIR          # on a GPU host (deterministic algorithms on)

`--profile` also writes a cProfile of one `pol verify --all` process and its `-X importtime`
summary next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD_FLAG = "--child-report"


# ----------------------------------------------------------------------------- child process
#
# `python bench_verify_speed.py --child-report FILE verify PROOF ...` runs `pol verify ...` with
# replay_segment timed: when the first replay started (wall clock, comparable with the parent's),
# the seconds spent replaying and the steps replayed; at exit the peak CUDA memory.

def _child(report: str, argv: list[str]) -> int:
    t_enter = time.time()
    import torch

    import pol.verifier.parallel as par
    from pol.cli import main

    cuda = torch.cuda.is_available()
    acc = {"first_replay_at": None, "replay_s": 0.0, "steps": 0, "segments": 0}
    orig = par.replay_segment

    def timed(ctx, proof, data, leaves, names, a, b, *rest, **kw):
        if cuda and ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        if acc["first_replay_at"] is None:
            acc["first_replay_at"] = time.time()
            acc["first_replay_cpu"] = time.process_time()
        out = orig(ctx, proof, data, leaves, names, a, b, *rest, **kw)
        if cuda and ctx.device.type == "cuda":
            torch.cuda.synchronize()
        acc["replay_s"] += time.perf_counter() - t
        acc["steps"] += b - a
        acc["segments"] += 1
        acc["last_replay_end_at"] = time.time()
        return out

    par.replay_segment = timed
    rc = 0
    try:
        main(argv, standalone_mode=False)
    except SystemExit as e:
        rc = int(e.code or 0)
    acc.update(enter_at=t_enter, end_at=time.time(), rc=rc,
               cuda_peak_bytes=(torch.cuda.max_memory_allocated()
                                if cuda and torch.cuda.is_initialized() else None))
    Path(report).write_text(json.dumps(acc))
    return rc


def run_cli(args: list[str], env: dict[str, str], profile: str | None = None) -> dict:
    """One `pol verify ...` process: wall seconds from spawn to the first replayed step, to the
    end; replay seconds; peak RSS (MiB)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        rep = f.name
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += [__file__, CHILD_FLAG, rep, *args]
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    t_end = time.time()
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    try:
        acc = json.loads(Path(rep).read_text())
    except (OSError, ValueError):
        raise SystemExit(f"pol {' '.join(args)} failed (exit {p.returncode}):\n{err[-2000:]}")
    finally:
        Path(rep).unlink(missing_ok=True)
    first = acc["first_replay_at"]
    return {"exit": acc["rc"], "wall_s": t_end - t0,
            "before_first_replay_s": (first - t0) if first else None,
            "python_start_s": acc["enter_at"] - t0,
            "replay_s": acc["replay_s"], "replayed_steps": acc["steps"],
            "segments": acc["segments"], "rest_s": t_end - t0 - acc["replay_s"],
            "after_last_replay_s": (acc["end_at"] - acc["last_replay_end_at"]
                                    if first else None),
            "process_exit_s": t_end - acc["end_at"],
            # CPU seconds of the process (steadier than wall time on a shared machine)
            "cpu_before_first_replay_s": acc.get("first_replay_cpu"),
            "cpu_total_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024, "cuda_peak_mib":
            acc["cuda_peak_bytes"] / 2**20 if acc["cuda_peak_bytes"] else None}


# ----------------------------------------------------------------------------- in-process measures

def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


class ReplayTimer:
    """Times every replay_segment call while installed: wall seconds (synchronized on a GPU) and
    this process's CPU seconds (on a shared CPU machine the steadier of the two)."""

    def __init__(self, device: str):
        import pol.verifier.parallel as par
        self.par, self.orig, self.device = par, par.replay_segment, device
        self.seconds, self.cpu_seconds, self.steps = 0.0, 0.0, 0

    def __enter__(self):
        def timed(ctx, proof, data, leaves, names, a, b, *rest, **kw):
            _sync(self.device)
            t, c = time.perf_counter(), time.process_time()
            out = self.orig(ctx, proof, data, leaves, names, a, b, *rest, **kw)
            _sync(self.device)
            self.seconds += time.perf_counter() - t
            self.cpu_seconds += time.process_time() - c
            self.steps += b - a
            return out
        self.par.replay_segment = timed
        return self

    def __exit__(self, *exc):
        self.par.replay_segment = self.orig


class LoopTimer:
    """The CPU seconds of the trainer's loop (`run_loop`: every step, recorded; the writer's
    thread included)."""

    def __enter__(self):
        import pol.prover.trainer as tr
        self.tr, self.orig, self.cpu_seconds = tr, tr.run_loop, 0.0

        def timed(*a, **kw):
            c = time.process_time()
            try:
                return self.orig(*a, **kw)
            finally:
                self.cpu_seconds += time.process_time() - c
        tr.run_loop = timed
        return self

    def __exit__(self, *exc):
        self.tr.run_loop = self.orig


def train(a, out: Path) -> dict:
    from pol.prover.trainer import train_task
    with LoopTimer() as lt:
        r = train_task(a.task, out, overwrite=True, **_task_kwargs(a))
    return {"seconds": r.train_seconds, "steps": r.total_steps,
            "ms_per_step": 1000 * r.train_seconds / r.total_steps,
            "cpu_ms_per_step": 1000 * lt.cpu_seconds / r.total_steps, "root": r.root_digest}


def _task_kwargs(a) -> dict:
    kw = {"device": a.device, "seed": 0}
    for name in ("epochs", "k", "batch_size"):
        if getattr(a, name) is not None:
            kw[name] = getattr(a, name)
    if a.n_train is not None:
        kw["dataset_params"] = {"seed": 0, "n_train": a.n_train, "n_test": 64}
    if a.data is not None:
        kw["data_dir"] = a.data
    return kw


def verify_in_process(a, proof: Path, all_segments: bool) -> dict:
    from pol.verifier import verify
    with ReplayTimer(a.device) as rt:
        _sync(a.device)
        t = time.perf_counter()
        rep = verify(proof, all_segments=all_segments, q=a.q, device=a.device, data=a.data,
                     entropy=b"bench", policy=a.policy)
        _sync(a.device)
        wall = time.perf_counter() - t
    if not rep.valid:
        raise SystemExit(f"the honest proof did not verify:\n{rep.render()}")
    return {"wall_s": wall, "replay_s": rt.seconds, "replayed_steps": rt.steps,
            "ms_per_step": 1000 * rt.seconds / max(rt.steps, 1),
            "cpu_ms_per_step": 1000 * rt.cpu_seconds / max(rt.steps, 1)}


def read_proof(proof: Path) -> float:
    """One read of the proof as the verifier makes it: manifest and per-step arrays, every
    checkpoint read, digested and parsed once."""
    from pol.proof.reader import open_proof
    t = time.perf_counter()
    p = open_proof(proof)
    for step in p.manifest.checkpoints:
        p.load_checkpoint(step)
    return time.perf_counter() - t


def init_checks(a, proof: Path) -> dict:
    """Seconds per million parameters of each init check, on this proof's W_0 and W_T (CPU)."""
    import torch

    from pol.proof.reader import open_proof
    from pol.step import build_context
    from pol.verifier import hardened as hd
    from pol.verifier.checks import init as ic
    from pol.verifier.session import param_names
    p = open_proof(proof)
    spec = p.manifest.spec
    ctx = build_context(spec, torch.device(a.device))
    names = param_names(ctx.model)
    w0, wT = p.load_checkpoint(0), p.load_checkpoint(p.manifest.checkpoints[-1])
    mparams = sum(w0[n].numel() for n in names) / 1e6
    out = {"mparams": mparams}
    for label, fn in (("ks", lambda: ic.initialization(ctx.model, spec, w0, names, 0.01)),
                      ("regeneration_reuse", lambda: ic.seeded_init_equal(ctx.model, w0, names)),
                      ("regeneration_rebuild",
                       lambda: hd.regenerated_init_matches(spec, w0, names)),
                      ("rank_correlation", lambda: ic.init_rank_correlation(w0, wT, names))):
        t = time.perf_counter()
        fn()
        out[f"{label}_s"] = time.perf_counter() - t
        out[f"{label}_s_per_mparam"] = out[f"{label}_s"] / mparams
    return out


def commitment(a, proof: Path, cache: Path) -> dict:
    """The dataset commitment's leaves and root: from scratch, then from the disk cache."""
    from pol.proof import hashing
    from pol.proof.reader import open_proof
    from pol.verifier import session
    from pol.verifier.session import load_verifier_data
    # older trees (before the cache): leaves and root from scratch every time
    dataset_leaves = getattr(session, "dataset_leaves", lambda d: (
        hashing.sample_leaves(d.x, d.y), None, ""))
    spec = open_proof(proof).manifest.spec
    data = load_verifier_data(spec, a.data)
    shutil.rmtree(cache, ignore_errors=True)
    old = os.environ.get("POL_CACHE_DIR")
    os.environ["POL_CACHE_DIR"] = str(cache)
    try:
        out = {}
        for label in ("cold", "cached"):
            hashing._cache.clear()  # the in-memory cache of this process: measure the disk's
            t = time.perf_counter()
            leaves, root, _ = dataset_leaves(data)
            if root is None:
                root = hashing.merkle_root(leaves)
            out[f"{label}_s"] = time.perf_counter() - t
        out["samples"] = len(data)
        return out
    finally:
        if old is None:
            os.environ.pop("POL_CACHE_DIR", None)
        else:
            os.environ["POL_CACHE_DIR"] = old


# ----------------------------------------------------------------------------- the run

def _med(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs} \
        if xs else {"median": None}


def rounds(a, work: Path) -> dict:
    rows = []
    train(a, work / "warmup")  # untimed: imports, allocator, first kernels
    for r in range(a.repeats):
        proof = work / f"proof{r}"
        row = {"train": train(a, proof)}
        row["verify_all"] = verify_in_process(a, proof, True)
        row["verify_topq"] = verify_in_process(a, proof, False)
        row["train_aa"] = train(a, work / f"aa{r}")  # A/A: the same training again
        row["read_s"] = read_proof(proof)
        rows.append(row)
        t = row["train"]["ms_per_step"]
        print(f"round {r + 1}: train {t:.2f} ms/step (A/A {row['train_aa']['ms_per_step']:.2f}), "
              f"replay --all {row['verify_all']['ms_per_step']:.2f}, "
              f"top-Q {row['verify_topq']['ms_per_step']:.2f}", flush=True)
    return {"rounds": rows, "proof": str(work / "proof0")}


def summarize(res: dict) -> dict:
    rows = res["rounds"]
    s: dict = {}
    s["train_ms_per_step"] = _med([r["train"]["ms_per_step"] for r in rows])
    s["train_aa_ratio"] = _med([r["train_aa"]["ms_per_step"] / r["train"]["ms_per_step"]
                                for r in rows])
    s["train_cpu_ms_per_step"] = _med([r["train"]["cpu_ms_per_step"] for r in rows])
    s["train_aa_ratio_cpu"] = _med([r["train_aa"]["cpu_ms_per_step"]
                                    / r["train"]["cpu_ms_per_step"] for r in rows])
    for mode in ("all", "topq"):
        key = f"verify_{mode}"
        s[f"replay_{mode}_ms_per_step"] = _med([r[key]["ms_per_step"] for r in rows])
        # the ratio of each round to the mean of its two trainings (either alone is as noisy)
        s[f"replay_{mode}_over_train"] = _med([
            r[key]["ms_per_step"] / ((r["train"]["ms_per_step"] + r["train_aa"]["ms_per_step"])
                                     / 2) for r in rows])
        s[f"replay_{mode}_over_train_cpu"] = _med([
            r[key]["cpu_ms_per_step"] / ((r["train"]["cpu_ms_per_step"]
                                          + r["train_aa"]["cpu_ms_per_step"]) / 2) for r in rows])
        s[f"wall_{mode}_s"] = _med([r[key]["wall_s"] for r in rows])
        s[f"wall_{mode}_over_read_plus_train_steps"] = _med([
            r[key]["wall_s"] / (r["read_s"] + r[key]["replayed_steps"]
                                * r["train"]["ms_per_step"] / 1000) for r in rows])
        s[f"replayed_steps_{mode}"] = rows[0][key]["replayed_steps"]
    s["read_s"] = _med([r["read_s"] for r in rows])
    return s


def bytecode_cached() -> bool:
    """Whether torch's compiler stack has compiled bytecode to import (else every process
    compiles its sources first: seconds, on hosts whose packages ship no .pyc and forbid
    writing them, e.g. PYTHONDONTWRITEBYTECODE=1)."""
    import importlib.util
    spec = importlib.util.find_spec("torch._dynamo.symbolic_convert")
    try:
        return spec is not None and os.path.exists(importlib.util.cache_from_source(spec.origin))
    except (NotImplementedError, ValueError):
        return False


def cli_runs(a, proof: str, cache: Path, out: Path) -> dict:
    env = {**os.environ, "POL_CACHE_DIR": str(cache)}
    shutil.rmtree(cache, ignore_errors=True)
    base = ["verify", proof, "--device", a.device, "--policy", a.policy, "--q", str(a.q)]
    if a.data:
        base += ["--data", a.data]
    if a.pycache:  # compiled bytecode kept for every process after the first (untimed) one
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(a.pycache).resolve())
        run_cli(base, env)
        shutil.rmtree(cache, ignore_errors=True)
    elif not bytecode_cached():
        print("note: torch's modules have no compiled bytecode here; every pol process compiles "
              "their sources (seconds). --pycache DIR measures with a bytecode cache", flush=True)
    runs = {"topq_cold_cache": run_cli(base, env)}
    for r in range(a.cli_repeats):
        runs[f"topq_{r}"] = run_cli(base, env)
        runs[f"all_{r}"] = run_cli(base + ["--all"], env)
    if a.profile:
        runs["all_profiled"] = run_cli(base + ["--all"], env, str(out / "verify_all.prof"))
        _write_profiles(out, base + ["--all"], env)
    return runs


def _write_profiles(out: Path, args: list[str], env: dict) -> None:
    import pstats
    with open(out / "profile_verify_all.txt", "w") as f:
        pstats.Stats(str(out / "verify_all.prof"), stream=f).sort_stats("cumulative") \
            .print_stats(50)
    (out / "verify_all.prof").unlink()
    p = subprocess.run([sys.executable, "-X", "importtime", __file__, CHILD_FLAG, os.devnull,
                        *args], env=env, capture_output=True, text=True)
    rows = []
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            _, cum, name = line.split("|")
            rows.append((int(cum), name.rstrip()))
    top = sorted(rows, reverse=True)[:60]
    (out / "importtime_verify_all.txt").write_text(
        "cumulative µs | module (indented under its importer)\n"
        + "\n".join(f"{c:>12} | {n}" for c, n in top) + "\n")


def cli_summary(runs: dict) -> dict:
    warm_topq = [v for k, v in runs.items() if k.startswith("topq_") and k[5:].isdigit()]
    warm_all = [v for k, v in runs.items() if k.startswith("all_") and k[4:].isdigit()]
    out = {"cold_cache_topq_before_first_replay_s": runs["topq_cold_cache"]
           ["before_first_replay_s"]}
    for label, rs in (("topq", warm_topq), ("all", warm_all)):
        for key in ("before_first_replay_s", "wall_s", "replay_s", "rest_s",
                    "after_last_replay_s", "process_exit_s", "cpu_before_first_replay_s",
                    "cpu_total_s", "peak_rss_mib", "cuda_peak_mib"):
            out[f"{label}_{key}"] = _med([r[key] for r in rs])
        steps = rs[0]["replayed_steps"]
        out[f"{label}_replay_ms_per_step"] = _med([1000 * r["replay_s"] / steps for r in rs])
    return out


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def print_table(s: dict, cli: dict, init: dict, com: dict) -> None:
    def m(d):
        return d.get("median") if isinstance(d, dict) else d

    def rng(d):
        return f"{_f(d['min'])}–{_f(d['max'])}" if d.get("median") is not None else "–"
    rows = [
        ("training, ms/step (inside the recording)", _f(m(s["train_ms_per_step"]), ".2f"),
         rng(s["train_ms_per_step"])),
        ("A/A: training again ÷ training", _f(m(s["train_aa_ratio"])), rng(s["train_aa_ratio"])),
        ("training, CPU ms/step (this process)", _f(m(s["train_cpu_ms_per_step"]), ".2f"),
         rng(s["train_cpu_ms_per_step"])),
        ("A/A in CPU time", _f(m(s["train_aa_ratio_cpu"])), rng(s["train_aa_ratio_cpu"])),
        (f"replay --all, ms/step ({s['replayed_steps_all']} steps)",
         _f(m(s["replay_all_ms_per_step"]), ".2f"), rng(s["replay_all_ms_per_step"])),
        ("replay --all ÷ training", _f(m(s["replay_all_over_train"])),
         rng(s["replay_all_over_train"])),
        ("replay --all ÷ training, CPU time", _f(m(s["replay_all_over_train_cpu"])),
         rng(s["replay_all_over_train_cpu"])),
        (f"replay top-Q, ms/step ({s['replayed_steps_topq']} steps)",
         _f(m(s["replay_topq_ms_per_step"]), ".2f"), rng(s["replay_topq_ms_per_step"])),
        ("replay top-Q ÷ training", _f(m(s["replay_topq_over_train"])),
         rng(s["replay_topq_over_train"])),
        ("replay top-Q ÷ training, CPU time", _f(m(s["replay_topq_over_train_cpu"])),
         rng(s["replay_topq_over_train_cpu"])),
        ("one read of the proof, s", _f(m(s["read_s"])), rng(s["read_s"])),
        ("verify --all wall ÷ (read + steps at training speed)",
         _f(m(s["wall_all_over_read_plus_train_steps"])),
         rng(s["wall_all_over_read_plus_train_steps"])),
        ("verify top-Q wall ÷ (read + steps at training speed)",
         _f(m(s["wall_topq_over_read_plus_train_steps"])),
         rng(s["wall_topq_over_read_plus_train_steps"])),
    ]
    if cli:
        rows += [
            ("pol verify: s before the first replayed step (top-Q, cached data)",
             _f(m(cli["topq_before_first_replay_s"]), ".2f"), rng(cli["topq_before_first_replay_s"])),
            ("  the same, first call (empty dataset cache)",
             _f(cli["cold_cache_topq_before_first_replay_s"], ".2f"), ""),
            ("  the same, CPU seconds of the process",
             _f(m(cli["topq_cpu_before_first_replay_s"]), ".2f"),
             rng(cli["topq_cpu_before_first_replay_s"])),
            ("pol verify --all: s before the first replayed step",
             _f(m(cli["all_before_first_replay_s"]), ".2f"), rng(cli["all_before_first_replay_s"])),
            ("pol verify --all: wall / replay / rest, s",
             f"{_f(m(cli['all_wall_s']), '.2f')} / {_f(m(cli['all_replay_s']), '.2f')} / "
             f"{_f(m(cli['all_rest_s']), '.2f')}", ""),
            ("pol verify --all: s after the last replay (checks, report) / process exit",
             f"{_f(m(cli['all_after_last_replay_s']), '.2f')} / "
             f"{_f(m(cli['all_process_exit_s']), '.2f')}", ""),
            ("pol verify --all: replay ms/step", _f(m(cli["all_replay_ms_per_step"]), ".2f"),
             rng(cli["all_replay_ms_per_step"])),
            ("pol verify: peak RSS MiB (top-Q / --all)",
             f"{_f(m(cli['topq_peak_rss_mib']), '.0f')} / {_f(m(cli['all_peak_rss_mib']), '.0f')}",
             ""),
            ("pol verify: peak CUDA MiB (top-Q / --all)",
             f"{_f(m(cli['topq_cuda_peak_mib']), '.0f')} / {_f(m(cli['all_cuda_peak_mib']), '.0f')}",
             ""),
        ]
    rows += [(f"init checks, s per M params ({init['mparams']:.3f} M): KS / regeneration "
              "(reused model / rebuilt) / rank correlation",
              f"{_f(init['ks_s_per_mparam'])} / {_f(init['regeneration_reuse_s_per_mparam'])} / "
              f"{_f(init['regeneration_rebuild_s_per_mparam'])} / "
              f"{_f(init['rank_correlation_s_per_mparam'])}", ""),
             (f"dataset commitment ({com['samples']} samples): from scratch / cached, s",
              f"{_f(com['cold_s'], '.4f')} / {_f(com['cached_s'], '.4f')}", "")]
    w = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{w}}  {'median':>22}  min–max")
    for name, val, spread in rows:
        print(f"{name:<{w}}  {val:>22}  {spread}")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="digits-cnn", help="a built-in task (pol tasks)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--k", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--n-train", type=int, help="synthetic datasets: training samples")
    ap.add_argument("--data", help="local dataset directory (CIFAR tasks)")
    ap.add_argument("--threads", type=int, help="CPU intra-op threads (training records them; "
                    "the verifier replays with the recorded number)")
    ap.add_argument("--q", type=int, default=1)
    ap.add_argument("--policy", default="hardened", choices=["hardened", "paper"])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the in-process measures")
    ap.add_argument("--cli-repeats", type=int, default=2, help="pol verify processes per mode "
                    "(after one with an empty dataset cache)")
    ap.add_argument("--no-cli", action="store_true", help="skip the pol verify processes")
    ap.add_argument("--pycache", help="pol verify processes keep compiled bytecode here "
                    "(PYTHONPYCACHEPREFIX; filled by an untimed call first): for hosts whose "
                    "packages ship no .pyc and PYTHONDONTWRITEBYTECODE=1 is set")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile one pol verify --all and record its imports")
    ap.add_argument("--work", help="where proofs are written (default: a temporary directory)")
    ap.add_argument("--out", help="write the JSON (and profiles) into this directory")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    a = parse(argv)
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work or tempfile.mkdtemp(prefix="pol-bench-verify-"))
    try:
        res = rounds(a, work)
        s = summarize(res)
        init = init_checks(a, Path(res["proof"]))
        com = commitment(a, Path(res["proof"]), work / "cache-commitment")
        runs = {} if a.no_cli else cli_runs(a, res["proof"], work / "cache",
                                            out or work)
        cli = cli_summary(runs) if runs else {}
        print_table(s, cli, init, com)
        if out:
            doc = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                   "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": _machine(a),
                   "args": vars(a), "bytecode_cached": bytecode_cached(), "summary": s, "cli_summary": cli, "init_checks": init,
                   "commitment": com, "cli_runs": runs, "rounds": res["rounds"]}
            name = f"verify_speed_{a.task}_{a.device}.json"
            (out / name).write_text(json.dumps(doc, indent=1, default=str) + "\n")
            print(f"\nwrote {out / name}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def _machine(a) -> dict:
    import torch
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_avg": os.getloadavg()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if a.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == CHILD_FLAG:
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    main()
