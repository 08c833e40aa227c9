"""Core figures (issue 2), measured inside one run:

- normalized reproduction error max ε_repr / d_ref for k = 1, 10 and S (one epoch), per metric,
  where ε_repr is the error of replaying every segment (`--all`) and d_ref the distance between two
  honest models of the same task trained from different seeds (different init and batch order),
  as in the paper's Table I;
- proof size per checkpoint and in total;
- verification time of top-Q (Q = 1, 2) and --all, relative to the training time of the same run.

Usage:
    python benchmarks/bench_core.py --task digits-mlp --epochs 5
    python benchmarks/bench_core.py --task synthetic-resnet20 --epochs 2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pol.prover.trainer import train_task
from pol.proof.reader import inspect_proof, open_proof
from pol.verifier import verify
from pol.verifier.distances import METRICS, all_distances, flat_params


def final_params(proof_dir: Path) -> torch.Tensor:
    p = open_proof(proof_dir)
    t = p.load_checkpoint(p.manifest.total_steps)
    names = sorted(n for n in t if n.startswith("model.") and not n.endswith(
        ("running_mean", "running_var", "num_batches_tracked")))
    return flat_params(t, names)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="digits-mlp")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--ks", default="1,10,S")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--tf32", action="store_true", help="GPU: allow TF32 (pol trains with it off)")
    ap.add_argument("--warmup", type=int, default=0, help="linear lr warm-up steps")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", default=None)
    ap.add_argument("--n-train", type=int, default=None, help="synthetic-cifar training size")
    ap.add_argument("--cross-device", default=None,
                    help="also replay every segment on this device (e.g. cpu for a GPU proof)")
    args = ap.parse_args()
    dp = {"n_train": args.n_train} if args.n_train else None
    tmp = Path(tempfile.mkdtemp(prefix="pol-bench-"))
    rows = []
    try:
        ref = train_task(args.task, tmp / "ref", epochs=args.epochs, seed=12345, k=10**9,
                         device=args.device, deterministic=args.deterministic, tf32=args.tf32, warmup=args.warmup,
                         dataset_params=dp)
        S = ref.total_steps // ref.spec.epochs
        w_ref = final_params(tmp / "ref")
        for kk in args.ks.split(","):
            k = S if kk == "S" else int(kk)
            d = tmp / f"k{k}"
            r = train_task(args.task, d, epochs=args.epochs, seed=1, k=k, device=args.device,
                           deterministic=args.deterministic, tf32=args.tf32, warmup=args.warmup, precision=args.precision,
                           dataset_params=dp)
            d_ref = all_distances(final_params(d), w_ref, METRICS)
            info = inspect_proof(d)
            times = {}
            reports = {}
            for label, kw in (("q1", {"q": 1}), ("q2", {"q": 2}), ("all", {"all_segments": True})):
                t0 = time.perf_counter()
                rep = verify(d, device=args.device, **kw)
                times[label] = time.perf_counter() - t0
                reports[label] = rep
            rep = reports["all"]
            eps = {m: max(s.error[m] for s in rep.segments) for m in METRICS}
            row = {
                "task": args.task, "device": args.device, "k": k, "S": S, "T": r.total_steps,
                "precision": args.precision, "deterministic": args.deterministic,
                "test_accuracy": r.test_accuracy, "train_s": r.train_seconds,
                "valid_all": rep.valid, "exact_segments": sum(s.exact for s in rep.segments),
                "segments": len(rep.segments),
                "eps_over_dref": {m: eps[m] / d_ref[m] if d_ref[m] else None for m in METRICS},
                "d_ref": d_ref, "ckpt_bytes": info["checkpoint_bytes_mean"],
                "total_bytes": info["total_bytes"], "checkpoints": info["num_checkpoints"],
                "verify_s": times, "verify_over_train": {x: v / r.train_seconds
                                                         for x, v in times.items()},
            }
            if args.cross_device:
                t0 = time.perf_counter()
                xr = verify(d, device=args.cross_device, all_segments=True)
                row["cross"] = {
                    "device": args.cross_device, "valid_auto_delta": xr.valid,
                    "seconds": time.perf_counter() - t0,
                    "eps_over_dref": {m: max(s.error[m] for s in xr.segments) / d_ref[m]
                                      for m in METRICS},
                    "eps_over_dref_per_segment_l2": [s.error["l2"] / d_ref["l2"]
                                                     for s in xr.segments]}
            rows.append(row)
            print(json.dumps(row))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env = (f"{platform.node()} {platform.processor() or platform.machine()}, torch "
           f"{torch.__version__}, {torch.get_num_threads()} threads"
           + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""))
    print(f"\n{args.task} on {args.device} ({env})")
    print("| k | T | valid --all | exact segs | ε/d_ref ℓ1 | ℓ2 | ℓ∞ | cos | ckpt KB | total MB "
          "| verify/train q1 | q2 | all |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["eps_over_dref"]
        f = lambda v: "n/a" if v is None else f"{v:.2e}"  # noqa: E731
        vt = r["verify_over_train"]
        print(f"| {r['k']} | {r['T']} | {r['valid_all']} | {r['exact_segments']}/{r['segments']} "
              f"| {f(e['l1'])} | {f(e['l2'])} | {f(e['linf'])} | {f(e['cos'])} "
              f"| {r['ckpt_bytes'] / 1e3:.1f} | {r['total_bytes'] / 1e6:.2f} "
              f"| {vt['q1']:.2f} | {vt['q2']:.2f} | {vt['all']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
