"""`pol demo`: the whole story in one run — an honest proof verifies, a forged one does not."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.verifier import verify
from pol.verifier.report import Report


def perturb_checkpoint(proof_dir: Path, t: int, norm: float, seed: int = 0) -> None:
    """Add Gaussian noise of ℓ2 norm `norm` (over all parameters) to the checkpoint at step t,
    then recompute the manifest's digests, so that only replay can notice."""
    path = proof_dir / fmt.checkpoint_name(t)
    tensors = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    keys = [k for k, v in tensors.items() if k.startswith("model.") and v.is_floating_point()
            and not k.endswith(("running_mean", "running_var"))]
    noise = {k: torch.randn(tensors[k].shape, generator=g) for k in keys}
    scale = norm / float(torch.sqrt(sum((n.double() ** 2).sum() for n in noise.values())))
    for k in keys:
        tensors[k] = (tensors[k].float() + scale * noise[k]).to(tensors[k].dtype)
    save_file(tensors, str(path), metadata={"format": fmt.FORMAT_NAME, "step": str(t)})
    rehash_manifest(proof_dir)


def _summary(label: str, r: Report) -> str:
    replay = next((c for c in r.checks if c.name == "replay"), None)
    worst = max(r.segments, key=lambda s: s.error["l2"] / max(r.deltas["l2"], 1e-300),
                default=None)
    lines = [f"{label}: {r.verdict.upper()}"]
    if worst is not None:
        lines.append(f"  worst replayed segment [{worst.start}, {worst.end}): "
                     f"ℓ2 error {worst.error['l2']:.3g} vs δ {r.deltas['l2']:.3g}, "
                     f"ℓ∞ {worst.error['linf']:.3g} vs δ {r.deltas['linf']:.3g}, "
                     f"cos {worst.error['cos']:.3g} vs δ {r.deltas['cos']:.3g}"
                     f"{' (bitwise exact)' if worst.exact else ''}")
    failed = [c for c in r.checks if c.blocks]
    for c in failed:
        lines.append(f"  failed check: {c.name} — {c.reason}")
    if replay is not None and not failed:
        lines.append(f"  {replay.reason}")
    return "\n".join(lines)


def run_demo(task: str, base: Path, echo: Callable[[str], None] = print) -> bool:
    from pol.prover.trainer import train_task

    honest = base / "honest"
    echo(f"1/3 training {task} with a proof-of-learning → {honest}")
    r = train_task(task, honest, overwrite=True)
    echo(f"    {r.total_steps} steps in {r.train_seconds:.1f}s, test accuracy "
         f"{r.test_accuracy:.1%}, root digest {r.root_digest[:16]}…")
    echo("2/3 verifying the honest proof (top-1 largest update per epoch)")
    good = verify(honest)
    echo(_summary("    honest proof", good))

    forged = base / "tampered"
    shutil.rmtree(forged, ignore_errors=True)
    shutil.copytree(honest, forged)
    m = good.stats
    ck = fmt.checkpoint_steps(m["total_steps"], r.spec.k)
    # a checkpoint in the middle of the last epoch, perturbed by as much as one honest segment
    # moves the weights there — a subtle forgery, digests recomputed
    last_epoch = [s for s in good.segments if s.epoch == max(x.epoch for x in good.segments)]
    S = m["total_steps"] // r.spec.epochs
    mid = [t for t in ck if (r.spec.epochs - 1) * S < t < m["total_steps"]]
    t_forge = mid[len(mid) // 2] if mid else ck[len(ck) // 2]
    norm = max(s.update["l2"] for s in last_epoch) if last_epoch else 0.1
    perturb_checkpoint(forged, t_forge, norm)
    echo(f"3/3 tampering with a copy: checkpoint at step {t_forge} perturbed by ℓ2 {norm:.3g} "
         "(one honest segment's update), digests recomputed; verifying it")
    bad = verify(forged)
    echo(_summary("    tampered proof", bad))
    ok = good.valid and not bad.valid
    echo("result: the honest proof verifies and the tampered one is rejected" if ok else
         "result: UNEXPECTED — see the verdicts above")
    return ok
