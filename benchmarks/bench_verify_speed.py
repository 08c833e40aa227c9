"""Verification at the speed of training (issue 13): in one run, train a proof through pol's own
path (`pol.prover.trainer.train_task`, what `pol train` runs; with model overrides, the same
`build_spec` + `train_spec` with the spec's model arguments changed) and measure

  train      training time per step, inside the proof's recording (the Recorder, the writer's
             drain at the end included); trained twice per round: the second run is the A/A
             control (the noise floor of this machine, this run)
  replay     replay time per replayed step, `verify(all_segments=True)` (`pol verify --all`) and the
             default top-Q, in this process (same device, same threads as training), and its ratio
             to the training step
  wall       a whole in-process verification against (one read of the proof + its replayed steps
             at training speed): what is left that does not hide behind the replay
  pass       of each in-process verification: the checkpoint pass's seconds outside the replays
             (what they wait for) and its digests' seconds (on the reader thread on a GPU)
  memory     of each in-process verification: peak host RSS (sampled; and its growth over the
             verification's start) and peak CUDA memory (allocated, reserved)
  cli        `pol verify` in a fresh process, top-Q and --all: seconds before the first replayed
             step (imports, data, its commitment, model, checkpoint 0, init), the replay, the
             rest; peak host RSS (and peak CUDA memory); the first call with an empty dataset
             cache, the others with it filled
  init       the init checks (KS, regeneration, rank correlation) in seconds per million
             parameters
  commit     the dataset commitment: leaves + root from scratch, and from the content-keyed cache

Rounds repeat the in-process measures (`--repeats`); figures are medians over rounds (min–max
kept in the JSON). An untimed training runs first (imports, allocator, first kernels), then an untimed `verify
--all` of its proof (profiled with `--torch-profile`; none with `--no-verify-warmup`): both sides
are timed warm, and the first verification's replay rate is printed and kept as the process's
one-off cost (`first_verify_all` in the JSON; a `pol verify` process pays it, as `pol train` pays
its own: the CLI measures show both).

`--torch-profile`: torch.profiler (CPU, and CUDA on a GPU) over `--profile-steps` steps of that
training and over one replayed segment (`--profile-replay-steps`): the top ops by self device
time (self CPU time on a CPU), the top kernels, and where the window's time went (device busy
and idle; the host inside torch ops, outside them, in synchronize calls), printed, in the JSON,
and in torch_profile_*.txt. `--budget-s`: every phase after the first round runs only where its
estimate fits; phase times and skips are printed and kept in the JSON.

    python benchmarks/bench_verify_speed.py --task digits-cnn --device cpu --threads 1 \
        --out benchmarks/results/2026-12-02-cpu-verify-speed
    python benchmarks/bench_verify_speed.py --task synthetic-resnet20 --n-train 512 --epochs 2 \
        --k 4 --device cpu --threads 1 --out DIR

On a GPU host (deterministic algorithms on, pol's default there; no internet: `--write-cifar`
writes a CIFAR-10 binary directory of pol's synthetic set; the 114M proof is ~3 GB per copy,
under `--work`):

    python benchmarks/bench_verify_speed.py --task cifar10-resnet20 --write-cifar /tmp/cifar10 \
        --epochs 1 --k 100 --device cuda --repeats 1 --cli-repeats 1 --torch-profile \
        --pycache /tmp/pycache --budget-s 160 --work /tmp/bvs-r20 --out DIR
    python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
        --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
        --device cuda --repeats 1 --no-cli --no-topq --torch-profile --profile-steps 2 \
        --budget-s 200 --work /tmp/bvs-gpt --out DIR

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
    dyn = sys.modules.get("torch._dynamo")  # pol's stand-in, the real module, or none
    acc.update(enter_at=t_enter, end_at=time.time(), rc=rc,
               dynamo=None if dyn is None else type(dyn).__name__,
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
            "process_exit_s": t_end - acc["end_at"], "dynamo": acc.get("dynamo"),
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


class PassTimer:
    """The checkpoint pass's own share of a verification: its wall seconds outside the replays it
    starts (what the replays wait for: reads, and the digests where they run in turn) and the
    digests' seconds (`CheckpointDigester`: finite vector, distances, optimizer state; on the
    reader thread where the pass reads ahead, a GPU's case). `replays`: the ReplayTimer."""

    def __init__(self, replays: ReplayTimer):
        import pol.verifier.core as core
        self.core, self.replays = core, replays
        self.digester = getattr(core, "CheckpointDigester", None)  # older pol: none
        self.pass_s, self.digest_s = 0.0, 0.0

    def __enter__(self):
        self.orig_pass = self.core._checkpoint_pass

        def timed_pass(*a, **kw):
            t, r = time.perf_counter(), self.replays.seconds
            try:
                return self.orig_pass(*a, **kw)
            finally:
                self.pass_s += time.perf_counter() - t - (self.replays.seconds - r)
        self.core._checkpoint_pass = timed_pass
        if self.digester is not None:
            self.orig_call = self.digester.__call__

            def timed_digest(dg, *a, **kw):
                t = time.perf_counter()
                try:
                    return self.orig_call(dg, *a, **kw)
                finally:
                    self.digest_s += time.perf_counter() - t
            self.digester.__call__ = timed_digest
        return self

    def __exit__(self, *exc):
        self.core._checkpoint_pass = self.orig_pass
        if self.digester is not None:
            self.digester.__call__ = self.orig_call


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
    with LoopTimer() as lt:
        r = _train(a, out)
    return {"seconds": r.train_seconds, "steps": r.total_steps,
            "ms_per_step": 1000 * r.train_seconds / r.total_steps,
            "cpu_ms_per_step": 1000 * lt.cpu_seconds / r.total_steps, "root": r.root_digest}


