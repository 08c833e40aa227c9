"""Initialization check (§V-D4): was W_0 sampled from the claimed initialization distribution?

Per layer, a two-sided Kolmogorov–Smirnov test of W_0's values against the distribution the
recorded strategy implies (from the same table `pol.step.init` uses to initialize, so prover and verifier
cannot disagree). The per-layer significance is α / L (Bonferroni over the L tested layers).
Constant-initialized parameters (norm layers: weight 1, bias 0) must be exactly constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_KS_ELEMENTS = 8  # below this a KS test says nothing useful; such tensors are skipped


@dataclass
class LayerResult:
    name: str
    kind: str
    n: int
    statistic: float
    pvalue: float
    passed: bool


def check_init(model: torch.nn.Module, strategy: str, w0: dict[str, torch.Tensor],
               alpha: float = 0.01) -> tuple[bool, list[LayerResult], float]:
    """Returns (passed, per-layer results, per-layer threshold α/L)."""
    from scipy import stats  # on use: scipy.stats takes about a second to import

    from pol.step.init import expected_distributions

    dists = expected_distributions(model, strategy)
    tested = [n for n, d in dists.items() if d.kind == "const" or w0[n].numel() >= MIN_KS_ELEMENTS]
    n_ks = sum(1 for n in tested if dists[n].kind != "const")
    threshold = alpha / max(n_ks, 1)
    results = []
    for name in tested:
        d = dists[name]
        x = w0[name].detach().to("cpu", torch.float64).reshape(-1).numpy()
        if d.kind == "const":
            ok = bool(np.all(x == d.a))
            results.append(LayerResult(name, "const", x.size, 0.0 if ok else 1.0,
                                       1.0 if ok else 0.0, ok))
            continue
        res = stats.kstest(x, d.cdf().cdf)
        results.append(LayerResult(name, d.kind, x.size, float(res.statistic), float(res.pvalue),
                                   bool(res.pvalue >= threshold)))
    return all(r.passed for r in results), results, threshold
