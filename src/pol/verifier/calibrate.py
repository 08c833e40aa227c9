"""δ calibration: measure the replay noise of a proof on this machine/device and recommend δ.

Replays the proof's segments (all, or top-Q) with no tolerance applied, and reports per metric the
distribution of the reproduction error against the size of the claimed updates. δ is recommended
as `margin × the largest error seen`; the evidence says whether that δ still sits well below the
updates it must tell apart (if not, the noise of this device pairing is too large for this k: use
deterministic training, exact mode, or a smaller k).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass

import numpy as np

from pol.verifier.core import VerifyOptions, verify
from pol.verifier.distances import METRICS


@dataclass
class Calibration:
    proof: str
    device: str
    segments: int
    exact_segments: int
    quantiles: dict[str, dict[str, float]]  # metric -> {p50, p90, max} of the replay error
    update_min: dict[str, float]  # smallest claimed segment update per metric
    relative_max: float  # max over segments of ℓ2 error / ℓ2 update
    recommended: dict[str, float]
    margin: float
    separable: dict[str, bool]  # recommended δ below the smallest update?

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [f"calibration of {self.proof} on {self.device}: {self.segments} segment(s) "
                 f"replayed, {self.exact_segments} bitwise exact"]
        for m in self.quantiles:
            q = self.quantiles[m]
            lines.append(f"  {m:4}  error p50 {q['p50']:.3e}  p90 {q['p90']:.3e}  max "
                         f"{q['max']:.3e}   smallest update {self.update_min[m]:.3e}   → δ "
                         f"{self.recommended[m]:.3e}{'' if self.separable[m] else '  (NOT below the smallest update)'}")
        lines.append(f"  max relative error (ℓ2 error / ℓ2 update): {self.relative_max:.3e}")
        lines.append(f"  use: pol verify {shlex.quote(self.proof)} " + " ".join(
            f"--delta {m}={v:.3e}" for m, v in self.recommended.items()))
        if not all(self.separable.values()):
            lines.append("  warning: replay noise is as large as honest updates for some metric; "
                         "a δ that accepts honest proofs would also accept small forgeries. Prefer "
                         "--deterministic training (exact mode) or a smaller k.")
        return "\n".join(lines)


def calibrate(path: str | os.PathLike, *, data: str | None = None, device: str = "cpu",
              q: int | None = None, margin: float = 3.0, progress: bool = False,
              trusted_modules: tuple[str, ...] = ()) -> Calibration:
    opts = VerifyOptions(q=q or 1, all_segments=q is None, policy="paper",
                         delta={m: float("inf") for m in METRICS}, data=data, device=device,
                         progress=progress, trusted_modules=trusted_modules)
    report = verify(path, opts)
    segs = report.segments
    if not segs:
        failed = "; ".join(f"{c.name}: {c.reason}" for c in report.checks if c.blocks)
        from pol.errors import ProofFormatError
        raise ProofFormatError(f"nothing to calibrate on: no segment was replayed ({failed})")
    quant, upd, rec, sep = {}, {}, {}, {}
    for m in METRICS:
        err = np.array([s.error[m] for s in segs])
        quant[m] = {"p50": float(np.quantile(err, 0.5)), "p90": float(np.quantile(err, 0.9)),
                    "max": float(err.max())}
        upd[m] = float(min(s.update[m] for s in segs))
        rec[m] = margin * quant[m]["max"]
        sep[m] = rec[m] < upd[m]
    rel = max(s.error["l2"] / max(s.update["l2"], 1e-300) for s in segs)
    return Calibration(proof=str(path), device=device, segments=len(segs),
                       exact_segments=sum(s.exact for s in segs), quantiles=quant,
                       update_min=upd, relative_max=float(rel), recommended=rec, margin=margin,
                       separable=sep)
