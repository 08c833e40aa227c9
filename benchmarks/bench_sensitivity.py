"""How fast does a tiny difference in the weights grow during training? This is what sets the
cross-hardware reproduction error of a segment: a GPU and a CPU differ by ~1e-7 relative per
step, and the dynamics amplify it. Measured on CPU: W_0 perturbed by relative noise ε, then the
same steps (pol's `update()`, same batches) from both starts; printed: ‖W_t − W′_t‖ / ‖W_0 − W′_0‖.

    python benchmarks/bench_sensitivity.py --task synthetic-resnet20 --steps 10 --lrs 0.1,0.01
    python benchmarks/bench_sensitivity.py --steps 30 --lrs 0.1 --warmup 79 --n-train 2560

`--warmup N`: the lr ramps linearly from lr/N to lr over the first N steps (a standard warm-up),
to see how much a gentler start damps the growth that dominates a first segment's error.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from pol.step import build_context
from pol.step import update
from pol.tasks import build_spec


def trajectory(spec, train, lr: float, steps: int, eps: float,
               warmup: int = 0) -> tuple[torch.Tensor, list]:
    ctx = build_context(spec, torch.device("cpu"))
    if eps:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in ctx.model.parameters():
                p.mul_(1 + eps * torch.randn(p.shape, generator=g))
    flat = lambda: torch.cat([p.detach().flatten().clone() for p in ctx.model.parameters()])  # noqa: E731
    w0, out = flat(), []
    B = spec.batch_size
    for t in range(steps):
        idx = np.arange(t * B, (t + 1) * B) % len(train)
        lr_t = lr * min(1.0, (t + 1) / warmup) if warmup else lr
        update(ctx, torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx]), [lr_t], t)
        out.append(flat())
    return w0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="synthetic-resnet20")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lrs", default="0.1,0.01")
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--n-train", type=int, default=1280)
    ap.add_argument("--warmup", type=int, default=0, help="linear lr warm-up over N steps")
    args = ap.parse_args()
    spec, train, _ = build_spec(args.task, dataset_params={"n_train": args.n_train, "n_test": 16}
                                if "synthetic" in args.task else None)
    for lr in (float(x) for x in args.lrs.split(",")):
        w0a, a = trajectory(spec, train, lr, args.steps, 0.0, args.warmup)
        w0b, b = trajectory(spec, train, lr, args.steps, args.eps, args.warmup)
        d0 = (w0a - w0b).norm().item()
        growth = [(x - y).norm().item() / d0 for x, y in zip(a, b)]
        print(json.dumps({"task": args.task, "lr": lr, "warmup": args.warmup, "initial_gap": d0,
                          "gap_l2_per_step": [float(f"{(x - y).norm().item():.4g}")
                                              for x, y in zip(a, b)],
                          "growth_per_step": [round(v, 1) for v in growth],
                          "update_norm": (a[-1] - w0a).norm().item()}))


if __name__ == "__main__":
    main()
