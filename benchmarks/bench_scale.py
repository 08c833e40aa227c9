"""Scale (issue 5): nanoGPT-style transformers of three sizes (the largest ≥ 100M parameters),
AdamW, synthetic tokens, trained on the GPU with a proof at k = 100. Per size: prover overhead
(none / pol / A/A control, interleaved), proof bytes per checkpoint, and top-1 verification time.

    python benchmarks/bench_scale.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path


from bench_overhead import LAST, run  # noqa: E402  (same folder)
from pol.proof.reader import inspect_proof
from pol.prover.trainer import train_spec
from pol.registry import resolve_device
from pol.tasks import build_spec
from pol.verifier import verify

SIZES = {"small": {"n_layer": 4, "n_head": 4, "n_embd": 256},
         "medium": {"n_layer": 8, "n_head": 8, "n_embd": 512},
         "large": {"n_layer": 16, "n_head": 12, "n_embd": 768}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="small,medium,large")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="pol-scale-"))
    rows = []
    try:
        for name in args.sizes.split(","):
            dp = {"n_train": args.steps * args.batch_size, "n_test": 64,
                  "block_size": args.block, "vocab_size": 256}
            spec, train, test = build_spec("synthetic-gpt", device=device.type, k=args.k,
                                           batch_size=args.batch_size, dataset_params=dp)
            spec = spec.with_(model=replace(spec.model, kwargs={
                **spec.model.kwargs, **SIZES[name], "block_size": args.block}))
            n_params = None
            times: dict[str, list[float]] = {"none": [], "pol": [], "none2": []}
            loops: dict[str, list[float]] = {m: [] for m in times}
            drains: list[float] = []
            modes = list(times)
            for rep in range(args.repeats):
                for mode in modes[rep % 3:] + modes[:rep % 3]:
                    times[mode].append(run(mode, spec, train, device, args.steps - 10, args.k,
                                           tmp / mode, 10))
                    loops[mode].append(LAST["loop"])
                    if mode == "pol":
                        drains.append(LAST["drain"])
                    shutil.rmtree(tmp / mode, ignore_errors=True)
            med = {m: statistics.median(v) for m, v in times.items()}
            r = train_spec(spec, train, test, tmp / "proof", device=device, durable=False)
            info = inspect_proof(tmp / "proof")
            t0 = time.perf_counter()
            rep = verify(tmp / "proof", device=device.type, policy="paper")
            vt = time.perf_counter() - t0
            from pol.registry import build_model
            n_params = sum(p.numel() for p in build_model(spec.model).parameters())
            row = {"size": name, "params": n_params, "steps": r.total_steps, "k": args.k,
                   "step_ms": 1e3 * med["none"] / (args.steps - 10),
                   "pol_over_none": med["pol"] / med["none"],
                   # without the final drain of the writer (the last checkpoint's write, which a
                   # 200-step run cannot amortize): the training loop's own slowdown
                   "pol_over_none_loop": (statistics.median(loops["pol"])
                                          / statistics.median(loops["none"])),
                   "drain_s": statistics.median(drains),
                   "aa_over_none": med["none2"] / med["none"],
                   "train_with_proof_s": r.train_seconds,
                   "ckpt_bytes": info["checkpoint_bytes_mean"], "proof_bytes": info["total_bytes"],
                   "verify_top1_s": vt, "verify_valid": rep.valid,
                   "replayed_steps": rep.stats["replayed_steps"], "final_loss": r.final_loss}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(tmp / "proof", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| size | params | step ms | pol ÷ none (k=%d) | A/A | ckpt MB | proof MB | verify top-1 s "
          "| replayed steps | train s |" % args.k)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['step_ms']:.1f} | "
              f"{r['pol_over_none']:.3f} | {r['aa_over_none']:.3f} | {r['ckpt_bytes'] / 1e6:.0f} | "
              f"{r['proof_bytes'] / 1e6:.0f} | {r['verify_top1_s']:.1f} | {r['replayed_steps']} | "
              f"{r['train_with_proof_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
