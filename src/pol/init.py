"""Moved to `pol.step.init` (initialization strategies belong to the step); this module re-exports
it so that old imports keep working."""

from pol.step.init import (INIT_STRATEGIES, InitDist, apply_init, draw_init,  # noqa: F401
                           expected_distributions, seeded_init_mismatch)
from pol.step.init import GPT2_STD, _plan  # noqa: F401

__all__ = ["INIT_STRATEGIES", "InitDist", "apply_init", "expected_distributions"]
