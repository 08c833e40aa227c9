"""Training spread over untrusted workers, every update verified (docs/DISTRIBUTED.md).

A coordinator (rank 0) and workers as processes on torch.distributed: each round the coordinator
sends the current weights and each worker a shard and seed it derives itself; each worker trains
its `local_steps` through pol's step with a proof warm-started from those weights and returns its
final weights with the proof; the coordinator audits every result (assignment, warm start, weights,
and a budget of replayed segments through `pol.verifier.verify`), averages only the accepted
updates, and records every verdict and every accepted round on its signed, hash-chained ledger.

| module | holds |
|---|---|
| `config` | `ClusterConfig`, the worker behaviours (`KINDS`, `Behaviour`, `parse_byzantine`); no torch |
| `budget` | the segment plan a budget buys, the analytic detection probability per behaviour |
| `assign` | the job's spec, each worker's shard and seed, the round model's id, the byte messages |
| `transport` | the c10d store protocol (deadlines, heartbeats), and its in-process twin |
| `behaviours` | honest work through pol's step, and every Byzantine behaviour |
| `worker` | one worker's runtime and its loop over the store |
| `audit` | the coordinator's verdict on one result |
| `aggregate` | mean of the accepted updates; plain mean and coordinate-wise median (baselines) |
| `state` | the durable run directory: key, ledger, checkpoints, per-round registries, resume |
| `coordinator` | the rounds |
| `launch` | a rank under torchrun, a whole job on this machine (spawned or torchrun), in-process |

The names below load on first use (`pol distributed --help` imports no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ClusterConfig": "config", "Behaviour": "config", "KINDS": "config", "BYZANTINE": "config",
    "parse_byzantine": "config",
    "segment_plan": "budget", "detection_probability": "budget", "detection_table": "budget",
    "replay_fraction": "budget", "p_random_hit": "budget",
    "JobResult": "coordinator", "RoundSummary": "coordinator",
    "JobFailed": "launch", "run": "launch", "run_local": "launch", "run_rank": "launch",
    "run_inprocess": "launch",
    "accepted_rounds": "state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
