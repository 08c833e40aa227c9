"""The coordinator's verdict on one worker's result: nothing the worker sends is trusted.

In order of cost, each a reason to reject: the message parses (bounded); it is for this round and
worker; the proof unpacks (pol's archive reader, bounded); its spec is the assignment (the shard's
dataset commitment, the seed that fixes the batch order, the model, optimizer, steps and k; the
worker's own hardware claims aside); it warm-starts from this round's model; the weights sent are
exactly its final checkpoint's; and `pol.verifier.verify` (the hardened policy) replays the planned
segments: top-Q by claimed update and random ones from the coordinator's own entropy, with the
round's registry holding the parent (so the verifier checks W_0 = the weights sent out, bitwise),
exact mode required by default.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pol.cluster import assign
from pol.cluster.budget import SegmentPlan
from pol.cluster.config import ClusterConfig
from pol.errors import PolError

MAX_MESSAGE_BYTES = 1 << 31
# exact mode: the data-dependence probe passes when a sign-flipped gradient moves any bit
EXACT_FLIP_MIN = 1e-300


def coordinator_policy(config: ClusterConfig):
    """The hardened policy; in exact mode its data-dependence bound is "the gradient moves the
    step's result at all" instead of the default's 1e-3 of the update.

    Why: a bitwise replay of a step whose result depends on the gradient proves the gradient was
    computed (a forger who skips it cannot produce those bits), so in exact mode any dependence
    suffices. The relative bound is for tolerant replay, where a small dependence could hide
    inside δ; and it rejects honest proofs: with SGD momentum μ the flipped gradient moves a step
    by 2‖g‖/‖μm + g‖ of its update, below 1e-3 for batches whose gradient is small against the
    momentum (measured: 3 of 8,000 honest, bitwise-exact segments of digits-mlp late in training,
    0.0004–0.0006). The lr, momentum and a fresh optimizer at step 0 are the assignment's anyway.
    """
    from dataclasses import replace

    from pol.verifier import HARDENED
    if not config.require_exact:
        return HARDENED
    return replace(HARDENED, bounds=replace(HARDENED.bounds, flip_min=EXACT_FLIP_MIN))


@dataclass
class Verdict:
    round: int
    worker: int
    verdict: str  # accepted | rejected | absent | unverified
    reason: str = ""
    root_digest: str = ""
    failed_checks: list[str] = field(default_factory=list)
    replayed_steps: int = 0
    segments: list[list] = field(default_factory=list)  # [start, why, passed]
    entropy: str = ""
    seconds: float = 0.0
    worker_seconds: float | None = None  # what the worker says its assignment took (untrusted)
    behaviour: str = "honest"  # the simulation's ground truth (never used for the verdict)
    acts: bool = False
    weights: dict | None = field(default=None, repr=False)

    @property
    def counted(self) -> bool:
        """Whether its weights go into the aggregate."""
        return self.verdict in ("accepted", "unverified")

    def payload(self) -> dict:
        d = asdict(self)
        del d["weights"]
        return d


@dataclass
class RoundInputs:
    """What the coordinator audits a round's results against."""

    config: ClusterConfig
    plan: SegmentPlan
    round: int
    parent: dict  # the manifest init every worker must claim
    registry: Path  # a registry ledger holding the parent (the round model)
    expected: dict  # worker -> assigned TrainingSpec
    data_files: dict  # worker -> the shard as .npz (what the verifier replays on)
    proofs: Path  # where received proofs are unpacked


def _reject(v: Verdict, reason: str) -> Verdict:
    v.verdict, v.reason = "rejected", reason
    return v


def audit(inp: RoundInputs, worker: int, data: bytes) -> Verdict:
    """The verdict on worker's message (accepted: its weights in `weights`)."""
    t0 = time.perf_counter()
    v = Verdict(inp.round, worker, "rejected")
    try:
        _audit(inp, worker, data, v)
    except (PolError, ValueError, OSError) as e:
        _reject(v, f"unusable result: {e}")
    v.seconds = time.perf_counter() - t0
    if not v.counted:
        v.weights = None
    return v


def _audit(inp: RoundInputs, worker: int, data: bytes, v: Verdict) -> None:
    msg = assign.unpack_message(data, MAX_MESSAGE_BYTES)
    if msg.header.get("round") != inp.round or msg.header.get("worker") != worker:
        _reject(v, "the message is not this worker's result for this round")
        return
    told = msg.header.get("seconds")
    if isinstance(told, (int, float)) and not isinstance(told, bool) and 0 <= told < 1e9:
        v.worker_seconds = float(told)
    if set(msg.blobs) != {"weights", "proof"}:
        _reject(v, "the message does not hold weights and a proof")
        return
    weights = assign.weights_from_bytes(msg.blobs["weights"])
    if inp.config.aggregate != "pol":  # the baselines: everything received, unchecked
        v.verdict, v.reason, v.weights = "unverified", "not verified (baseline aggregation)", weights
        return
    proof = _unpack(inp, worker, msg.blobs["proof"])
    problem = _claims(inp, worker, proof, weights, v)
    if problem:
        _reject(v, problem)
        return
    report = _verify(inp, worker, proof, v)
    if report.valid:
        v.verdict, v.reason, v.weights = "accepted", "verified", weights
    else:
        _reject(v, ("verification inconclusive on the coordinator's hardware: "
                    if report.inconclusive else "verification failed: ")
                + ", ".join(v.failed_checks))


def _unpack(inp: RoundInputs, worker: int, blob: bytes) -> Path:
    from pol.crypto.archive import unpack
    from pol.crypto.errors import ArchiveError
    dest = inp.proofs / f"round{inp.round:06d}-worker{worker}"
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    limit = max(len(blob), 1) * 2
    try:
        unpack(io.BytesIO(blob), dest, max_total_bytes=limit, max_entry_bytes=limit,
               max_entries=100_000)
    except ArchiveError as e:
        raise ValueError(f"the proof archive is unusable ({e})") from None
    return dest


def _claims(inp: RoundInputs, worker: int, proof: Path, weights: dict, v: Verdict) -> str:
    """The cheap checks before any replay; "" when they pass."""
    from pol.proof.reader import open_proof
    from pol.protocol.chain import final_model, same_weights
    p = open_proof(proof)
    m = p.manifest
    v.root_digest = m.root_digest
    bad = assign.spec_mismatch(inp.expected[worker], m.spec)
    if bad:
        return bad
    if m.init != inp.parent:
        return "the proof does not start from this round's weights (init is not the round model)"
    if m.total_steps != inp.config.local_steps:
        return f"the proof has {m.total_steps} steps, {inp.config.local_steps} were assigned"
    ok, why = same_weights(final_model(p), {k: t for k, t in weights.items()})
    if not ok:
        return f"the weights sent are not the proof's final checkpoint ({why})"
    return ""


def _verify(inp: RoundInputs, worker: int, proof: Path, v: Verdict):
    from pol.verifier import verify
    entropy = os.urandom(32)  # the coordinator's own: the worker cannot predict the segments
    v.entropy = entropy.hex()
    plan = inp.plan
    report = verify(proof, q=plan.q, random_per_epoch=plan.random,
                    all_segments=plan.all_segments, data=str(inp.data_files[worker]),
                    registry=str(inp.registry), entropy=entropy,
                    policy=coordinator_policy(inp.config),
                    require_exact=inp.config.require_exact, device=inp.config.device)
    v.failed_checks = [c.name for c in report.checks if c.blocks]
    v.replayed_steps = int(report.stats.get("replayed_steps", 0))
    v.segments = [[s.start, s.why, bool(s.passed)] for s in report.segments]
    return report
