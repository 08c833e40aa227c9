"""Where an exact-mode training run's time goes when its steps run as CUDA graphs
(`pol.step.graphed`): each step's time (synchronized), how it ran (captured, replayed, eager),
and cProfile's top functions of the run.

    python benchmarks/diag_graphed.py --task gpt --gpt-layers 8 --gpt-heads 8 --gpt-embd 512
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_exact import add_task_args, task_spec  # noqa: E402

from pol.prover.trainer import train_spec  # noqa: E402
from pol.spec import StepSpec  # noqa: E402
from pol.step import graphed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="gpt")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--k", type=int, default=10)
    add_task_args(ap, epochs=1, resnet_steps=50, gpt_steps=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    spec, train, _ = task_spec(args.task, args, device)
    spec = spec.with_(step=StepSpec(exact=True))
    steps: list[dict] = []
    real = graphed.graphed_step

    def timed(ctx, parts, t, eager, optimizer_step):
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        before = graphed.describe(ctx) if ctx.graphs is not None else {}
        t0 = time.perf_counter()
        loss = real(ctx, parts, t, eager, optimizer_step)
        sync()
        after = graphed.describe(ctx)
        how = "eager" if after.get("eager_steps", 0) > before.get("eager_steps", 0) else \
            "capture" if after.get("captures", 0) > before.get("captures", 0) else "graph"
        steps.append({"t": t, "ms": 1e3 * (time.perf_counter() - t0), "how": how})
        return loss
    graphed.graphed_step = timed
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prof.enable()
        r = train_spec(spec, train, None, Path(tmp) / "p", device=device, durable=False,
                       overwrite=True)
        prof.disable()
        wall = time.perf_counter() - t0
    graphed.graphed_step = real
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
    by = {}
    for st in steps:
        by.setdefault(st["how"], []).append(st["ms"])
    summary = {h: {"steps": len(v), "ms_median": sorted(v)[len(v) // 2], "ms_max": max(v)}
               for h, v in by.items()}
    out = {"task": args.task, "wall_s": wall, "train_seconds": r.train_seconds,
           "steps": steps, "summary": summary}
    print(json.dumps(summary, indent=1))
    print(f"wall {wall:.2f} s, train_seconds {r.train_seconds:.2f}")
    print("\n".join(s.getvalue().splitlines()[:60]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
