"""Verification policies as frozen data: which checks run and with which bounds.

Two presets: `PAPER` (Algorithm 2 exactly as published: top-Q, δ, KS on W_0) and `HARDENED`
(pol's default: every defence of `pol.verifier.checks`). A policy is data, not a flag tested in
the code: each check asks the policy whether it is on (`policy.has(Defence.X)`) and reads its
bound from it. To make a policy of your own, `dataclasses.replace(HARDENED, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from pol.errors import ConfigError
from pol.verifier.soundness import BOUNDS, Bounds


class Defence(str, Enum):
    """The checks beyond Algorithm 2 (docs/SECURITY.md says what each one stops)."""

    EXACT_MODE = "exact mode"  # δ = 0 where the proof was made on this kind of device
    RELATIVE_ERROR = "relative error"
    UPDATE_SIZE = "update size"
    RANDOM_SEGMENTS = "random segments"
    INIT_REGENERATION = "init regeneration"  # and init rank correlation where it fails
    LOSS_REPLAY = "loss replay"
    HYPERPARAMETERS = "hyperparameters"
    EPOCH_STRUCTURE = "epoch structure"
    OPTIMIZER_STATE = "optimizer state"  # initial state, plausibility, replay of the state
    DATA_DEPENDENCE = "data dependence"
    TOLERANCE = "tolerance"  # report tolerant mode (and fail it with require_exact)


@dataclass(frozen=True)
class Policy:
    name: str
    defences: frozenset[Defence] = frozenset()
    random_per_epoch: int = 1  # RANDOM_SEGMENTS: extra segments per epoch beyond top-Q
    relative_error_max: float = 0.5  # RELATIVE_ERROR: ‖W′_b − W_b‖ ≤ r·‖W_b − W_a‖
    # UPDATE_SIZE: at least one non-exact replayed segment must claim an ℓ2 update ≥ c·δ. The auto
    # δ is the mean single-step update, so a uniform interpolation sits at exactly 1·δ
    update_size_min: float = 1.25
    require_exact: bool = False  # TOLERANCE: fail unless replay is in exact mode
    bounds: Bounds = field(default=BOUNDS)  # hyperparameters, optimizer state, data dependence

    def has(self, d: Defence) -> bool:
        return d in self.defences

    @property
    def hardened(self) -> bool:
        """Any defence beyond Algorithm 2 (the report's and the budget's notion of 'hardened')."""
        return bool(self.defences)

    @property
    def extra_random(self) -> int:
        return self.random_per_epoch if self.has(Defence.RANDOM_SEGMENTS) else 0


PAPER = Policy(name="paper")
HARDENED = Policy(name="hardened", defences=frozenset(Defence))
PRESETS = {p.name: p for p in (HARDENED, PAPER)}


def resolve(policy: "str | Policy", **overrides) -> Policy:
    """A preset by name (or a Policy as given), with the non-default overrides applied."""
    if isinstance(policy, Policy):
        base = policy
    else:
        try:
            base = PRESETS[policy]
        except KeyError:
            raise ConfigError(f"unknown policy {policy!r}: "
                              f"{' or '.join(PRESETS)}") from None
    changes = {k: v for k, v in overrides.items() if v is not None and getattr(base, k) != v}
    return replace(base, **changes) if changes else base
