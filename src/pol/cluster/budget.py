"""The verification budget and the detection probability it buys, per worker behaviour.

A worker's round is one epoch of `L` steps over its shard, checkpointed every `s` steps: n = ⌈L/s⌉
segments. The coordinator replays m = ⌊budget · n⌋ of them (at least q): the q with the largest
claimed update (top-Q) and r = m − q drawn uniformly from the others with its own entropy (the
worker learns which only after it has committed to its proof). `budget` is thus the fraction of the
worker's steps replayed; the hardened verifier adds one gradient step per replayed segment (its
data-dependence check), and reads every checkpoint once (the measured cost is in
docs/DISTRIBUTED.md).

Detection, per behaviour (`detection_probability`):

- a tampered segment whose claimed update is larger than every honest one (noise, a sign-flipped or
  scaled update written into the last checkpoint) is in the top-Q: P = 1 with q ≥ 1;
- a proof in which every segment is wrong (the free-rider's, the forger's straight line, training
  on other data): any replayed segment catches it, P = 1;
- a proof of another assignment (stale, copied) fails the assignment check before any replay: P = 1;
- c wrong segments whose claimed updates are no larger than honest ones (the lazy worker, the
  sparse cheater), none among the top-Q: P = 1 − C(n − q − c, r) / C(n − q, r), the chance that r
  draws without replacement from the n − q other segments hit at least one of the c (a lower
  bound: a wrong segment that makes the top-Q only raises it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pol.cluster.config import BYZANTINE, Behaviour, ClusterConfig


@dataclass(frozen=True)
class SegmentPlan:
    """What the coordinator replays of one worker-round."""

    segments: int  # n
    q: int
    random: int  # r
    all_segments: bool

    @property
    def replayed(self) -> int:
        return self.segments if self.all_segments else min(self.segments, self.q + self.random)


def segment_plan(local_steps: int, segment: int, budget: float, q: int) -> SegmentPlan:
    n = -(-local_steps // segment)
    m = max(q, math.floor(budget * n + 1e-9))
    if m >= n:
        return SegmentPlan(n, min(q, n), 0, True)
    return SegmentPlan(n, q, m - q, False)


def plan_of(config: ClusterConfig) -> SegmentPlan:
    return segment_plan(config.local_steps, config.segment, config.budget, config.q)


def replay_fraction(config: ClusterConfig) -> tuple[float, float]:
    """(replayed steps, gradient steps including the data-dependence check) ÷ the worker's
    steps, per worker-round."""
    p = plan_of(config)
    steps = config.local_steps if p.all_segments else min(config.local_steps,
                                                         p.replayed * config.segment)
    return steps / config.local_steps, (steps + p.replayed) / config.local_steps


def p_random_hit(n: int, q: int, bad: int, r: int) -> float:
    """P(at least one of `bad` segments among r drawn without replacement from n − q)."""
    pool = n - q
    bad = min(bad, pool)
    if bad <= 0 or r <= 0:
        return 0.0
    if r > pool - bad:
        return 1.0
    return 1.0 - math.comb(pool - bad, r) / math.comb(pool, r)


def wrong_segments(behaviour: Behaviour, local_steps: int, segment: int) -> int:
    """How many segments the lazy worker or the sparse cheater gets wrong."""
    n = -(-local_steps // segment)
    if behaviour.kind == "lazy":
        done = lazy_steps_done(behaviour, local_steps)
        return n - done // segment
    if behaviour.kind == "sparse":
        return -(-sparse_steps_faked(behaviour, local_steps) // segment)
    return 0


def lazy_steps_done(behaviour: Behaviour, local_steps: int) -> int:
    return max(0, min(local_steps - 1, math.floor(behaviour.v * local_steps)))


def sparse_steps_faked(behaviour: Behaviour, local_steps: int) -> int:
    return max(1, min(local_steps, round(behaviour.v * local_steps)))


def detection_probability(behaviour: Behaviour, config: ClusterConfig) -> tuple[float, str]:
    """(P(the coordinator rejects the update in a round the behaviour acts in), why)."""
    kind = behaviour.kind
    if kind not in BYZANTINE:
        return 0.0, "sends no wrong update"
    p = plan_of(config)
    if kind in ("stale", "copycat"):
        return 1.0, "assignment check (another round's or worker's proof), no replay"
    if kind in ("noise", "signflip", "scale"):
        return 1.0, "top-Q: the tampered last segment claims the largest update"
    if kind in ("freerider", "forge", "otherdata"):
        return 1.0, "every segment is wrong: any replayed segment"
    if p.all_segments:
        return 1.0, "every segment replayed"
    c = wrong_segments(behaviour, config.local_steps, config.segment)
    return (p_random_hit(p.segments, p.q, c, p.random),
            f"{c} wrong of {p.segments} segments, {p.random} random (lower bound)")


def detection_table(config: ClusterConfig) -> dict[str, tuple[float, str]]:
    """The analytic detection probability of every Byzantine kind, at its default value."""
    return {k: detection_probability(Behaviour(k), config) for k in BYZANTINE}
