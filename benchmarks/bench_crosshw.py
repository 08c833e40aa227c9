"""Cross-hardware verification (G3): a proof made on the GPU, verified on the CPU.

1. train synthetic-resnet20 on cuda (default or --deterministic) with a proof;
2. `calibrate` its replay noise on the CPU → recommended δ per metric (margin × max error);
3. verify the honest proof on the CPU with that δ (paper and hardened policies);
4. run spoofing attacks on the same target and verify each spoof on the CPU with the same δ.

    python benchmarks/bench_crosshw.py --n-train 5000 --epochs 2 --k 10 [--deterministic]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pol.attacks import run_attack
from pol.prover.trainer import train_task
from pol.verifier import verify
from pol.verifier.calibrate import calibrate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="synthetic-resnet20")
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--tf32", action="store_true", help="GPU: allow TF32 (pol trains with it off)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--margin", type=float, default=3.0)
    ap.add_argument("--attacks", default="retrain,zhang-init,fang")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pol-xhw-"))
    out: dict = {"args": vars(args)}
    try:
        target = tmp / "target"
        r = train_task(args.task, target, epochs=args.epochs, k=args.k, seed=1, device=args.device,
                       deterministic=args.deterministic, tf32=args.tf32,
                       dataset_params={"n_train": args.n_train} if args.n_train else None)
        out["train_s"] = r.train_seconds
        out["test_accuracy"] = r.test_accuracy
        t0 = time.perf_counter()
        cal = calibrate(target, device="cpu", margin=args.margin)
        out["calibrate_s"] = time.perf_counter() - t0
        out["calibration"] = cal.to_dict()
        print(cal.render())
        delta = cal.recommended
        res = {}
        for policy in ("paper", "hardened"):
            rep = verify(target, device="cpu", delta=delta, policy=policy, all_segments=True)
            res[policy] = {"valid": rep.valid, "failed": [c.name for c in rep.checks if c.failed]}
        out["honest_cpu"] = res
        print("honest GPU proof on CPU with calibrated δ:", res)
        spoofs = {}
        for name in args.attacks.split(","):
            sp = tmp / name
            settings = {"anchor_lr": 0.1} if name == "fang" else {}
            a = run_attack(name, target, sp, measure_honest=False, **settings)
            v = {}
            for policy in ("paper", "hardened"):
                rep = verify(sp, device="cpu", delta=delta, policy=policy)
                v[policy] = {"valid": rep.valid,
                             "failed": [c.name for c in rep.checks if c.failed]}
            spoofs[name] = {"grad_evals": a.grad_evals, **v}
            print(f"spoof {name}: {v}")
        out["spoofs"] = spoofs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
