"""Checks of what the proof claims about its run, before any replay."""

from __future__ import annotations

import numpy as np

from pol.proof.hashing import merkle_root
from pol.verifier import soundness
from pol.verifier.checks import CheckName, CheckResult


def dataset_commitment(data, leaves: np.ndarray, spec, root: bytes | None = None) -> CheckResult:
    """The verifier's data must hash to the committed Merkle root (else replay proves nothing).
    `root`: the leaves' root where the caller has it already (`session.dataset_leaves`)."""
    root = (root if root is not None else merkle_root(leaves)).hex()
    ok = len(data) == spec.data.size and root == spec.data.root
    return CheckResult(CheckName.DATASET_COMMITMENT, ok,
                       "the data hashes to the committed Merkle root" if ok else
                       f"the data given ({len(data)} samples, root {root[:16]}…) is not the "
                       f"committed dataset ({spec.data.size} samples, root "
                       f"{spec.data.root[:16]}…)")


def learning_rates(proof) -> CheckResult:
    """The recorded lr of every step against the declared schedule."""
    m, spec = proof.manifest, proof.manifest.spec
    if spec.schedule.name == "recorded":
        return CheckResult(CheckName.LEARNING_RATES, None, "no schedule declared: replay uses "
                           "the lr recorded for every step")
    from pol.step import lr_table
    T, base = m.total_steps, spec.optimizer.lr
    if spec.optimizer.group_lrs:  # one column per parameter group, each from its own base lr
        expected = np.array([[spec.schedule.lr_at(g, t, T) for g in spec.optimizer.group_lrs]
                             for t in range(T)]).reshape(T, -1)
    else:
        expected = lr_table(spec, T)[:, None]
    if proof.lrs.shape[1] != expected.shape[1]:
        return CheckResult(CheckName.LEARNING_RATES, False, f"the proof records "
                           f"{proof.lrs.shape[1]} lr(s) a step, its spec declares "
                           f"{expected.shape[1]} parameter group(s)")
    bad = np.nonzero(~np.isclose(proof.lrs, expected, rtol=1e-6, atol=0))[0]
    return CheckResult(CheckName.LEARNING_RATES, bad.size == 0,
                       "every step's lr follows the declared schedule" if bad.size == 0 else
                       f"{len(np.unique(bad))} step(s) use an lr outside the declared "
                       f"{spec.schedule.name} schedule with base lr {base} (first: step "
                       f"{int(bad[0])}, recorded {proof.lrs[bad[0]].tolist()}, declared "
                       f"{expected[bad[0]].tolist()})")


def hyperparameters(spec, bounds: soundness.Bounds) -> CheckResult:
    probs = soundness.hyperparameter_problems(spec, bounds)
    return CheckResult(CheckName.HYPERPARAMETERS, not probs,
                       "optimizer hyperparameters within the policy bounds" if not probs else
                       "; ".join(probs) + ": a step this small or this damped can hide any "
                       "trajectory", bound=str(bounds))


def epoch_structure(proof) -> CheckResult:
    m = proof.manifest
    prob = soundness.epoch_structure_problem(proof)
    return CheckResult(CheckName.EPOCH_STRUCTURE, prob is None,
                       f"{m.epochs} epoch(s) of {m.steps_per_epoch} steps, each a permutation of "
                       f"the {m.spec.data.size} samples" if prob is None else prob)
