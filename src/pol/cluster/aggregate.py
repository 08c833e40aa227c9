"""Aggregation of the workers' final weights into the next round's model.

"pol": the mean of the accepted updates (verified work only); "mean": the mean of everything
received (plain averaging, no verification: the baseline Byzantine workers hurt); "median": the
coordinate-wise median of everything received (a robust aggregator from the literature, Yin et al.
2018; for an even count the mean of the two middle values). Non-float entries (counters) are
taken from the first update. The order of the updates is the workers' rank order, so the result
is reproducible bitwise.
"""

from __future__ import annotations

import torch


def _stack(updates: list[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    return torch.stack([u[name].to(torch.float32) for u in updates])


def mean(updates: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, first in updates[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float32)
        for u in updates:
            acc += u[name].to(torch.float32)
        out[name] = (acc / len(updates)).to(first.dtype)
    return out


def median(updates: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, first in updates[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        s = _stack(updates, name).sort(dim=0).values
        n = s.shape[0]
        mid = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
        out[name] = mid.to(first.dtype)
    return out


def aggregate(rule: str, updates: list[dict[str, torch.Tensor]],
              current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The next model: `current` unchanged when nothing was counted this round."""
    if not updates:
        return {k: v.clone() for k, v in current.items()}
    fn = median if rule == "median" else mean
    return fn(updates)
