"""Exact mode's host work per step, on the CPU with a model so small that its arithmetic is
negligible: the time spent in each part of `ExactStep` (start, gradients' rounding, end) and the
number of top-level torch operations each makes, with the GPU's recording path forced
(`RoundingLog.deferred`). What a GPU host pays per step in launches and Python, measured here.

    python benchmarks/profile_exact_host.py --task gpt
    python benchmarks/profile_exact_host.py --task resnet20
"""

import argparse
import collections
import json
import time

import torch

from bench_exact import task_spec
from pol.spec import StepSpec
from pol.step import build_context, numerics
from pol.step import core as C
from pol.step import exact as E

PARTS = ("__init__", "round_grads", "finish")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="gpt", choices=["gpt", "resnet20"])
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    ns = argparse.Namespace(gpt_layers=8, gpt_heads=2, gpt_embd=32, gpt_block=16, gpt_batch=2,
                            gpt_steps=2 * a.steps + 8, gpt_vocab=64, seed=0, k=10, epochs=1,
                            resnet_steps=10)
    dev = torch.device("cpu")
    spec, train, _ = task_spec(a.task, ns, dev)
    if a.task == "resnet20":
        spec = spec.with_(batch_size=2)
    spec = spec.with_(step=StepSpec(exact=True))
    torch.set_num_threads(1)
    seconds: collections.Counter = collections.Counter()
    ops: dict[str, int] = {}
    profile = [False]
    for name in PARTS:
        real = getattr(E.ExactStep, name)

        def timed(*args, _real=real, _name=name, **kw):
            if profile[0]:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                    out = _real(*args, **kw)
                ops[_name] = sum(1 for e in p.events() if e.cpu_parent is None)
                return out
            t0 = time.perf_counter()
            out = _real(*args, **kw)
            seconds[_name] += time.perf_counter() - t0
            return out
        setattr(E.ExactStep, name, timed)
    with numerics(spec, dev):
        ctx = build_context(spec, dev)
        ctx.exact.deferred = True
        B = spec.batch_size

        def step(t: int) -> None:
            i = t * B % (len(train.x) - B)
            C.update(ctx, torch.from_numpy(train.x[i:i + B]), torch.from_numpy(train.y[i:i + B]),
                     [1e-3], t)
        for t in range(3):
            step(t)
        seconds.clear()
        t0 = time.perf_counter()
        for t in range(3, 3 + a.steps):
            step(t)
        wall = (time.perf_counter() - t0) / a.steps
        profile[0] = True
        step(3 + a.steps)
    out = {"task": a.task, "step_ms": wall * 1e3,
           "part_ms": {k: seconds[k] / a.steps * 1e3 for k in PARTS},
           "part_top_level_ops": ops}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
