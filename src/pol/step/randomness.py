"""Every random number a step uses, derived from the run's committed seed.

Every step draws its randomness from a seed derived from the run's seed and the global step number:
dropout from `seed_step` (the global generators), augmentation from `augment_generator` (an explicit
generator on the device the spec names), the data order from `epoch_order`, W_0 from
`derive_seed(seed, "init")` (see `pol.step.init.draw_init`). So the RNG state at any checkpoint is a
function of (seed, t), replay can start at any checkpoint, and a prover cannot pick favourable
randomness after the fact once the seed is committed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["derive_seed", "epoch_order", "seed_step", "augment_generator", "init_generator"]


def derive_seed(seed: int, purpose: str, t: int = 0) -> int:
    """A 63-bit seed for `purpose` at step `t`, derived from the run seed by SHA-256."""
    h = hashlib.sha256(f"pol.seed.v1|{seed}|{purpose}|{t}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of an epoch, derived from the committed seed (a verifier can re-derive it)."""
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "order", epoch)))
    return rng.permutation(n)


def seed_step(seed: int, t: int) -> None:
    """Seed the global RNGs (dropout) for step t. Used by `update()` and by the Recorder for loops
    that run their own forward pass, so both draw identical dropout masks."""
    s = derive_seed(seed, "step", t)
    # torch.manual_seed also records a stack trace for lazy CUDA seeding (about 1 ms a call);
    # seeding the generators directly is what it does, minus that.
    torch.default_generator.manual_seed(s)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(s)


def augment_generator(seed: int, t: int, device: torch.device | str) -> torch.Generator:
    """The generator step t's augmentation draws from, on `device`: CUDA's Philox and the CPU's
    Mersenne Twister give different numbers for one seed, so the device is part of the spec
    (`augment_rng`)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, "augment", t))
    return g


def init_generator(seed: int) -> torch.Generator:
    """The CPU generator W_0 is drawn from (whatever device the model lives on)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, "init"))
    return g
