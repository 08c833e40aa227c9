"""Spoofing attacks against proof-of-learning (docs/ATTACKS.md), run as an outsider would.

Each attack is a function ``attack_NAME(target_proof, out, **settings) -> AttackResult`` that
writes a forged proof directory (format v1) for the target's final weights, using only public
information (`pol.attacks.common.load_public`): the target's spec, the model weights of its final
checkpoint, and the dataset. The forger picks its own seed.
"""

from __future__ import annotations

from pol.attacks.common import AttackResult, claim_device, load_public
from pol.attacks.later import attack_fang, attack_zhang_init
from pol.attacks.optstate import attack_optimizer_state
from pol.attacks.sparse import attack_sparse_epoch
from pol.attacks.zhang_data import attack_zhang_data
from pol.attacks.zhang_zero import attack_zhang_zero
from pol.attacks.paper import (attack_concatenate, attack_directed_retrain, attack_fineprune,
                               attack_finetune, attack_inverse_gradient, attack_retrain)

ATTACKS = {
    "retrain": attack_retrain,
    "inverse-gradient": attack_inverse_gradient,
    "concatenate": attack_concatenate,
    "directed-retrain": attack_directed_retrain,
    "finetune": attack_finetune,
    "fineprune": attack_fineprune,
    "zhang-init": attack_zhang_init,
    "zhang-data": attack_zhang_data,
    "zhang-zero": attack_zhang_zero,
    "fang": attack_fang,
    "optimizer-state": attack_optimizer_state,
    "sparse-epoch": attack_sparse_epoch,
}

# attacks from the PoL paper itself, which its verifier is claimed to reject
PAPER_ATTACKS = ("retrain", "inverse-gradient", "concatenate", "directed-retrain", "finetune",
                 "fineprune")


def run_attack(name: str, target_proof, out, **settings) -> AttackResult:
    from pol.errors import ConfigError
    try:
        fn = ATTACKS[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}") from None
    device = settings.pop("claim_device", None)
    res = fn(target_proof, out, **settings)
    if device:
        from pol.attacks.common import claim_device
        claim_device(out, device)
        res.settings["claim_device"] = device
        res.notes.append(f"spec.device rewritten to {device!r} (digests recomputed)")
    return res


__all__ = ["ATTACKS", "PAPER_ATTACKS", "AttackResult", "claim_device", "load_public", "run_attack",
           *[f.__name__ for f in ATTACKS.values()]]