def _train(a, out: Path):
    """`pol train`'s path (`train_task`); with model overrides, the same steps with the task's
    spec changed in its model arguments (`build_spec`, then `train_spec`, as bench_scale does):
    the proof's spec records them, so `pol verify` rebuilds this model."""
    from pol.prover.trainer import train_task
    if not a.model_kw:
        return train_task(a.task, out, overwrite=True, **_task_kwargs(a))
    from dataclasses import replace

    from pol.prover.trainer import default_deterministic, default_exact, train_spec
    from pol.registry import resolve_device
    from pol.tasks import build_spec
    kw = _task_kwargs(a)
    dev = resolve_device(kw.pop("device"))
    exact = default_exact(kw.pop("exact"), a.task, dev.type)
    spec, tr, te = build_spec(a.task, device=dev.type,
                              deterministic=default_deterministic(None, dev.type), exact=exact,
                              **kw)
    spec = spec.with_(model=replace(spec.model, kwargs={**spec.model.kwargs, **a.model_kw}))
    return train_spec(spec, tr, te, out, device=dev, overwrite=True)


def _task_kwargs(a) -> dict:
    kw = {"device": a.device, "seed": 0,
          "exact": {"auto": None, "on": True, "off": False}[a.exact]}
    for name in ("epochs", "k", "batch_size"):
        if getattr(a, name) is not None:
            kw[name] = getattr(a, name)
    if a.dataset_params:
        kw["dataset_params"] = a.dataset_params
    if a.data is not None:
        kw["data_dir"] = a.data
    return kw


def settings(items, flag: str) -> dict:
    """KEY=VALUE items: VALUE read as JSON where it parses, else a string (pol's CLI parser)."""
    from pol.cli.options import parse_settings
    from pol.errors import ConfigError
    try:
        return parse_settings(tuple(items or ()), flag)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def dataset_params(a) -> dict:
    """--n-train (with seed 0 and 64 test samples, as before), then --dataset-arg."""
    dp = {"seed": 0, "n_train": a.n_train, "n_test": 64} if a.n_train is not None else {}
    dp.update(settings(a.dataset_arg, "--dataset-arg"))
    return dp


def model_overrides(a, dp: dict) -> dict:
    """The model arguments changed from the task's: --gpt-size's preset (bench_scale.SIZES), the
    dataset's block_size / vocab_size where the task's model takes them, then --model-arg."""
    from pol.tasks import get_task
    kw: dict = {}
    if a.gpt_size:
        here = str(Path(__file__).resolve().parent)
        if here not in sys.path:  # imported from elsewhere (tests)
            sys.path.insert(0, here)
        from bench_scale import SIZES
        if a.gpt_size not in SIZES:
            raise SystemExit(f"--gpt-size {a.gpt_size}: one of {', '.join(SIZES)}")
        kw.update(SIZES[a.gpt_size])
    task_kw = get_task(a.task).model_kwargs
    kw.update({key: dp[key] for key in ("block_size", "vocab_size") if key in task_kw and key in dp})
    kw.update(settings(a.model_arg, "--model-arg"))
    return kw


def write_cifar10(folder: Path, n_train: int = 50_000, n_test: int = 10_000) -> Path:
    """A CIFAR-10 binary directory (data_batch_1..5.bin, test_batch.bin; a record is the label
    byte, then the R, G, B planes) holding pol's synthetic-cifar set (seed 0), for hosts without
    the real files and no internet. Files already there are kept as they are."""
    import numpy as np

    from pol.datasets import load_dataset
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    if all((folder / n).is_file() for n in names):
        return folder
    if n_train < 5 or n_test < 1:
        raise SystemExit("--write-cifar-n: at least 5 training samples")
    tr, te = load_dataset("synthetic-cifar", {"seed": 0, "n_train": n_train, "n_test": n_test})
    folder.mkdir(parents=True, exist_ok=True)

    def records(x, y):
        return np.concatenate([y.astype(np.uint8)[:, None],
                               x.transpose(0, 3, 1, 2).reshape(len(y), -1)], axis=1)
    for name, idx in zip(names, np.array_split(np.arange(n_train), 5)):
        records(tr.x[idx], tr.y[idx]).tofile(folder / name)
    records(te.x, te.y).tofile(folder / names[5])
    return folder


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MemWatch:
    """While installed: this process's peak host RSS (sampled every 20 ms on a thread, from
    /proc; Linux) and, on a GPU, the CUDA allocator's peak (its peak counters reset on entry)."""

    def __init__(self, device: str):
        self.device, self.peak, self.out = device, None, {}

    def _sample(self) -> None:
        r = _rss_bytes()
        if r is not None and (self.peak is None or r > self.peak):
            self.peak = r

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self):
        import threading

        import torch
        self.before = _rss_bytes()
        self._sample()
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.cuda_before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import resource

        import torch
        self._stop.set()
        self._thread.join()
        self._sample()
        mib = 2.0 ** -20
        o = self.out
        if self.peak is not None:
            o.update(peak_rss_mib=self.peak * mib, rss_before_mib=self.before * mib,
                     rss_growth_mib=(self.peak - self.before) * mib)
        o["process_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.device == "cuda":
            torch.cuda.synchronize()
            o.update(cuda_before_mib=self.cuda_before * mib,
                     cuda_peak_mib=torch.cuda.max_memory_allocated() * mib,
                     cuda_reserved_peak_mib=torch.cuda.max_memory_reserved() * mib)


def verify_in_process(a, proof: Path, all_segments: bool) -> dict:
    from pol.verifier import verify
    with ReplayTimer(a.device) as rt, PassTimer(rt) as pt, MemWatch(a.device) as mw:
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
            "cpu_ms_per_step": 1000 * rt.cpu_seconds / max(rt.steps, 1), "memory": mw.out,
            "pass_outside_replays_s": pt.pass_s,
            "digest_s": pt.digest_s if pt.digester is not None else None}


