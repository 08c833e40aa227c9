"""The distributed job with untrusted workers on one GPU (docs/DISTRIBUTED.md): the detection
scenario of bench_cluster.py with ResNet-20 on the CIFAR-shaped synthetic set.

One worker of each main Byzantine kind (noise, signflip, scale, lazy, freerider, otherdata, forge,
sparse), two honest ones and one that dies in round 1: 11 workers and the coordinator, each a real
process (the spawn launcher: fresh interpreters, gloo, the store protocol), all sharing the GPU; the
workers train and the coordinator replays on `--device` (deterministic algorithms, exact replay
required). Written under --out: `cluster_gpu.json` (per kind: rounds acted, rejected, the analytic
probability; honest worker-rounds accepted or not; audit against training seconds per worker-round;
wall per round; peak GPU memory) and `cluster_gpu.md` (the tables printed at the end).

    python benchmarks/bench_cluster_gpu.py --out DIR                      # the H200 run
    python benchmarks/bench_cluster_gpu.py --device cpu --tiny --out DIR  # a smoke run on a CPU

Training seconds are the workers' own report (their time on the assignment: training, proof,
packing), audit seconds the coordinator's (unpack, the claims, the replay of the planned segments).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KINDS = ("noise", "signflip", "scale", "lazy", "freerider", "otherdata", "forge", "sparse")
HONEST = 2
# local steps, checkpoint every, batch, budget, test samples: a round of ~20-40 s on an H200
# (ResNet-20, batch 128: ~13 ms per recorded step alone; 9 of the 11 workers train)
FULL = dict(local_steps=100, segment=5, batch_size=128, budget=0.2, n_test=1000, rounds=3)
TINY = dict(local_steps=4, segment=1, batch_size=8, budget=0.5, n_test=64, rounds=2)


def build_config(args, run_dir: str):
    """The job: workers 1..8 one Byzantine kind each, 9 and 10 honest, 11 dies in round 1."""
    from pol.cluster import ClusterConfig, parse_byzantine
    n = len(KINDS) + HONEST + 1
    byz = ",".join(f"{i + 1}:{k}" for i, k in enumerate(KINDS)) + f",{n}:crash=1"
    need = args.local_steps * args.batch_size
    n_train = args.n_train or int(math.ceil(need * 1.25))
    return ClusterConfig(
        out=run_dir, workers=n, rounds=args.rounds, task="synthetic-resnet20",
        dataset_params={"n_train": n_train, "n_test": args.n_test},
        local_steps=args.local_steps, segment=args.segment, batch_size=args.batch_size,
        seed=args.seed, budget=args.budget, q=1, byzantine=parse_byzantine(byz),
        device=args.device, backend="gloo", threads=1, keep_proofs="none",
        heartbeat_timeout=args.heartbeat_timeout, round_timeout=args.round_timeout,
        join_timeout=300.0)


class GpuMemory:
    """Peak GPU memory in use, polled from nvidia-smi (every process on the device: the workers
    and the coordinator). Nothing (None) where nvidia-smi is not there."""

    def __init__(self, period: float = 0.5) -> None:
        self.period, self.peak_total, self.peak_process, self.base = period, None, None, None
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _query(what: str) -> list[list[int]]:
        out = subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [[int(x) for x in line.split(",")] for line in out.splitlines() if line.strip()]

    def _sample(self) -> None:
        total = self._query("gpu=memory.used")[0][0]
        apps = self._query("compute-apps=pid,used_memory")
        self.peak_total = max(self.peak_total or 0, total)
        self.peak_process = max([self.peak_process or 0] + [m for _, m in apps])
        self.processes = max(self.processes, len(apps))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._sample()
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return

    def __enter__(self) -> "GpuMemory":
        try:
            self.base = self._query("gpu=memory.used")[0][0]
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return self
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict:
        return {"source": "nvidia-smi" if self.base is not None else None,
                "before_mib": self.base, "peak_total_mib": self.peak_total,
                "peak_per_process_mib": self.peak_process, "processes_seen": self.processes}


class Progress:
    """A line per committed round as it lands (the run directory's checkpoints), so that a run cut
    short still shows how far it got."""

    def __init__(self, run_dir: str, t0: float) -> None:
        self.dir, self.t0, self.seen = Path(run_dir) / "checkpoints", t0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            done = sorted(p.name for p in self.dir.glob("round_*.safetensors")) if \
                self.dir.exists() else []
            for name in done:
                if name not in self.seen:
                    self.seen.add(name)
                    print(f"[{time.perf_counter() - self.t0:6.1f} s] {name[:-12]} committed",
                          flush=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def per_kind(res, cfg) -> dict:
    """Per behaviour: the rounds it acted in and how many were rejected (Byzantine kinds), the
    rounds it worked honestly in and how many were not accepted (honest workers, the crashing
    one before its round), with the reasons and the analytic probability."""
    from pol.cluster import Behaviour, detection_probability
    out: dict = {}
    for v in res.verdicts:
        kind = v["behaviour"].split("=")[0]
        d = out.setdefault(kind, {"acted": 0, "rejected": 0, "absent": 0, "honest_rounds": 0,
                                  "honest_accepted": 0, "reasons": []})
        if v["acts"]:
            d["acted"] += 1
            d["rejected"] += v["verdict"] == "rejected"
            d["absent"] += v["verdict"] == "absent"
        else:
            d["honest_rounds"] += 1
            d["honest_accepted"] += v["verdict"] == "accepted"
        if v["verdict"] != "accepted" and v["reason"] not in d["reasons"]:
            d["reasons"].append(v["reason"])
    for kind, d in out.items():
        if kind in KINDS:
            d["analytic"], d["why"] = detection_probability(Behaviour(kind), cfg)
    order = list(KINDS) + ["honest", "crash"]
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0])))


def timing(res) -> dict:
    """Audit against training per worker-round (honest ones, and every trained one), and the
    rounds' wall time (round 0 includes every process's first CUDA work)."""
    hon = [v for v in res.verdicts if not v["acts"] and v["verdict"] != "absent"]
    trained = [v for v in res.verdicts if v["worker_seconds"] is not None]
    audit_h = _median([v["seconds"] for v in hon])
    train_h = _median([v["worker_seconds"] for v in hon if v["worker_seconds"] is not None])
    return {
        "honest_audit_seconds": audit_h, "honest_train_seconds": train_h,
        "audit_over_train": audit_h / train_h if audit_h and train_h else None,
        "honest_replayed_steps": _median([v["replayed_steps"] for v in hon]),
        "all_audit_seconds": _median([v["seconds"] for v in trained]),
        "all_train_seconds": _median([v["worker_seconds"] for v in trained]),
        "rounds": [{"round": r.round, "seconds": r.seconds, "audit_seconds": r.audit_seconds,
                    "accepted": r.accepted, "counted": r.counted,
                    "test_accuracy": r.test_accuracy} for r in res.rounds],
    }


def machine(device: str) -> dict:
    import torch
    info = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if device == "cuda":  # (this process only reads the name; the ranks are fresh processes)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(out: dict) -> str:
    """The markdown tables: per kind, per round, and the costs."""
    c, t, m = out["config"], out["timing"], out["gpu_memory"]
    lines = [f"ResNet-20 (synthetic-resnet20, n_train {c['dataset_params']['n_train']}), "
             f"{c['workers']} workers + coordinator on {c['device']}, {c['rounds']} rounds of "
             f"{c['local_steps']} steps (batch {c['batch_size']}, checkpoint every "
             f"{c['segment']}), budget {c['budget']:g}: {out['plan']['replayed']} of "
             f"{out['plan']['segments']} segments replayed; exact replay required", "",
             "| behaviour | rounds acted | rejected | analytic P | reason |", "|---|---|---|---|---|"]
    for kind, d in out["per_kind"].items():
        if kind in KINDS:
            why = (d["reasons"] or ["-"])[0].replace("|", "/")
            lines.append(f"| {kind} | {d['acted']} | {d['rejected']} | {d['analytic']:.2f} | "
                         f"{why[:90]} |")
    for kind, d in out["per_kind"].items():
        if kind not in KINDS:
            absent = f"absent in its {d['absent']} crash round(s)" if d["acted"] else ""
            lines.append(f"| {kind}: honest rounds | {d['honest_rounds']} | "
                         f"{d['honest_rounds'] - d['honest_accepted']} not accepted | - | "
                         f"{absent} |")
    lines += ["", "| round | wall s | audits s (sum) | accepted | test accuracy |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['seconds']:.1f} | {r['audit_seconds']:.1f} | "
              f"{r['accepted']} | {r['test_accuracy']:.1%} |" for r in t["rounds"]]
    lines += ["", f"per honest worker-round: audit {_f(t['honest_audit_seconds'])} s "
              f"({t['honest_replayed_steps']} steps replayed) vs training "
              f"{_f(t['honest_train_seconds'])} s (ratio {_f(t['audit_over_train'])}); every "
              f"worker-round: audit {_f(t['all_audit_seconds'])} s, training "
              f"{_f(t['all_train_seconds'])} s",
              f"job {out['job_seconds']:.1f} s (start-up and shut-down "
              f"{out['startup_seconds']:.1f} s)"]
    if m["source"]:
        lines.append(f"peak GPU memory: {m['peak_total_mib']} MiB in all (before the job "
                     f"{m['before_mib']}), at most {m['peak_per_process_mib']} MiB per process, "
                     f"{m['processes_seen']} processes seen")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where the JSON and the tables go")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a few steps of batch 8, 2 rounds")
    for k, v in FULL.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=None,
                        help=f"default {v} ({TINY[k]} with --tiny)")
    ap.add_argument("--n-train", type=int, default=0, help="0: 1.25 x a shard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heartbeat-timeout", type=float, default=15.0,
                    help="seconds of silence that mark a worker dead (the crashing one)")
    ap.add_argument("--round-timeout", type=float, default=150.0)
    ap.add_argument("--run-dir", help="the job's run directory (default: a temporary one)")
    args = ap.parse_args(argv)
    for k, v in (TINY if args.tiny else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.device == "cuda":  # (no CUDA context here: the ranks are fresh processes)
        import torch
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA GPU here (--device cpu --tiny for a smoke run)")
    return run(args)


def run(args) -> dict:
    from pol.cluster import run_local
    from pol.cluster.budget import plan_of
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = None if args.run_dir else tempfile.mkdtemp(prefix="pol-bench-cluster-gpu-")
    cfg = build_config(args, args.run_dir or f"{tmp}/run")
    print(f"{cfg.workers} workers and the coordinator on {cfg.device}, {cfg.rounds} rounds of "
          f"{cfg.local_steps} steps of batch {cfg.batch_size}", flush=True)
    try:
        t0 = time.perf_counter()
        with GpuMemory() if args.device == "cuda" else _Nothing() as mem, Progress(cfg.out, t0):
            res = run_local(cfg, "spawn")
        wall = time.perf_counter() - t0
        shutil.copy(Path(cfg.out) / "job.json", out_dir / "cluster_gpu_job.json")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    plan = plan_of(cfg)
    out = {"config": cfg.to_dict(), "machine": machine(args.device),
           "plan": {"segments": plan.segments, "q": plan.q, "random": plan.random,
                    "replayed": plan.replayed},
           "per_kind": per_kind(res, cfg), "timing": timing(res), "job_seconds": wall,
           "startup_seconds": wall - sum(r.seconds for r in res.rounds),
           "gpu_memory": mem.summary(), "date": time.strftime("%Y-%m-%d")}
    table = render(out)
    (out_dir / "cluster_gpu.json").write_text(json.dumps(out, indent=1, default=float))
    (out_dir / "cluster_gpu.md").write_text(table + "\n")
    print(table)
    return out


class _Nothing:
    def __enter__(self) -> "_Nothing":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def summary(self) -> dict:
        return {"source": None}


if __name__ == "__main__":
    main()
