"""The coordinator (rank 0): hands out rounds, audits every result, aggregates verified work,
and records every verdict and every accepted round on its ledger (`pol.cluster.state`).

One round: the workers registered and alive are its participants; each gets the current weights, a
shard and a seed derived from the coordinator's seed (`pol.cluster.assign`) and `local_steps`
steps; results are audited as they arrive (`pol.cluster.audit`), a worker that dies or stays silent
past the deadline is recorded absent and the round completes without it; the counted updates are
aggregated (`pol.cluster.aggregate`); the round is committed (checkpoint, then ledger entry).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pol.cluster import assign, budget
from pol.cluster.aggregate import aggregate
from pol.cluster.audit import RoundInputs, Verdict, audit
from pol.cluster.config import ClusterConfig
from pol.cluster.state import RunState


class CoordinatorDied(SystemExit):
    """Fault injection (`die_at`): the coordinator stops as a killed process would."""


@dataclass
class RoundSummary:
    round: int
    participants: list[int]
    accepted: list[int]
    rejected: dict[int, str]
    absent: dict[int, str]
    counted: list[int]
    test_accuracy: float
    seconds: float
    audit_seconds: float
    model_sha256: str


@dataclass
class JobResult:
    """What a job did: per round, and every verdict (with the simulation's ground truth)."""

    out: str
    config: dict
    first_round: int
    rounds: list[RoundSummary] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    plan: dict = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].test_accuracy if self.rounds else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobResult":
        rounds = [RoundSummary(**{**r, "rejected": {int(k): v for k, v in r["rejected"].items()},
                                  "absent": {int(k): v for k, v in r["absent"].items()}})
                  for r in d["rounds"]]
        return cls(**{**d, "rounds": rounds})

    def render(self) -> str:
        lines = [f"run {self.out}: rounds {self.first_round}..{self.first_round + len(self.rounds) - 1}"
                 f" ({self.config['workers']} workers, aggregate {self.config['aggregate']}, "
                 f"budget {self.config['budget']:g}: {self.plan.get('replayed', '?')} of "
                 f"{self.plan.get('segments', '?')} segments per worker-round)"]
        for r in self.rounds:
            bad = ", ".join(f"{w}: {why}" for w, why in sorted({**r.rejected, **r.absent}.items()))
            lines.append(f"round {r.round}: accepted {r.accepted or '-'}  test accuracy "
                         f"{r.test_accuracy:.2%}  {r.seconds:.2f}s (audits {r.audit_seconds:.2f}s)"
                         + (f"\n  not counted: {bad}" if bad else ""))
        return "\n".join(lines)


def initial_weights(config: ClusterConfig) -> dict[str, torch.Tensor]:
    """W_0 of the job: the task's model initialized from the job's seed (on the CPU whatever the
    job's device: the same W_0 on every machine)."""
    from pol.step import MODEL_PREFIX, build_context
    ctx = build_context(assign.base_spec(config), torch.device("cpu"))
    return {MODEL_PREFIX + k: v.detach().clone() for k, v in ctx.model.state_dict().items()}


def compatible(weights: dict[str, torch.Tensor] | None, current: dict[str, torch.Tensor]) -> bool:
    """Same names, shapes and dtypes as the model (what even unverified averaging needs)."""
    return weights is not None and set(weights) == set(current) and all(
        weights[k].shape == current[k].shape and weights[k].dtype == current[k].dtype
        for k in current)