# ----------------------------------------------------------------------------- torch.profiler
#
# `--torch-profile`: a few training steps (inside the untimed warm-up training) and the replay of
# one segment (inside an untimed `verify --all` of the warm-up proof, which also warms up the
# verifier's path for the timed rounds), each under torch.profiler with CPU (and CUDA) activities.

TOP_OPS, TOP_KERNELS = 25, 12
# torch turns each profiled event into Python objects when the window is read: ~40-80 µs and a few
# KiB per event (500,000 events: 78 s and 2.6 GB on a 2-core CPU). One step of the 16-layer GPT
# is ~14,000 events on a CPU (more with kernels and launches on a GPU), a segment's load and end
# ~50,000: windows are kept to about this many events.
PROFILE_EVENTS = 60_000


class Window:
    """One torch.profiler window, started and stopped by hand (synchronized on a GPU)."""

    def __init__(self, device: str):
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        self.prof, self.device, self.on, self.window_s = profile(activities=acts), device, False, 0.0

    def start(self) -> None:
        self.prof.start()
        _sync(self.device)
        self.on, self.t0 = True, time.perf_counter()

    def stop(self) -> None:
        if self.on:
            _sync(self.device)
            self.window_s = time.perf_counter() - self.t0
            self.prof.stop()
            self.on = False


def train_profiled(a, out: Path) -> dict:
    """The warm-up training, with steps (skip, skip + n] under the profiler."""
    import pol.prover.recorder as rc
    orig, w, n = rc.Recorder.step, Window(a.device), [0]
    a.profile_skip = max(a.profile_skip, 1)  # the window opens after a recorded step

    def step(self, *args, **kw):
        r = orig(self, *args, **kw)
        n[0] += 1
        if n[0] == a.profile_skip:
            w.start()
        elif n[0] == a.profile_skip + a.profile_steps:
            w.stop()
        return r
    rc.Recorder.step = step
    try:
        train(a, out)
    finally:
        rc.Recorder.step = orig
        w.stop()
    steps = max(0, min(n[0], a.profile_skip + a.profile_steps) - a.profile_skip)
    if not steps:
        return {"note": f"no step profiled: the run has {n[0]} steps, --profile-skip "
                        f"{a.profile_skip}"}
    return profile_summary([("steps", w)], f"training, steps {a.profile_skip + 1}–"
                           f"{a.profile_skip + steps}", steps, a.device)


