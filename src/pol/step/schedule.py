"""The learning rate of every step, expanded from the spec's schedule in one place."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pol.spec import ScheduleSpec, TrainingSpec

__all__ = ["lrs_at", "lr_table"]


def lrs_at(schedule: ScheduleSpec, bases: Sequence[float], t: int, total_steps: int) -> list[float]:
    """Step t's lr of each parameter group, from the group's base lr."""
    return [schedule.lr_at(b, t, total_steps) for b in bases]


def lr_table(spec: TrainingSpec, total_steps: int) -> np.ndarray:
    """[total_steps] the declared lr of every step from the spec's base lr (what the verifier
    checks each recorded lr against, and what a replay of a declared schedule uses)."""
    base = spec.optimizer.lr
    return np.array([spec.schedule.lr_at(base, t, total_steps) for t in range(total_steps)])
