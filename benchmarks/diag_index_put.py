"""Does the replay's write of a step's logged directions into the graphs' input (`d.index_put_
((idx,), vals)` in `pol.step.graphed`) wait for the device? Queues a long device sleep, then
times the host side of one call (a call that synchronizes waits out the sleep), with
deterministic algorithms on (pol's default on a GPU) and off, against `scatter_` and
`index_copy_`; then the host ms per call in a loop of 200 without syncs.

    python benchmarks/diag_index_put.py --n 270000 --m 2000
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=270_000)
    ap.add_argument("--m", type=int, default=2_000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    d = torch.zeros(a.n, dtype=torch.int8, device=dev)
    idx = torch.sort(torch.randperm(a.n, device=dev)[:a.m]).values
    vals = torch.randint(1, 3, (a.m,), dtype=torch.int8, device=dev)
    ops = {
        "index_put_": lambda: d.index_put_((idx,), vals),
        "scatter_": lambda: d.scatter_(0, idx, vals),
        "index_copy_": lambda: d.index_copy_(0, idx, vals),
    }
    out = {}
    was = torch.are_deterministic_algorithms_enabled()
    for det in (True, False):
        torch.use_deterministic_algorithms(det)
        for name, op in ops.items():
            key = f"{name} deterministic={det}"
            try:
                op()
                torch.cuda.synchronize()
                torch.cuda._sleep(200_000_000)  # ~0.1 s of device time queued
                t0 = time.perf_counter()
                op()
                waited = time.perf_counter() - t0
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(200):
                    op()
                host = (time.perf_counter() - t0) / 200
                torch.cuda.synchronize()
                loop = (time.perf_counter() - t0) / 200
                out[key] = {"one call behind a 0.1 s sleep, ms": 1e3 * waited,
                            "host ms/call": 1e3 * host, "ms/call with the device": 1e3 * loop}
            except RuntimeError as e:
                out[key] = {"error": str(e)[:120]}
            print(key, out[key], flush=True)
    torch.use_deterministic_algorithms(was)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
