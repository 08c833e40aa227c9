"""Verification time of one proof in this process: `verify(proof, all_segments=True)` run
--repeats times after one warm-up; prints the median seconds as JSON. For before/after comparisons
of two code trees, run it alternately under each tree's PYTHONPATH (benchmarks/ab_trees.sh).

    python benchmarks/bench_ab_verify.py PROOF [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("proof")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", action="store_true", help="the default top-Q selection, not --all")
    args = ap.parse_args()
    import torch

    from pol.verifier import verify
    kw = {"device": args.device, "all_segments": not args.top, "entropy": b"ab-bench"}
    rep = verify(args.proof, **kw)
    assert rep.valid, rep.render()
    times = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        verify(args.proof, **kw)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "times": times,
                      "steps": rep.stats["replayed_steps"]}))


if __name__ == "__main__":
    main()
