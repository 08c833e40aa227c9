"""Proof size per checkpoint: pol (fp32, fp16) against the reference pattern (torch.save of model
and optimizer state in fp32), for SGD-momentum and Adam, and whether the proof still verifies.

    python benchmarks/bench_size.py
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import torch

from pol.proof.reader import inspect_proof
from pol.prover.trainer import train_task
from pol.registry import build_context
from pol.tasks import build_spec
from pol.verifier import verify

CASES = [("synthetic-resnet20", {"n_train": 256}), ("digits-cnn", None), ("digits-mlp", None)]


def reference_bytes(task: str, params) -> int:
    """torch.save({'net', 'opt'}) after one step, as the reference implementation stores."""
    spec, train, _ = build_spec(task, dataset_params=params)
    ctx = build_context(spec, torch.device("cpu"))
    from pol.step import update
    x, y = torch.from_numpy(train.x[:spec.batch_size]), torch.from_numpy(train.y[:spec.batch_size])
    update(ctx, x, y, [spec.optimizer.lr], 0)
    buf = io.BytesIO()
    torch.save({"net": ctx.model.state_dict(), "opt": ctx.optimizer.state_dict()}, buf)
    return len(buf.getvalue()), spec.optimizer.name


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pol-size-"))
    print("| task | optimizer | reference bytes/ckpt | pol fp32 | ratio | pol fp16 | ratio | fp16 "
          "--all verifies: all 4 metrics / ℓ1,ℓ2,cos (auto δ) |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for task, params in CASES:
            ref, opt = reference_bytes(task, params)
            row = {}
            for prec in ("fp32", "fp16"):
                p = tmp / f"{task}-{prec}"
                train_task(task, p, epochs=1, k=2, precision=prec, dataset_params=params)
                info = inspect_proof(p)
                sizes = [f["size"] for n, f in info["files"].items()
                         if n.startswith("checkpoints/") and not n.endswith("_000000000.safetensors")]
                row[prec] = (sum(sizes) / len(sizes),
                             (verify(p, all_segments=True).valid,
                              verify(p, all_segments=True, metrics=("l1", "l2", "cos")).valid)
                             if prec == "fp16" else None)
            print(f"| {task} | {opt} | {ref} | {row['fp32'][0]:.0f} | {row['fp32'][0] / ref:.3f} "
                  f"| {row['fp16'][0]:.0f} | {row['fp16'][0] / ref:.3f} | {row['fp16'][1][0]} / "
                  f"{row['fp16'][1][1]} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
