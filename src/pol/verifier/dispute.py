"""Ownership dispute: several proofs claim the same model; who trained it?

Each claimant's proof is verified (top-Q); its final checkpoint's model weights must be within δ
(l2, the auto δ of its own verification) of the disputed weights; with a ledger, its commitment must
be valid and the winner is the valid claimant whose commitment came first. Without a ledger a winner
exists only when exactly one claimant qualifies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
import os
from typing import Any

import torch

from pol.errors import ConfigError, PolError
from pol.step import MODEL_PREFIX


def load_model_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        raise ConfigError(f"--model {path}: no such file")
    try:
        raw = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"--model {path}: not a safetensors file ({e})") from None
    if any(k.startswith(MODEL_PREFIX) for k in raw):
        return {k: v for k, v in raw.items() if k.startswith(MODEL_PREFIX)}
    return {MODEL_PREFIX + k: v for k, v in raw.items()}


def _l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float | None:
    if set(a) != set(b) or any(tuple(a[k].shape) != tuple(b[k].shape) for k in a):
        return None
    s = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a
            if a[k].is_floating_point())
    return s ** 0.5


@dataclass
class Claim:
    """One proof's claim to the disputed model."""

    proof: str
    root_digest: str | None = None
    valid: bool = False
    distance_l2: float | None = None
    delta_l2: float | None = None
    ends_at_model: bool = False
    commitment: dict | None = None  # the ledger's commitment entry, where the ledger has one
    reasons: list[str] = field(default_factory=list)


@dataclass
class DisputeResult:
    """Who trained the disputed model first (`winner`: a proof path, or None) and why."""

    model: str
    ledger: str | None
    winner: str | None
    winner_root_digest: str | None
    why: str
    claims: list[Claim]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dispute(model_path: str, proofs: list[str], options, ledger: str | None = None
            ) -> DisputeResult:
    from pol.protocol.chain import final_model
    from pol.proof.reader import open_proof
    from pol.verifier.core import verify  # same package
    target = load_model_weights(model_path)
    claims: list[Claim] = []
    for p in proofs:
        c = Claim(proof=p)
        claims.append(c)
        try:
            rep = verify(p, dataclasses.replace(options, ledger=ledger))
        except PolError as e:
            c.reasons.append(f"unusable proof: {e}")
            continue
        c.root_digest = rep.root_digest
        c.valid = rep.valid
        if not rep.valid:
            c.reasons.append(f"{rep.verdict} proof (failed: " + ", ".join(
                x.name for x in rep.checks if x.blocks) + ")")
        chk = next((x for x in rep.checks if x.name == "commitment"), None)
        if chk is not None and chk.status == "pass" and isinstance(chk.value, dict):
            c.commitment = chk.value
        if not rep.deltas:
            continue
        try:
            final = final_model(open_proof(p))
        except PolError as e:
            c.reasons.append(f"final checkpoint unreadable: {e}")
            continue
        d = _l2(final, target)
        delta = rep.deltas.get("l2")
        c.distance_l2, c.delta_l2 = d, delta
        if d is None:
            c.reasons.append("the proof's model has other parameters than the disputed model")
        elif delta is None or d > delta:
            c.reasons.append(f"its final weights are {d:.4g} (l2) from the disputed model, "
                             f"over δ = {delta}")
        else:
            c.ends_at_model = True
    winner, why = _rank([c for c in claims if c.valid and c.ends_at_model], ledger)
    return DisputeResult(model=model_path, ledger=ledger,
                         winner=winner.proof if winner else None,
                         winner_root_digest=winner.root_digest if winner else None, why=why,
                         claims=claims)


def _rank(ok: list[Claim], ledger: str | None) -> tuple[Claim | None, str]:
    """The winner among the valid claims that end at the model: the first committed on the ledger;
    without a ledger, the only one."""
    if not ok:
        return None, "no proof is valid and ends at the disputed model"
    if ledger:
        for c in ok:
            if not c.commitment:
                c.reasons.append("no training commitment on the ledger: not ranked in time")
        ok = [c for c in ok if c.commitment]
        if not ok:
            return None, ("no valid proof that ends at the disputed model has a training "
                          "commitment on the ledger")
        ok.sort(key=lambda c: c.commitment["commitment_seq"])
        winner = ok[0]
        for c in ok[1:]:
            c.reasons.append(f"committed later (seq {c.commitment['commitment_seq']})")
        return winner, (f"valid, ends within δ of the model, and committed first (ledger seq "
                        f"{winner.commitment['commitment_seq']}, {winner.commitment['timestamp']}, "
                        f"key {winner.commitment['prover']})")
    if len(ok) == 1:
        return ok[0], ("the only valid proof that ends within δ of the model (no ledger: time not "
                       "checked)")
    return None, (f"{len(ok)} valid proofs end at the model and no ledger orders their "
                  "commitments (pass --ledger DB)")
