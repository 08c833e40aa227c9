"""Cost of the data-dependence check: each replayed segment's first step is run a second time
with the gradient's sign flipped (plus one reload of the segment's start state).

Measured inside one process on one proof, interleaved: the replay of every segment as the
hardened verifier does it (probe on) against the same replay without the probe, and an A/A pair
(probe off against probe off) as the control. Prints the ratios (median over --repeats rounds)
and one line of JSON.

    python benchmarks/bench_soundness.py --task digits-cnn --epochs 2 --k 10
    python benchmarks/bench_soundness.py --task digits-mlp --epochs 2 --k 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits-cnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from pol.proof.hashing import sample_leaves
    from pol.proof.reader import open_proof
    from pol.prover.trainer import train_task
    from pol.registry import build_context
    from pol.verifier import parallel
    from pol.verifier.core import _param_names, load_verifier_data

    out = Path(tempfile.mkdtemp(prefix="pol-bench-soundness-")) / "proof"
    train_task(args.task, out, epochs=args.epochs, k=args.k)
    proof = open_proof(out)
    spec = proof.manifest.spec
    data = load_verifier_data(spec, None)
    leaves = sample_leaves(data.x, data.y)
    ctx = build_context(spec, torch.device("cpu"))
    names = _param_names(ctx.model)
    ck = proof.manifest.checkpoints
    cache: dict = {}

    def load(t):
        if t not in cache:
            cache[t] = proof.load_checkpoint(t)
        return cache[t]

    def run(probe: bool) -> float:
        t0 = time.perf_counter()
        for a, b in zip(ck, ck[1:]):
            o = parallel.replay_segment(ctx, proof, data, leaves, names, a, b, ("l2",), probe,
                                        load)
            assert o.exact, (a, b)
        return time.perf_counter() - t0

    run(True)  # warm-up (and every checkpoint cached)
    on_off, off_off = [], []
    for _ in range(args.repeats):
        on, off = run(True), run(False)
        off2 = run(False)
        on_off.append(on / off)
        off_off.append(off2 / off)
    res = {"task": args.task, "epochs": args.epochs, "k": args.k, "segments": len(ck) - 1,
           "steps": proof.manifest.total_steps, "threads": args.threads,
           "probe_on_over_off": statistics.median(on_off), "aa_control": statistics.median(off_off),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"{args.task} k={args.k}: replay with the data-dependence probe ÷ without: "
          f"{res['probe_on_over_off']:.3f} (A/A {res['aa_control']:.3f}); expected ≈ 1 + 1/k "
          f"= {1 + 1 / args.k:.3f} (one extra step per segment)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
