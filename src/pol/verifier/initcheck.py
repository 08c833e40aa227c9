"""Initialization check (§V-D4): was W_0 sampled from the claimed initialization distribution?

Per layer, a two-sided Kolmogorov–Smirnov test of W_0's values against the distribution the
recorded strategy implies (from the same table `pol.step.init` uses to initialize, so prover and verifier
cannot disagree). The per-layer significance is α / L (Bonferroni over the L tested layers).
Constant-initialized parameters (norm layers: weight 1, bias 0) must be exactly constant.

The statistic is `scipy.stats.kstest`'s, computed the same way (the values sorted, in float64, the
cdf at each, D+ and D−) with torch ops on a chosen device (default the CPU), one tensor at a time; on a CPU the
sort is numpy's (several times torch's there). The p-value is scipy's own exact distribution of D
(`kstwo.sf`, what `kstest` calls), so p-values equal scipy's (tests/test_init.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from pol.pvalues import PvalueHelper, take_early

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
               alpha: float = 0.01, device: torch.device | str = "cpu",
               helper: PvalueHelper | None = None) -> tuple[bool, list[LayerResult], float]:
    """Returns (passed, per-layer results, per-layer threshold α/L). `device`: where the
    statistics are computed (the verifier's default, the CPU, is where a GPU verifier runs this
    on a thread beside its replays; a device such as a GPU sorts far faster). `helper`: where
    the p-values are computed while this process has not imported scipy.stats (`ks_pvalues`)."""
    from pol.step.init import expected_distributions

    dists = expected_distributions(model, strategy)
    tested = [n for n, d in dists.items() if d.kind == "const" or w0[n].numel() >= MIN_KS_ELEMENTS]
    n_ks = sum(1 for n in tested if dists[n].kind != "const")
    threshold = alpha / max(n_ks, 1)
    results, cache, stats = [], {}, []
    for name in tested:
        d = dists[name]
        if d.kind == "const":
            x = w0[name].detach().to("cpu", torch.float64).reshape(-1).numpy()
            ok = bool(np.all(x == d.a))
            results.append(LayerResult(name, "const", x.size, 0.0 if ok else 1.0,
                                       1.0 if ok else 0.0, ok))
            continue
        stats.append((len(results), ks_statistic(w0[name], d, device, cache), w0[name].numel()))
        results.append(None)
    ps = ks_pvalues([(stat, n) for _, stat, n in stats], helper)
    for (i, stat, n), p in zip(stats, ps):
        results[i] = LayerResult(tested[i], dists[tested[i]].kind, n, stat, p, bool(p >= threshold))
    return all(r.passed for r in results), results, threshold


def ks_statistic(values: torch.Tensor, d, device: torch.device | str = "cpu",
                 cache: dict | None = None) -> float:
    """The two-sided KS statistic of `values` against `d` (a uniform or normal `InitDist`), as
    `scipy.stats.kstest(x, d.cdf().cdf)` computes it, with torch ops on `device` (`cache`: a
    dict kept across calls, for the last size's steps i / n)."""
    x = _sorted64(values.detach().reshape(-1), torch.device(device))
    n = x.numel()
    if d.kind == "normal":  # scipy: ndtr((x - loc) / scale)
        cdf = torch.special.ndtr(x.sub_(d.a).div_(d.b))
    elif d.kind == "uniform":  # scipy: (x - loc) / scale, 0 below the support, 1 above it
        cdf = x.sub_(d.a).div_(d.b - d.a).clamp_(0.0, 1.0)
    else:
        raise ValueError(f"no KS test for a {d.kind} distribution")
    steps = _steps(n, cdf.device, cache)
    diff = steps[1:] - cdf
    d_plus = diff.max()
    d_minus = torch.sub(cdf, steps[:-1], out=diff).max()
    d_plus, d_minus = torch.stack([d_plus, d_minus]).tolist()
    return d_plus if d_plus > d_minus else d_minus


def _steps(n: int, device: torch.device, cache: dict | None) -> torch.Tensor:
    """i / n for i = 0..n (kept in `cache`, the caller's: a model's layers repeat their sizes)."""
    key = (n, device)
    if cache is None or key not in cache:
        steps = torch.arange(n + 1, dtype=torch.float64, device=device).div_(n)
        if cache is None:
            return steps
        cache.clear()
        cache[key] = steps
    return cache[key]


def ks_pvalue(statistic: float, n: int) -> float:
    """scipy's two-sided p-value of a KS statistic over n values (`kstest`'s exact mode)."""
    from scipy import stats  # on use: scipy.stats takes about a second to import
    return float(np.clip(stats.kstwo.sf(statistic, n), 0.0, 1.0))


def ks_pvalues(pairs: list[tuple[float, int]], helper: PvalueHelper | None = None) -> list[float]:
    """`ks_pvalue` of each (statistic, n): by `helper` (default: the one this process started
    early, `pol.pvalues.start_early`, if any) while this process has not imported scipy.stats
    (else, or where the helper fails, here)."""
    if "scipy.stats" not in sys.modules and pairs:
        if helper is None:
            helper = take_early()
        got = helper.pvalues(pairs) if helper is not None else None
        if got is not None:
            return got
    return [ks_pvalue(stat, n) for stat, n in pairs]


def _sorted64(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x's values sorted, as float64 on `device` (sorted before widening: the same order, half the
    bytes; a CPU's through numpy's sort, several times torch's there)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # float16, bfloat16: widened exactly
    if device.type == "cpu":
        return torch.from_numpy(np.sort(x.cpu().numpy())).double()
    return torch.sort(x.to(device)).values.double()
