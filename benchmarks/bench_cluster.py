"""The distributed job with untrusted workers (pol.cluster), measured: the figures of
docs/DISTRIBUTED.md.

Phases (independent jobs run two at a time, one per core; every job is a `pol.cluster` run, in one
process where it needs many worker-rounds, as real processes where wall time is measured):

- detection: one worker of every Byzantine kind and two honest ones, R rounds at the default
  budget; per kind the fraction of the rounds it acted in that were rejected, next to the analytic
  probability; the cost of an audit against the worker's training;
- sparse: the sparse cheater's detection against the fraction of steps it fakes and the budget,
  measured by auditing its proofs again with fresh coordinator entropy, next to the analytic curve;
- honest: as many honest worker-rounds as fit in --honest-seconds (per core), every segment
  replayed (a proof accepted whole is accepted at any budget), every rejection a false one;
- accuracy: test accuracy after R rounds with 3 Byzantine workers of 8 (noise σ = 1, sign flip,
  scale 10) under PoL-gated averaging, plain averaging and the coordinate-wise median, and with no
  Byzantine worker;
- wall: real processes (spawned ranks, gloo, the store protocol), seconds per round with the
  audits against the same job aggregating unverified.

    python benchmarks/bench_cluster.py                      # ~12 min on 2 cores
    python benchmarks/bench_cluster.py --quick              # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BASE = dict(model_kwargs={"hidden": [32]}, local_steps=100, batch_size=8, segment=1, budget=0.1,
            q=1, heartbeat_timeout=5.0, round_timeout=120.0)
KINDS = ("noise", "signflip", "scale", "lazy", "stale", "freerider", "copycat", "otherdata",
         "forge", "sparse")


def _config(out: str, **kw):
    from pol.cluster import ClusterConfig
    return ClusterConfig(out=out, **{**BASE, **kw})


def _timed_inprocess(cfg):
    """An in-process job, each worker's handling (training and sending) timed."""
    from pol.cluster.worker import WorkerRuntime
    times: list[float] = []
    orig = WorkerRuntime.handle_local

    def handle_local(self, *a):
        t0 = time.perf_counter()
        try:
            return orig(self, *a)
        finally:
            if self.behaviour.kind == "honest":
                times.append(time.perf_counter() - t0)
    WorkerRuntime.handle_local = handle_local
    try:
        from pol.cluster import run_inprocess
        return run_inprocess(cfg), times
    finally:
        WorkerRuntime.handle_local = orig


def detection(rounds: int, tmp: str) -> dict:
    from pol.cluster import Behaviour, detection_probability, parse_byzantine
    byz = parse_byzantine(",".join(f"{i + 3}:{k}" for i, k in enumerate(KINDS)))
    cfg = _config(f"{tmp}/detection", workers=len(KINDS) + 2, rounds=rounds, byzantine=byz)
    res, train = _timed_inprocess(cfg)
    per: dict = {}
    for v in res.verdicts:
        kind = v["behaviour"].split("=")[0]
        d = per.setdefault(kind, {"acted": 0, "rejected": 0, "honest_rounds": 0,
                                  "honest_rejected": 0})
        if v["acts"]:
            d["acted"] += 1
            d["rejected"] += v["verdict"] == "rejected"
        else:
            d["honest_rounds"] += 1
            d["honest_rejected"] += v["verdict"] != "accepted"
            if v["verdict"] != "accepted":
                d.setdefault("honest_reasons", []).append(v["reason"])
    for kind, d in per.items():
        if kind != "honest":
            d["analytic"], d["why"] = detection_probability(Behaviour(kind), cfg)
    audits = [v["seconds"] for v in res.verdicts if v["behaviour"] == "honest"]
    return {"config": cfg.to_dict(), "per_kind": per,
            "honest_train_seconds": statistics.median(train),
            "honest_audit_seconds": statistics.median(audits),
            "audit_over_train": statistics.median(audits) / statistics.median(train),
            "replayed_steps": statistics.median(v["replayed_steps"] for v in res.verdicts
                                                if v["behaviour"] == "honest")}


