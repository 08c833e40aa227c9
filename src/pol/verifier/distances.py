"""Distances between two weight states, over the flattened parameter vector (fp64 accumulation,
so the comparison itself adds no noise worth mentioning)."""

from __future__ import annotations

import torch

METRICS = ("l1", "l2", "linf", "cos")


def flat_params(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])


def distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> float:
    """a, b: flat float64 vectors. cos is 1 − cosine similarity of the whole vector."""
    if metric == "l1":
        return float((a - b).abs().sum())
    if metric == "l2":
        return float(torch.linalg.vector_norm(a - b))
    if metric == "linf":
        return float((a - b).abs().max()) if a.numel() else 0.0
    if metric == "cos":
        if torch.equal(a, b):
            return 0.0
        na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
        if na == 0 or nb == 0:
            return 0.0 if na == nb else 1.0
        return float(1.0 - torch.dot(a, b) / (na * nb))
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def all_distances(a: torch.Tensor, b: torch.Tensor, metrics=METRICS) -> dict[str, float]:
    return {m: distance(a, b, m) for m in metrics}


def fp16_rounding_floor(w: torch.Tensor, metric: str) -> float:
    """Expected size of the error that fp16 storage puts on vector `w` (as stored), per metric:
    a round-to-nearest error is uniform within ±ulp/2. Used by the auto δ rule."""
    a = w.abs().clamp_min(2.0 ** -14)
    ulp = torch.exp2(torch.floor(torch.log2(a)) - 10)
    if metric == "l1":
        return float((ulp / 4).sum())
    if metric == "l2":
        return float(torch.sqrt((ulp ** 2 / 12).sum()))
    if metric == "linf":
        return float(ulp.max() / 2) if ulp.numel() else 0.0
    n2 = float((w ** 2).sum())
    return float((ulp ** 2 / 12).sum()) / (2 * n2) if n2 > 0 else 0.0
