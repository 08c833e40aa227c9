"""The verifier's own budget: how much work a proof may make it do, checked before the work starts.

A proof chooses its own sizes: T and k (how many steps one segment replays), the dataset's
parameters (how much data the verifier generates). Those are honest for honest proofs, but a hostile
one can claim a 2,000,000-step segment or a synthetic dataset of 10^9 samples in a few bytes. The
reader bounds what it reads (`pol.proof.format.Limits`); this module bounds what verification
does with it, from the manifest alone, before the data is generated and before any replay (the
streaming pass already replays segments, and worker processes start before it):

* `max_replay_steps`: the steps the chosen segments replay, at most. With `--all` that is T; with
  top-Q it is, per epoch, the Q + R segments chosen (R random ones under the hardened policy), each
  of at most k steps. A single segment longer than the budget is refused whatever Q is.
* `max_dataset_bytes`: the memory a generated dataset (synthetic-*) needs, estimated from its
  parameters by `pol.datasets.check_generation_budget`.

Going over either raises `pol.proof.format.LimitExceeded` (a `ProofFormatError`: exit 2) with the
limit's name and the `pol verify` option that raises it.
"""

from __future__ import annotations

from typing import Any, Iterable

from pol.errors import LimitExceeded, ProofFormatError
from pol.proof import format as fmt
from pol.verifier.selection import planned as planned_replay
from pol.verifier.selection import segments_per_epoch  # noqa: F401 - re-exported


def _refuse_long_segment(length: int, limits: fmt.Limits) -> None:
    if length > limits.max_replay_steps:
        raise LimitExceeded(f"the proof's segments are up to {length:,} steps long (k); "
                                "replaying even one of them", "max_replay_steps",
                                limits.max_replay_steps)


def check_planned_replay(manifest: fmt.Manifest, limits: fmt.Limits, q: int,
                         all_segments: bool, random_per_epoch: int = 0,
                         probe: bool = False) -> int:
    """Refuse, from the manifest alone, a verification whose replays could exceed
    `limits.max_replay_steps`; returns the bound on the steps replayed (with `probe`, the
    hardened policy's data-dependence step of every segment counts too)."""
    T, k = manifest.total_steps, manifest.k
    _refuse_long_segment(min(k, T), limits)
    n, steps = planned_replay(manifest, q, all_segments, random_per_epoch)
    steps += n if probe else 0
    if steps > limits.max_replay_steps:
        how = (f"--all replays every one of the {T:,} steps" if all_segments else
               f"replaying {n:,} segment(s) of up to {k:,} steps (top-{q}"
               + (f" + {random_per_epoch} random" if random_per_epoch else "")
               + f" per epoch, {manifest.epochs:,} epoch(s)) is up to {steps:,} steps")
        raise LimitExceeded(how, "max_replay_steps", limits.max_replay_steps)
    return steps


def check_replay_budget(manifest: fmt.Manifest, chosen: Iterable[tuple[int, Any]],
                        limits: fmt.Limits) -> int:
    """The exact check once the segments are chosen (`chosen`: (segment index, reason) pairs, as
    `_segments_to_replay` returns them); returns the steps they replay."""
    ck = manifest.checkpoints
    lengths = [ck[i + 1] - ck[i] for i, _ in chosen]
    _refuse_long_segment(max(lengths, default=0), limits)
    steps = sum(lengths)
    if steps > limits.max_replay_steps:
        raise LimitExceeded(f"the {len(lengths):,} chosen segment(s) replay {steps:,} steps",
                                "max_replay_steps", limits.max_replay_steps)
    return steps


def check_dataset_budget(spec, limits: fmt.Limits) -> None:
    """Refuse a generated dataset (synthetic-*) whose parameters in the proof ask for more memory
    than `limits.max_dataset_bytes`, before generating it."""
    from pol.datasets import check_generation_budget
    try:
        check_generation_budget(spec.data.name, dict(spec.data.params), limits.max_dataset_bytes)
    except ValueError as e:
        raise ProofFormatError(f"cannot load the proof's dataset {spec.data.name!r}: {e}") from None


def check_verify_budget(manifest: fmt.Manifest, options) -> None:
    """Every budget check of one verification (`options`: its `VerifyOptions`), before its
    expensive work: the dataset to generate (not for lazy verification, which generates none)
    and the steps to replay."""
    limits = options.limits
    if not options.request_data and not options.reveal:
        check_dataset_budget(manifest.spec, limits)
    policy = options.resolved_policy()
    check_planned_replay(manifest, limits, options.q, options.all_segments,
                         policy.extra_random, probe=policy.hardened)
