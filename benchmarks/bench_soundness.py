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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-train", type=int, default=0, help="synthetic tasks: training samples")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from pol.proof.hashing import sample_leaves
    from pol.proof.reader import open_proof
    from pol.prover.trainer import train_task
    from pol.step import build_context
    from pol.verifier import parallel
    from pol.verifier.core import _param_names, load_verifier_data

    out = Path(tempfile.mkdtemp(prefix="pol-bench-soundness-")) / "proof"
    extra = {"dataset_params": {"seed": 0, "n_train": args.n_train, "n_test": 100}} \
        if args.n_train else {}
    train_task(args.task, out, epochs=args.epochs, k=args.k, device=args.device, **extra)
    proof = open_proof(out)
    spec = proof.manifest.spec
    data = load_verifier_data(spec, None)
    leaves = sample_leaves(data.x, data.y)
    dev = torch.device(args.device)
    if dev.type == "cuda" and spec.deterministic:
        import os
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    ctx = build_context(spec, dev)
    names = _param_names(ctx.model)
    ck = proof.manifest.checkpoints
    cache: dict = {}

    def load(t):
        if t not in cache:
            cache[t] = proof.load_checkpoint(t)
        return cache[t]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    flips: list[float] = []
    exact = [0]

    def run(probe: bool) -> float:
        sync()
        t0 = time.perf_counter()
        for a, b in zip(ck, ck[1:]):
            o = parallel.replay_segment(ctx, proof, data, leaves, names, a, b, ("l2",), probe,
                                        load)
            exact[0] += o.exact
            if probe:
                flips.append(o.flip)
        sync()
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
           "device": args.device, "min_flip_ratio": min(flips),
           "exact_fraction": exact[0] / (3 * args.repeats + 1) / (len(ck) - 1), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d")}
    print(f"{args.task} k={args.k}: replay with the data-dependence probe ÷ without: "
          f"{res['probe_on_over_off']:.3f} (A/A {res['aa_control']:.3f}); expected ≈ 1 + 1/k "
          f"= {1 + 1 / args.k:.3f} (one extra step per segment)")
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