def _reverify(cfg, out: str, budgets: list[float], repeats: int) -> dict:
    """Every kept proof of a run audited again, `repeats` times per budget, fresh entropy."""
    import numpy as np

    from pol.cluster import assign, segment_plan
    from pol.verifier import verify
    train, _ = assign.task_data(cfg.task)
    hits = {b: [0, 0] for b in budgets}
    for proof in sorted(Path(out, "proofs").glob("round*-worker*")):
        r = int(proof.name[5:11])
        w = int(proof.name.split("worker")[1])
        data = assign.shard(train, assign.shard_indices(cfg, r, w, len(train)))
        npz = proof.parent / f"{proof.name}.npz"
        np.savez(npz, x=data.x, y=data.y)
        for b in budgets:
            p = segment_plan(cfg.local_steps, cfg.segment, b, cfg.q)
            for _ in range(repeats):
                rep = verify(proof, q=p.q, random_per_epoch=p.random, all_segments=p.all_segments,
                             data=str(npz), registry=f"{out}/registry/round_{r:06d}.db",
                             entropy=os.urandom(32))
                hits[b][0] += not rep.valid
                hits[b][1] += 1
    return hits


def sparse(fraction: float, budgets: list[float], rounds: int, repeats: int, tmp: str) -> dict:
    from pol.cluster import Behaviour, detection_probability, parse_byzantine
    out = f"{tmp}/sparse{fraction}"
    byz = parse_byzantine(",".join(f"{w}:sparse={fraction}" for w in range(1, 5)))
    cfg = _config(out, workers=4, rounds=rounds, byzantine=byz, keep_proofs="all")
    from pol.cluster import run_inprocess
    run_inprocess(cfg)
    hits = _reverify(cfg, out, budgets, repeats)
    return {"fraction": fraction, "cells": [
        {"budget": b, "detected": hits[b][0], "trials": hits[b][1],
         "analytic": detection_probability(Behaviour("sparse", fraction),
                                           cfg.with_(budget=b))[0]} for b in budgets]}


def honest(seconds: float, tmp: str, tag: str, budget: float = 1.0,
           progress: str | None = None, target: int = 0) -> dict:
    """Honest worker-rounds until the time is up or `target` are done (jobs of 8 workers × 10
    rounds); budget 1: every segment replayed (a proof accepted whole is accepted at any budget).
    `progress`: a JSON file rewritten after every job (a long run keeps what it has measured)."""
    from pol.cluster import run_inprocess
    end = time.monotonic() + seconds
    n = steps = jobs = 0
    bad: list[dict] = []
    t0 = time.perf_counter()
    while time.monotonic() < end and not (target and n >= target):
        out = f"{tmp}/honest-{tag}-{jobs}"
        res = run_inprocess(_config(out, workers=8, rounds=10, seed=1000 * jobs + ord(tag),
                                    budget=budget))
        n += len(res.verdicts)
        bad += [{k: v[k] for k in ("round", "worker", "verdict", "reason", "failed_checks",
                                   "segments", "entropy")} | {"job": jobs}
                for v in res.verdicts if v["verdict"] != "accepted"]
        steps += sum(v["replayed_steps"] for v in res.verdicts)
        jobs += 1
        shutil.rmtree(out, ignore_errors=True)
        row = {"worker_rounds": n, "false_rejections": len(bad), "replayed_steps": steps,
               "rejections": bad[:20], "seed_tag": tag, "budget": budget,
               "seconds": time.perf_counter() - t0}
        if progress:
            Path(progress).write_text(json.dumps(row, indent=1, default=float))
    return {"worker_rounds": n, "false_rejections": len(bad), "replayed_steps": steps,
            "rejections": bad[:20], "seed_tag": tag, "budget": budget}


def accuracy(aggregate: str, byzantine: str, rounds: int, tmp: str) -> dict:
    from pol.cluster import parse_byzantine, run_inprocess
    out = f"{tmp}/acc-{aggregate}-{'byz' if byzantine else 'clean'}"
    res = run_inprocess(_config(out, workers=8, rounds=rounds, aggregate=aggregate,
                                byzantine=parse_byzantine(byzantine)))
    return {"aggregate": aggregate, "byzantine": byzantine,
            "accuracy": [r.test_accuracy for r in res.rounds]}