class Coordinator:
    def __init__(self, config: ClusterConfig, link) -> None:
        self.config, self.link = config, link
        self.workers = list(range(1, config.workers + 1))
        self.plan = budget.plan_of(config)
        self.base = assign.base_spec(config)
        self.train, self.test = assign.task_data(config.task, config.dataset_params)
        self.participations = {w: 0 for w in self.workers}
        self.hard_exit = False  # die_at: os._exit, as a killed process (a rank of its own)

    def run(self) -> JobResult:
        cfg = self.config
        state = RunState(cfg, initial=initial_weights(cfg))
        try:
            start, weights = state.resume_point()
            state.append("cluster.start", {"first_round": start, "rounds": cfg.rounds,
                                           "config": cfg.to_dict()})
            result = JobResult(str(state.dir), cfg.to_dict(), start,
                               plan={**asdict(self.plan), "replayed": self.plan.replayed})
            if start < cfg.rounds:
                self.link.wait_ready(self.workers, cfg.quorum or cfg.workers, cfg.join_timeout)
            for r in range(start, cfg.rounds):
                summary, weights = self._round(state, r, weights, result)
                result.rounds.append(summary)
            self.link.finish()
            (state.dir / "job.json").write_text(json.dumps(result.to_dict(), default=float))
            return result
        finally:
            state.close()

    def _participants(self) -> list[int]:
        who = self.link.ready(self.workers)
        if not who:  # everyone dropped: wait for someone to register again
            who = self.link.wait_ready(self.workers, 1, self.config.round_timeout)
        return who

    def _inputs(self, state: RunState, r: int, weights, who: list[int]
                ) -> tuple[RoundInputs, dict[int, bytes]]:
        cfg = self.config
        parent, registry = state.parent(r, weights)
        scratch = state.dir / "scratch" / f"round{r:06d}"
        scratch.mkdir(parents=True, exist_ok=True)
        expected, files, tasks = {}, {}, {}
        for w in who:
            idx = assign.shard_indices(cfg, r, w, len(self.train))
            data = assign.shard(self.train, idx)
            expected[w] = assign.assigned_spec(cfg, self.base, data, r, w)
            files[w] = scratch / f"worker{w}.npz"
            np.savez(files[w], x=data.x, y=data.y)
            tasks[w] = json.dumps({"round": r, "worker": w, "spec": expected[w].to_dict(),
                                   "indices": idx.tolist(), "parent": parent}).encode()
        inp = RoundInputs(cfg, self.plan, r, parent, registry, expected, files,
                          state.dir / "proofs")
        return inp, tasks

    def _round(self, state: RunState, r: int, weights, result: JobResult):
        # long: one round in the order it happens: hand out, audit as results come, commit
        cfg = self.config
        t0 = time.perf_counter()
        who = self._participants()
        inp, tasks = self._inputs(state, r, weights, who)
        self.link.open_round(r, assign.weights_bytes(weights), tasks)
        verdicts: list[Verdict] = []
        seqs: dict[int, int] = {}
        deadline = time.monotonic() + cfg.round_timeout
        for w, msg, why in self.link.collect(r, who, deadline):
            v = audit(inp, w, msg) if msg is not None else Verdict(r, w, "absent", why)
            if v.counted and not compatible(v.weights, weights):
                v.verdict, v.reason, v.weights = "rejected", "weights of another model", None
            b = cfg.behaviour(w)
            v.behaviour, v.acts = str(b), b.acts(r, self.participations[w])
            self.participations[w] += 1
            seqs[w] = state.append("cluster.verdict", v.payload()).seq
            verdicts.append(v)
            result.verdicts.append(v.payload())
        self._maybe_die(r, "verified")
        verdicts.sort(key=lambda v: v.worker)
        counted = [v for v in verdicts if v.counted]
        new = aggregate(cfg.aggregate, [v.weights for v in counted], weights)
        absent = [v.worker for v in verdicts if v.verdict == "absent"]
        self.link.close_round(r, who, absent)
        acc = self._accuracy(new)
        summary = RoundSummary(
            r, who, [v.worker for v in verdicts if v.verdict == "accepted"],
            {v.worker: v.reason for v in verdicts if v.verdict == "rejected"},
            {v.worker: v.reason for v in verdicts if v.verdict == "absent"},
            [v.worker for v in counted], acc, 0.0, sum(v.seconds for v in verdicts), "")
        entry = state.commit(r, new, {"counted": [[v.worker, v.root_digest, seqs[v.worker]]
                                                  for v in counted],
                                      "verdicts": [seqs[w] for w in sorted(seqs)],
                                      "test_accuracy": acc})
        self._maybe_die(r, "committed")
        self._cleanup(state, r, verdicts)
        summary.model_sha256 = entry.payload["model_sha256"]
        summary.seconds = time.perf_counter() - t0
        return summary, new

    def _accuracy(self, weights) -> float:
        from pol.prover.trainer import accuracy
        from pol.step import MODEL_PREFIX, build_context
        ctx = build_context(self.base, torch.device(self.config.device))
        ctx.model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in weights.items()})
        return accuracy(ctx, self.test)

    def _maybe_die(self, r: int, stage: str) -> None:
        if self.config.die_at == f"{r}:{stage}":
            if self.hard_exit:
                os._exit(70)
            raise CoordinatorDied(70)

    def _cleanup(self, state: RunState, r: int, verdicts: list[Verdict]) -> None:
        shutil.rmtree(state.dir / "scratch" / f"round{r:06d}", ignore_errors=True)
        keep = self.config.keep_proofs
        for v in verdicts:
            p = state.dir / "proofs" / f"round{r:06d}-worker{v.worker}"
            if keep == "none" or (keep == "rejected" and v.verdict != "rejected"):
                shutil.rmtree(p, ignore_errors=True)


def proof_dirs(out: str | Path) -> list[Path]:
    return sorted((Path(out) / "proofs").glob("round*-worker*"))
