"""Training spread over untrusted workers, every update verified (docs/DISTRIBUTED.md).

A coordinator (rank 0) and workers as processes on torch.distributed: each round the coordinator
sends the current weights and each worker a shard and seed it derives itself; each worker trains
its `local_steps` through pol's step with a proof warm-started from those weights and returns its
final weights with the proof; the coordinator audits every result (assignment, warm start, weights,
and a budget of replayed segments through `pol.verifier.verify`), averages only the accepted
updates, and records every verdict and every accepted round on its signed, hash-chained ledger.

Public: `ClusterConfig`, `Behaviour`, `parse_byzantine`, `KINDS`, `run` / `run_local` /
`run_rank` / `run_inprocess`, `JobResult`, `accepted_rounds`, and the budget analytics
(`segment_plan`, `detection_probability`, `detection_table`, `replay_fraction`).
"""

from pol.cluster.budget import (detection_probability, detection_table, p_random_hit,
                                replay_fraction, segment_plan)
from pol.cluster.config import BYZANTINE, KINDS, Behaviour, ClusterConfig, parse_byzantine
from pol.cluster.coordinator import JobResult, RoundSummary
from pol.cluster.launch import JobFailed, run, run_inprocess, run_local, run_rank
from pol.cluster.state import accepted_rounds

__all__ = ["BYZANTINE", "KINDS", "Behaviour", "ClusterConfig", "JobFailed", "JobResult",
           "RoundSummary", "accepted_rounds", "detection_probability", "detection_table",
           "p_random_hit", "parse_byzantine", "replay_fraction", "run", "run_inprocess",
           "run_local", "run_rank", "segment_plan"]