def wall(aggregate: str, rounds: int, tmp: str) -> dict:
    from pol.cluster import parse_byzantine, run_local
    cfg = _config(f"{tmp}/wall-{aggregate}", workers=4, rounds=rounds, aggregate=aggregate,
                  byzantine=parse_byzantine("4:noise"))
    t0 = time.perf_counter()
    res = run_local(cfg)
    per = [r.seconds for r in res.rounds[1:]]  # round 0 includes the ranks' first imports
    return {"aggregate": aggregate, "job_seconds": time.perf_counter() - t0,
            "round_seconds": per, "median_round_seconds": statistics.median(per),
            "audit_seconds": statistics.median(r.audit_seconds for r in res.rounds[1:])}


def _table(res: dict) -> str:
    lines = ["| behaviour | rounds acted | rejected | measured | analytic | why |",
             "|---|---|---|---|---|---|"]
    for kind, d in sorted(res["detection"]["per_kind"].items()):
        if kind == "honest":
            continue
        lines.append(f"| {kind} | {d['acted']} | {d['rejected']} | "
                     f"{d['rejected'] / max(d['acted'], 1):.1%} | {d['analytic']:.4f} | "
                     f"{d['why']} |")
    lines += ["", "| faked fraction | " + " | ".join(f"budget {c['budget']:g}" for c in
                                                    res["sparse"][0]["cells"]) + " |",
              "|---|" + "---|" * len(res["sparse"][0]["cells"])]
    for s in res["sparse"]:
        lines.append(f"| {s['fraction']:g} | " + " | ".join(
            f"{c['detected']}/{c['trials']} = {c['detected'] / c['trials']:.2f} "
            f"(analytic {c['analytic']:.2f})" for c in s["cells"]) + " |")
    return "\n".join(lines)


def main() -> None:
    # long: the phases, submitted to two processes, then collected in order
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the detection job")
    ap.add_argument("--honest-seconds", type=float, default=240.0)
    ap.add_argument("--acc-rounds", type=int, default=10)
    ap.add_argument("--wall-rounds", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="benchmarks/results/cluster.json")
    ap.add_argument("--honest-only", metavar="TAG", help="only honest worker-rounds, at the "
                    "default budget (0.1), until --honest-rounds or --honest-seconds; progress "
                    "rewritten to --json after every job")
    ap.add_argument("--honest-rounds", type=int, default=0)
    args = ap.parse_args()
    if args.honest_only:
        tmp = tempfile.mkdtemp(prefix="pol-bench-cluster-")
        try:
            row = honest(args.honest_seconds, tmp, args.honest_only, budget=BASE["budget"],
                         progress=args.json, target=args.honest_rounds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(row, default=float))
        return
    if args.quick:
        args.rounds, args.honest_seconds, args.acc_rounds, args.wall_rounds = 3, 20.0, 2, 2
    tmp = tempfile.mkdtemp(prefix="pol-bench-cluster-")
    fractions = [0.01, 0.05, 0.1, 0.2] if not args.quick else [0.1]
    budgets = [0.05, 0.1, 0.2]
    byz = "2:noise=1,3:signflip,4:scale=10"
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        det = pool.submit(detection, args.rounds, tmp)
        sp = [pool.submit(sparse, f, budgets, 3 if not args.quick else 1,
                          5 if not args.quick else 2, tmp) for f in fractions]
        acc = [pool.submit(accuracy, a, b, args.acc_rounds, tmp)
               for a, b in [("pol", byz), ("mean", byz), ("median", byz), ("mean", "")]]
        hon = [pool.submit(honest, args.honest_seconds, tmp, t) for t in ("a", "b")]
        res = {"detection": det.result(), "sparse": [f.result() for f in sp],
               "accuracy": [f.result() for f in acc], "honest": [f.result() for f in hon]}
    res["wall"] = [wall(a, args.wall_rounds, tmp) for a in ("pol", "mean")]
    res["seconds"] = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    print(_table(res))
    print(json.dumps({k: res[k] for k in ("honest", "accuracy", "wall")}, default=float))
    d = res["detection"]
    print(f"audit {d['honest_audit_seconds']:.3f}s / training {d['honest_train_seconds']:.3f}s "
          f"= {d['audit_over_train']:.2f} per honest worker-round; total {res['seconds']:.0f}s")


if __name__ == "__main__":
    main()