def verify_profiled(a, proof: Path, events_per_step: float | None) -> dict:
    """`verify --all` of `proof`, with its second replayed segment (the first where there is one)
    under the profiler: the start checkpoint's load, the steps, the end (losses read back, the
    comparison with the next checkpoint). With --profile-replay-steps N below the segment's
    length, two windows: the load and the first N steps, then the end. N = -1: as many steps as
    fit PROFILE_EVENTS at the training profile's `events_per_step`."""
    import pol.verifier.parallel as par
    from pol.proof.reader import open_proof
    from pol.verifier import verify
    which = 1 if len(open_proof(proof).manifest.checkpoints) > 2 else 0
    n = a.profile_replay_steps
    if n < 0:
        n = max(1, int(PROFILE_EVENTS // events_per_step)) if events_per_step else 0
    orig, orig_update = par.replay_segment, getattr(par, "update", None)
    if orig_update is None:  # the replay no longer steps through this name: whole segment
        n = 0
    parts: list = []
    seen, seg = [0], {"on": False}

    def step(*args, **kw):
        t = args[4] if len(args) > 4 else kw.get("t")
        if seg["on"] and n and t == seg["start"] + n and parts[-1][1].on:
            parts[-1][1].stop()
        out = orig_update(*args, **kw)
        if seg["on"] and n and t == seg["end"] - 1 and t >= seg["start"] + n \
                and not parts[-1][1].on:
            parts.append(("the end", Window(a.device)))
            parts[-1][1].start()
        return out

    def hooked(ctx, pr, data, leaves, names, s0, s1, *rest, **kw):
        seen[0] += 1
        if seen[0] - 1 != which:
            return orig(ctx, pr, data, leaves, names, s0, s1, *rest, **kw)
        seg.update(on=True, start=s0, end=s1)
        steps = s1 - s0 if not n or n >= s1 - s0 else n
        parts.append(("the whole segment" if steps == s1 - s0 else
                      f"the load and steps {s0}–{s0 + steps - 1}", Window(a.device)))
        parts[-1][1].start()
        try:
            return orig(ctx, pr, data, leaves, names, s0, s1, *rest, **kw)
        finally:
            parts[-1][1].stop()
            seg.update(on=False, steps=steps)
    par.replay_segment = hooked
    if n:
        par.update = step
    try:
        verify(proof, all_segments=True, q=a.q, device=a.device, data=a.data, entropy=b"bench",
               policy=a.policy)
    finally:
        par.replay_segment = orig
        if n:
            par.update = orig_update
    return profile_summary(parts, f"replay of segment {seg['start']}–{seg['end']}",
                           seg["steps"], a.device)


def _union_ms(spans) -> float:
    """Milliseconds covered by the union of (start, end) intervals in µs."""
    total, end = 0.0, float("-inf")
    for s0, s1 in sorted(spans):
        if s1 > end:
            total += s1 - max(s0, end)
            end = s1
    return total / 1000


def _device_us(e, self_: bool) -> float:
    names = ("self_device_time_total", "self_cuda_time_total") if self_ else \
        ("device_time_total", "cuda_time_total")
    for n in names:
        try:
            v = getattr(e, n)
        except (AttributeError, TypeError):
            continue
        if v is not None:
            return float(v)
    return 0.0


def _gaps(w: Window, device: str) -> dict:
    """Where one window's wall time went: device busy (union of kernel, copy and memset
    intervals) against idle; the host's busiest thread inside torch ops (union of its op
    intervals), outside them, and in synchronize calls."""
    import collections

    from torch.autograd import DeviceType
    evs = [e for e in w.prof.events() if not getattr(e, "is_async", False)]
    dev = [(e.time_range.start, e.time_range.end) for e in evs if e.device_type != DeviceType.CPU]
    cpu = [e for e in evs if e.device_type == DeviceType.CPU
           and not getattr(e, "is_user_annotation", False)]
    main = collections.Counter(e.thread for e in cpu).most_common(1)
    mine = [e for e in cpu if main and e.thread == main[0][0]]
    g = {"window_ms": 1000 * w.window_s, "events": len(evs),
         "host_in_ops_ms": _union_ms((e.time_range.start, e.time_range.end) for e in mine),
         "host_in_synchronize_ms": _union_ms((e.time_range.start, e.time_range.end)
                                             for e in mine if "ynchronize" in e.name),
         "device_busy_ms": _union_ms(dev) if device == "cuda" and dev else None}
    if device == "cuda" and not dev:
        print("note: the profile holds no CUDA events (CUPTI unavailable?): no device time",
              flush=True)
    g["host_outside_ops_ms"] = g["window_ms"] - g["host_in_ops_ms"]
    if g["device_busy_ms"] is not None:
        g["device_idle_ms"] = g["window_ms"] - g["device_busy_ms"]
    return g


def profile_summary(parts: list, label: str, steps: int, device: str) -> dict:
    """Top ops by self device time (self CPU time on a CPU) and top kernels over the windows
    `parts` [(name, Window)], and their time split (`_gaps`), per window and in total."""
    per = [{"part": name, **_gaps(w, device)} for name, w in parts]
    tot = {k: (None if per[0][k] is None else sum(p[k] for p in per))
           for k in per[0] if k != "part"}
    tot.update(steps=steps, ms_per_step=tot["window_ms"] / max(steps, 1))
    ops, kernels = _top([w.prof.key_averages() for _, w in parts], device)
    if len(per) > 1:
        label += " (" + " + ".join(f"{p['part']} {p['window_ms']:.1f} ms" for p in per) + ")"
    return {"label": label, "parts": per, "gaps": tot, "ops": ops, "kernels": kernels,
            "line": _gap_line(label, tot),
            "sort": "self_device_ms" if device == "cuda" else "self_cpu_ms"}


def _top(avgs_list, device: str) -> tuple[list, list]:
    from torch.autograd import DeviceType
    acc: dict = {}
    for avgs in avgs_list:
        for e in avgs:
            kind = "op" if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU \
                else "kernel"
            r = acc.setdefault((kind, e.key), {"name": e.key, "kind": kind, "count": 0,
                                               "self_cpu_ms": 0.0, "cpu_ms": 0.0,
                                               "self_device_ms": 0.0, "device_ms": 0.0})
            r["count"] += e.count
            r["self_cpu_ms"] += e.self_cpu_time_total / 1000
            r["cpu_ms"] += e.cpu_time_total / 1000
            r["self_device_ms"] += _device_us(e, True) / 1000
            r["device_ms"] += _device_us(e, False) / 1000
    rows = [r for r in acc.values() if r["kind"] == "op"]
    kernels = [r for r in acc.values() if r["kind"] == "kernel"]
    key = "self_device_ms" if device == "cuda" else "self_cpu_ms"
    total = sum(r[key] for r in rows) or 1.0
    for r in rows:
        r["share"] = r[key] / total
    ktotal = sum(r["device_ms"] for r in kernels) or 1.0
    for r in kernels:
        r["share"] = r["device_ms"] / ktotal
    return (sorted(rows, key=lambda r: -r[key])[:TOP_OPS],
            sorted(kernels, key=lambda r: -r["device_ms"])[:TOP_KERNELS])


def _gap_line(label: str, g: dict) -> str:
    dev = ("" if g["device_busy_ms"] is None else
           f"device busy {g['device_busy_ms']:.1f} ms "
           f"({100 * g['device_busy_ms'] / max(g['window_ms'], 1e-9):.0f}%), idle "
           f"{g['device_idle_ms']:.1f} ms; ")
    return (f"{label}: {g['steps']} steps in {g['window_ms']:.1f} ms ({g['ms_per_step']:.2f} "
            f"ms/step, profiled); {dev}host (busiest thread) in torch ops "
            f"{g['host_in_ops_ms']:.1f} ms, outside them {g['host_outside_ops_ms']:.1f} ms, in "
            f"synchronize calls {g['host_in_synchronize_ms']:.1f} ms")


def render_profile(p: dict) -> str:
    if "ops" not in p:
        return p.get("note", "")
    key = p["sort"]
    lines = [p["line"], f"  top {len(p['ops'])} ops by {key.replace('_ms', '')} time "
             f"({p['gaps']['events']} events):",
             f"  {'self ms':>10} {'share':>6} {'total ms':>10} {'calls':>7}  op"]
    lines += [f"  {r[key]:>10.2f} {100 * r['share']:>5.1f}% "
              f"{r[key.replace('self_', '')]:>10.2f} {r['count']:>7}  {r['name'][:90]}"
              for r in p["ops"]]
    if p["kernels"]:
        lines.append(f"  top {len(p['kernels'])} device kernels / copies:")
        lines += [f"  {r['device_ms']:>10.2f} {100 * r['share']:>5.1f}% {'':>10} "
                  f"{r['count']:>7}  {r['name'][:90]}" for r in p["kernels"]]
    return "\n".join(lines)


def read_proof(proof: Path) -> float:
    """One read of the proof as the verifier makes it: manifest and per-step arrays, every
    checkpoint read, digested and parsed once."""
    from pol.proof.reader import open_proof
    t = time.perf_counter()
    p = open_proof(proof)
    for step in p.manifest.checkpoints:
        p.load_checkpoint(step)
    return time.perf_counter() - t


# rough CPU rates (s per M parameters, docs/BENCHMARKS.md) used only to skip what does not fit
INIT_RATES = {"ks": 0.3, "regeneration_reuse": 0.01, "regeneration_rebuild": 0.05,
              "rank_correlation": 1.2}


def init_checks(a, proof: Path, clock: "Clock") -> dict:
    """Seconds per million parameters of each init check, on this proof's W_0 and W_T (CPU). The
    rank correlation runs on the first tensors up to --init-mparams M parameters (it takes
    any subset); KS needs the whole model and is skipped where it does not fit the budget."""
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
    sub, m_sub = [], 0.0
    for n in names:
        if sub and m_sub + w0[n].numel() / 1e6 > a.init_mparams:
            break
        sub.append(n)
        m_sub += w0[n].numel() / 1e6
    out = {"mparams": mparams, "rank_correlation_mparams": m_sub}
    for label, fn, m in (
            ("ks", lambda: ic.initialization(ctx.model, spec, w0, names, 0.01), mparams),
            ("regeneration_reuse", lambda: ic.seeded_init_equal(ctx.model, w0, names), mparams),
            ("regeneration_rebuild", lambda: hd.regenerated_init_matches(spec, w0, names),
             mparams),
            ("rank_correlation", lambda: ic.init_rank_correlation(w0, wT, sub), m_sub)):
        out[f"{label}_s"] = out[f"{label}_s_per_mparam"] = None
        if not clock.fits(f"init check {label}", INIT_RATES[label] * m):
            continue
        t = time.perf_counter()
        fn()
        out[f"{label}_s"] = time.perf_counter() - t
        out[f"{label}_s_per_mparam"] = out[f"{label}_s"] / m
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


class Clock:
    """Wall time since the start against --budget-s; each phase's seconds, and what was skipped."""

    def __init__(self, budget: float | None):
        self.t0, self.budget, self.phases, self.skipped = time.perf_counter(), budget, {}, []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return float("inf") if self.budget is None else self.budget - self.elapsed()

    def fits(self, what: str, estimate: float) -> bool:
        if estimate <= self.left():
            return True
        self.skipped.append({"what": what, "estimate_s": estimate, "left_s": self.left()})
        print(f"[{self.elapsed():6.1f} s] skipped {what}: estimated {estimate:.1f} s, "
              f"{max(self.left(), 0):.1f} s of the budget left", flush=True)
        return False

    def phase(self, name: str):
        clock = self

        class _P:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t
                clock.phases[name] = clock.phases.get(name, 0.0) + dt
                if exc[0] is None:
                    print(f"[{clock.elapsed():6.1f} s] {name}: {dt:.1f} s", flush=True)
        return _P()


def _rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def warmup(a, work: Path, clock: Clock) -> dict:
    """The untimed training (imports, allocator, first kernels); with --torch-profile, a few of
    its steps profiled, then the profiled `verify --all` of its proof (also the verifier's warm-up)."""
    prof: dict = {}
    with clock.phase("warm-up training" + (" (profiled steps)" if a.torch_profile else "")):
        t = time.perf_counter()
        if a.torch_profile:
            prof["train"] = train_profiled(a, work / "warmup")
        else:
            train(a, work / "warmup")
        warm_s = time.perf_counter() - t
    if a.torch_profile:
        g = prof["train"].get("gaps")
        with clock.phase("profiled verify --all of the warm-up proof"):
            prof["replay"] = verify_profiled(a, work / "warmup",
                                             g["events"] / g["steps"] if g else None)
        for p in prof.values():
            print(render_profile(p), flush=True)
        import gc
        gc.collect()  # the profiles' events: gone before the measured rounds
    first = None
    if not a.torch_profile and not a.no_verify_warmup:
        # the verifier's warm-up, as the training's: the first verification in a process pays
        # one-off costs (the replay's own kernels loaded, its first graph capture) that the
        # timed training, after its warm-up, does not; its replay rate is kept as that cost
        with clock.phase("warm-up verify --all (untimed)"):
            first = verify_in_process(a, work / "warmup", True)
        print(f"first verification in the process: replay --all {first['ms_per_step']:.2f} "
              "ms/step", flush=True)
    _rm(work / "warmup")
    return {"warmup_train_s": warm_s, "torch_profile": prof, "first_verify_all": first}


def rounds(a, work: Path, clock: Clock) -> dict:
    rows: list[dict] = []
    round_s = None
    for r in range(a.repeats):
        if r and not clock.fits(f"round {r + 1}", round_s + _cli_reserve(a, rows)):
            break
        proof = work / f"proof{r}"
        t0 = time.perf_counter()
        with clock.phase(f"round {r + 1}: training"):
            row = {"train": train(a, proof)}
        with clock.phase(f"round {r + 1}: verify --all"):
            row["verify_all"] = verify_in_process(a, proof, True)
        if not a.no_topq:
            with clock.phase(f"round {r + 1}: verify top-Q"):
                row["verify_topq"] = verify_in_process(a, proof, False)
        with clock.phase(f"round {r + 1}: training again (A/A)"):
            row["train_aa"] = train(a, work / f"aa{r}")  # A/A: the same training again
        _rm(work / f"aa{r}")
        with clock.phase(f"round {r + 1}: one read of the proof"):
            row["read_s"] = read_proof(proof)
        if r == 0:
            row["proof_bytes"] = sum(f.stat().st_size for f in proof.rglob("*") if f.is_file())
        else:
            _rm(proof)  # the first round's proof serves the later measures
        rows.append(row)
        round_s = time.perf_counter() - t0
        t = row["train"]["ms_per_step"]
        topq = row.get("verify_topq", {}).get("ms_per_step")
        print(f"round {r + 1}: train {t:.2f} ms/step (A/A {row['train_aa']['ms_per_step']:.2f}), "
              f"replay --all {row['verify_all']['ms_per_step']:.2f}, "
              f"top-Q {_f(topq, '.2f')}; {round_s:.1f} s", flush=True)
        if r == 0:
            forecast(a, row, round_s, clock)
    return {"rounds": rows, "proof": str(work / "proof0")}


CLI_START_S = 15.0  # a pol verify process before its first replay, until one is measured


def _cli_reserve(a, rows: list[dict]) -> float:
    """What one `pol verify --all` process needs: the in-process wall plus a process's start."""
    if a.no_cli or not rows:
        return 0.0
    return rows[0]["verify_all"]["wall_s"] + CLI_START_S


def forecast(a, row: dict, round_s: float, clock: Clock) -> None:
    """What is still to run, estimated from the first round (printed; the budget decides)."""
    each = {m: row.get(f"verify_{m}", row["verify_all"])["wall_s"] + CLI_START_S
            for m in ("all", "topq")}
    n_cli = 0 if a.no_cli else 1 + 2 * a.cli_repeats + (1 if a.pycache else 0)
    cli = 0 if a.no_cli else (each["topq"] * (1 + a.cli_repeats + (1 if a.pycache else 0))
                              + each["all"] * a.cli_repeats)
    rest = round_s * (a.repeats - 1) + cli
    print(f"forecast: {a.repeats - 1} more round(s) ≈ {round_s * (a.repeats - 1):.0f} s; "
          f"{n_cli} pol verify process(es) ≈ {cli:.0f} s (about {each['topq']:.0f} s top-Q, "
          f"{each['all']:.0f} s --all); then the commitment and the init checks (≈ 0.3 s/M "
          f"params KS, 1.2 s/M rank correlation on ≤ {a.init_mparams:g} M); elapsed "
          f"{clock.elapsed():.0f} s, ≈ {clock.elapsed() + rest:.0f} s before the init checks"
          + (f", budget {a.budget_s:.0f} s" if a.budget_s else ""), flush=True)


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
        rs = [r for r in rows if key in r]  # --no-topq: none
        s[f"replay_{mode}_ms_per_step"] = _med([r[key]["ms_per_step"] for r in rs])
        # the ratio of each round to the mean of its two trainings (either alone is as noisy)
        s[f"replay_{mode}_over_train"] = _med([
            r[key]["ms_per_step"] / ((r["train"]["ms_per_step"] + r["train_aa"]["ms_per_step"])
                                     / 2) for r in rs])
        s[f"replay_{mode}_over_train_cpu"] = _med([
            r[key]["cpu_ms_per_step"] / ((r["train"]["cpu_ms_per_step"]
                                          + r["train_aa"]["cpu_ms_per_step"]) / 2) for r in rs])
        s[f"wall_{mode}_s"] = _med([r[key]["wall_s"] for r in rs])
        s[f"wall_{mode}_over_read_plus_train_steps"] = _med([
            r[key]["wall_s"] / (r["read_s"] + r[key]["replayed_steps"]
                                * r["train"]["ms_per_step"] / 1000) for r in rs])
        s[f"replayed_steps_{mode}"] = rs[0][key]["replayed_steps"] if rs else None
        for m in ("pass_outside_replays_s", "digest_s"):
            s[f"{key}_{m}"] = _med([r[key].get(m) for r in rs])
        for m in ("peak_rss_mib", "rss_growth_mib", "cuda_peak_mib", "cuda_reserved_peak_mib"):
            s[f"{key}_{m}"] = _med([r[key]["memory"].get(m) for r in rs])
    s["read_s"] = _med([r["read_s"] for r in rows])
    s["proof_bytes"] = rows[0].get("proof_bytes")
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


def cli_runs(a, proof: str, cache: Path, out: Path, clock: Clock, walls: dict) -> dict:
    """`pol verify` processes: the first with an empty dataset cache (top-Q), then --all and
    top-Q in turn; each only where its estimate (the in-process wall of its mode, `walls`, plus
    a process's start, measured once known) fits the budget."""
    env = {**os.environ, "POL_CACHE_DIR": str(cache)}
    shutil.rmtree(cache, ignore_errors=True)
    base = ["verify", proof, "--device", a.device, "--policy", a.policy, "--q", str(a.q)]
    if a.data:
        base += ["--data", a.data]
    start = [CLI_START_S]
    runs: dict = {}

    def one(name: str, args: list[str], mode: str, profile: str | None = None) -> None:
        if not clock.fits(f"pol verify process {name}", walls[mode] + start[0]):
            return
        with clock.phase(f"pol verify process {name}"):
            r = run_cli(args, env, profile)
        start[0] = max(r["wall_s"] - walls[mode], 1.0)
        if name != "bytecode":
            runs[name] = r
    if a.pycache:  # compiled bytecode kept for every process after the first (untimed) one
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(a.pycache).resolve())
        one("bytecode", base, "topq")
        shutil.rmtree(cache, ignore_errors=True)
    elif not bytecode_cached():
        print("note: torch's modules have no compiled bytecode here; every pol process compiles "
              "their sources (seconds). --pycache DIR measures with a bytecode cache", flush=True)
    one("topq_cold_cache", base, "topq")
    for r in range(a.cli_repeats):
        one(f"all_{r}", base + ["--all"], "all")
        one(f"topq_{r}", base, "topq")
    if a.profile:
        one("all_profiled", base + ["--all"], "all", str(out / "verify_all.prof"))
        if "all_profiled" in runs:
            _write_profiles(out, base + ["--all"], env)
    return runs


def _write_profiles(out: Path, args: list[str], env: dict) -> None:
    import pstats
    with open(out / "profile_verify_all.txt", "w") as f:
        st = pstats.Stats(str(out / "verify_all.prof"), stream=f).sort_stats("cumulative")
        st.print_stats(120)
        # where a segment's time outside its steps goes (the hardened probe, the loads)
        st.print_callees("replay_segment|_probed_step|_negated_step|_replay_steps")
    # the .prof stays beside it (git-ignored) for a closer look
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
    cold = runs.get("topq_cold_cache")
    out = {"cold_cache_topq_before_first_replay_s": cold["before_first_replay_s"] if cold
           else None, "cold_cache_topq_peak_rss_mib": cold["peak_rss_mib"] if cold else None,
           "cold_cache_topq_cuda_peak_mib": cold["cuda_peak_mib"] if cold else None}
    for label, rs in (("topq", warm_topq), ("all", warm_all)):
        for key in ("before_first_replay_s", "wall_s", "replay_s", "rest_s",
                    "after_last_replay_s", "process_exit_s", "cpu_before_first_replay_s",
                    "cpu_total_s", "peak_rss_mib", "cuda_peak_mib"):
            out[f"{label}_{key}"] = _med([r[key] for r in rs])
        out[f"{label}_replay_ms_per_step"] = _med([1000 * r["replay_s"] / r["replayed_steps"]
                                                   for r in rs if r["replayed_steps"]])
    return out


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def print_table(s: dict, cli: dict, init: dict, com: dict) -> None:
    def m(d):
        return d.get("median") if isinstance(d, dict) else d

    def rng(d):
        return f"{_f(d['min'])}–{_f(d['max'])}" if d.get("median") is not None else "–"

    def mem(mode):
        return (f"{_f(m(s[f'verify_{mode}_peak_rss_mib']), '.0f')} "
                f"(+{_f(m(s[f'verify_{mode}_rss_growth_mib']), '.0f')}) / "
                f"{_f(m(s[f'verify_{mode}_cuda_peak_mib']), '.0f')} "
                f"({_f(m(s[f'verify_{mode}_cuda_reserved_peak_mib']), '.0f')})")
    rows = [
        ("model: M parameters / proof MiB", f"{_f(init['mparams'], '.2f')} / "
         f"{_f(s['proof_bytes'] and s['proof_bytes'] / 2**20, '.0f')}", ""),
        ("training, ms/step (inside the recording)", _f(m(s["train_ms_per_step"]), ".2f"),
         rng(s["train_ms_per_step"])),
        ("A/A: training again ÷ training", _f(m(s["train_aa_ratio"])), rng(s["train_aa_ratio"])),
        ("training, CPU ms/step (this process)", _f(m(s["train_cpu_ms_per_step"]), ".2f"),
         rng(s["train_cpu_ms_per_step"])),
        ("A/A in CPU time", _f(m(s["train_aa_ratio_cpu"])), rng(s["train_aa_ratio_cpu"])),
        (f"replay --all, ms/step ({_f(s['replayed_steps_all'], 'd')} steps)",
         _f(m(s["replay_all_ms_per_step"]), ".2f"), rng(s["replay_all_ms_per_step"])),
        ("replay --all ÷ training", _f(m(s["replay_all_over_train"])),
         rng(s["replay_all_over_train"])),
        ("replay --all ÷ training, CPU time", _f(m(s["replay_all_over_train_cpu"])),
         rng(s["replay_all_over_train_cpu"])),
        (f"replay top-Q, ms/step ({_f(s['replayed_steps_topq'], 'd')} steps)",
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
        ("checkpoint pass outside the replays / its digests, s (--all)",
         f"{_f(m(s['verify_all_pass_outside_replays_s']), '.2f')} / "
         f"{_f(m(s['verify_all_digest_s']), '.2f')}", ""),
        ("checkpoint pass outside the replays / its digests, s (top-Q)",
         f"{_f(m(s['verify_topq_pass_outside_replays_s']), '.2f')} / "
         f"{_f(m(s['verify_topq_digest_s']), '.2f')}", ""),
        ("in-process verify --all: peak RSS MiB (+ over its start) / peak CUDA MiB (reserved)",
         mem("all"), ""),
        ("in-process verify top-Q: the same", mem("topq"), ""),
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
            ("pol verify: peak RSS MiB, first call (empty dataset cache)",
             _f(cli["cold_cache_topq_peak_rss_mib"], ".0f"), ""),
            ("pol verify: peak CUDA MiB (top-Q / --all)",
             f"{_f(m(cli['topq_cuda_peak_mib']), '.0f')} / {_f(m(cli['all_cuda_peak_mib']), '.0f')}",
             ""),
        ]
    rows += [(f"init checks, s per M params ({init['mparams']:.3f} M; rank correlation on "
              f"{init['rank_correlation_mparams']:.3f} M): KS / regeneration "
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
    ap.add_argument("--dataset-arg", action="append", metavar="KEY=VALUE",
                    help="a dataset parameter (VALUE as JSON), e.g. n_train=3200, "
                    "block_size=256, vocab_size=256; repeated")
    ap.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                    help="a model argument changed from the task's (VALUE as JSON), e.g. "
                    "n_layer=16; repeated. The proof's spec records it: pol verify rebuilds it")
    ap.add_argument("--gpt-size", help="synthetic-gpt: a size preset from bench_scale's SIZES "
                    "(small, medium, large = 114M at block 256, vocab 256); --model-arg wins. "
                    "The model's block_size / vocab_size follow --dataset-arg's")
    ap.add_argument("--data", help="local dataset directory (CIFAR tasks)")
    ap.add_argument("--write-cifar", metavar="DIR", help="write a CIFAR-10 binary directory "
                    "of pol's synthetic-cifar set there (kept if its files exist) and use it "
                    "as --data (cifar10-resnet20 without the real files)")
    ap.add_argument("--write-cifar-n", type=int, default=50_000,
                    help="training samples --write-cifar writes (test: a fifth, at least 1)")
    ap.add_argument("--threads", type=int, help="CPU intra-op threads (training records them; "
                    "the verifier replays with the recorded number)")
    ap.add_argument("--q", type=int, default=1)
    ap.add_argument("--policy", default="hardened", choices=["hardened", "paper"])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the in-process measures")
    ap.add_argument("--cli-repeats", type=int, default=2, help="pol verify processes per mode "
                    "(after one with an empty dataset cache; 0: that one only)")
    ap.add_argument("--budget-s", type=float, help="total wall-time budget: the warm-up and the "
                    "first round always run; every later phase (rounds, pol verify processes, "
                    "init checks) only where its estimate fits what is left; skips are listed")
    ap.add_argument("--exact", choices=("auto", "on", "off"), default="auto",
                    help="exact mode of the proofs: pol train's default (auto: on a GPU where "
                    "the model supports it), on, off")
    ap.add_argument("--torch-profile", action="store_true", help="torch.profiler over a few "
                    "steps of the warm-up training and over one segment's replay (in a verify "
                    "--all of the warm-up proof): top ops, kernels, host-side gaps")
    ap.add_argument("--profile-skip", type=int, default=3,
                    help="--torch-profile: training steps before the profiled ones (≥ 1)")
    ap.add_argument("--profile-steps", type=int, default=3,
                    help="--torch-profile: training steps profiled")
    ap.add_argument("--profile-replay-steps", type=int, default=-1, help="--torch-profile: "
                    "steps of the replayed segment profiled (with its load and, apart, its "
                    "end); 0: the whole segment; -1 (default): as many as fit ~60,000 profiler "
                    "events at the training profile's events per step (reading a window costs "
                    "~40-80 µs per event)")
    ap.add_argument("--init-mparams", type=float, default=16.0, help="the rank-correlation "
                    "timing runs on the first tensors up to this many M parameters")
    ap.add_argument("--no-cli", action="store_true", help="skip the pol verify processes")
    ap.add_argument("--no-verify-warmup", action="store_true",
                    help="no untimed verify --all after the warm-up training (then the first "
                         "timed verification pays the process's one-off replay costs)")
    ap.add_argument("--no-topq", action="store_true", help="skip the in-process top-Q "
                    "verification (with two segments, the hardened top-Q replays both: --all)")
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
    clock = Clock(a.budget_s)
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if a.write_cifar:
        with clock.phase("writing the CIFAR-10 binary directory"):
            a.data = str(write_cifar10(Path(a.write_cifar), a.write_cifar_n,
                                       max(a.write_cifar_n // 5, 1)))
    a.dataset_params = dataset_params(a)
    a.model_kw = model_overrides(a, a.dataset_params)
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work or tempfile.mkdtemp(prefix="pol-bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        warm = warmup(a, work, clock)
        res = rounds(a, work, clock)
        s = summarize(res)
        if out:  # kept if a later phase is cut short (a time limit on the host)
            _write(a, out, {"partial": True, "summary": s, "rounds": res["rounds"],
                            "warmup": warm, "phases_s": clock.phases, "total_s": clock.elapsed()},
                   quiet=True)
        proof = Path(res["proof"])
        with clock.phase("dataset commitment"):
            com = commitment(a, proof, work / "cache-commitment")
        first = res["rounds"][0]
        walls = {m: first.get(f"verify_{m}", first["verify_all"])["wall_s"]
                 for m in ("all", "topq")}
        runs = {} if a.no_cli else cli_runs(a, str(proof), work / "cache", out or work, clock,
                                            walls)
        with clock.phase("init checks"):
            init = init_checks(a, proof, clock)
        cli = cli_summary(runs) if runs else {}
        print_table(s, cli, init, com)
        print("\nphases, s: " + ", ".join(f"{k} {v:.1f}" for k, v in clock.phases.items())
              + f"; total {clock.elapsed():.1f}" + (f" of a {a.budget_s:.0f} s budget"
                                                     if a.budget_s else ""))
        if clock.skipped:
            print("skipped: " + "; ".join(x["what"] for x in clock.skipped))
        if out:
            _write(a, out, {"summary": s, "cli_summary": cli, "init_checks": init,
                            "commitment": com, "cli_runs": runs, "rounds": res["rounds"],
                            "warmup": warm, "phases_s": clock.phases, "skipped": clock.skipped,
                            "total_s": clock.elapsed()})
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def _write(a, out: Path, doc: dict, quiet: bool = False) -> None:
    tag = f"{a.task}{'-' + a.gpt_size if a.gpt_size else ''}_{a.device}"
    doc = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": _machine(a),
           "args": vars(a), "bytecode_cached": bytecode_cached(), **doc}
    (out / f"verify_speed_{tag}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    prof = doc["warmup"]["torch_profile"]
    if prof:
        (out / f"torch_profile_{tag}.txt").write_text(
            "\n\n".join(render_profile(p) for p in prof.values()) + "\n")
    if not quiet:
        print(f"\nwrote {out / f'verify_speed_{tag}.json'}"
              + (f" and {out / f'torch_profile_{tag}.txt'}" if prof else ""))


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
