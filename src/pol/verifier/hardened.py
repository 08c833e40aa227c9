"""Defences beyond Algorithm 2 (the `hardened` policy, pol's default).

The paper's verifier tolerates δ and takes the prover's hyperparameters and initialization on trust
(KS only); Zhang et al. (2022) and Fang et al. (2023) spoof exactly those. Each defence here is a
named check in the report:

- **exact mode**: where the proof was made on this device type with this torch version, in fp32,
  on a CPU or with deterministic algorithms, replay must be bitwise equal (δ = 0): nothing is left
  for tolerance-exploiting spoofs.
- **relative error**: a replayed segment must also land close *relative to its own claimed update*
  (‖W′_b − W_b‖ ≤ r·‖W_b − W_a‖): a spoof whose steps are each below δ (tiny lr, interpolated
  checkpoints) moves in the interpolation's direction, not the gradient's, and fails this.
- **update size**: a segment whose claimed update is below c·δ proves nothing by δ alone; at
  least one non-exact replayed segment must claim ≥ c·δ (default 1.25), else every step hides in
  the tolerance (Fang et al.'s uniform tiny steps sit at exactly 1·δ under the auto δ).
- **random segments**: besides top-Q, segments drawn at random per epoch from a seed the prover
  cannot predict (the verifier's own randomness mixed with the proof's root digest).
- **init regeneration**: W_0 regenerated from the proof's seed must be bitwise W_0 (true for every
  proof made by pol's trainer and by the Recorder, which draws W_0 from the seed unless told not
  to; a user's model class is rebuilt with the modules the verifier trusts).
- **init rank correlation**: per layer, Spearman's ρ between W_0 and W_T; a rank-resampled init
  (Zhang et al.) has ρ = 1 exactly although the layer moved, which honest training does not
  produce (even 3 honest steps leave ρ ≈ 0.9997). Short honest runs keep ρ close to 1, so only
  exact rank agreement is flagged: a forger who perturbs the ranks a little passes this check and
  must then still pass replay (exact mode, relative error).
- **loss replay**: the loss recomputed at every replayed step must match the recorded loss.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from pol.errors import ConfigError, PolError, ProofFormatError

POLICIES = ("hardened", "paper")
RELATIVE_ERROR_MAX = 0.5
SPEARMAN_MAX = 1.0 - 1e-9  # exact rank agreement with W_T despite movement
SPEARMAN_MIN_ELEMENTS = 64
LOSS_RTOL = 0.05


def regenerated_init_matches(spec, w0: dict[str, torch.Tensor], names: list[str],
                             trusted_modules: Iterable[str] = ()) -> bool:
    """Rebuild W_0 from the proof's seed exactly as pol's trainer does and compare bitwise.

    The model is built with the modules the verifier trusts (a user's model class). A model that
    cannot be built is an error of the verification (ProofFormatError, or the PolError raised), not
    a failed check: the verdict must never rest on an exception swallowed here."""
    from pol.step import build_context
    try:
        ctx = build_context(spec, torch.device("cpu"), tuple(trusted_modules))
    except ConfigError as e:
        raise ProofFormatError(f"init regeneration: the proof's spec cannot be rebuilt: {e}") \
            from None
    except PolError:
        raise
    except (RuntimeError, MemoryError, TypeError, ValueError) as e:
        raise ProofFormatError(f"init regeneration: the proof's model cannot be built: {e}") \
            from None
    mine = {"model." + k: v for k, v in ctx.model.state_dict().items()}
    return all(n in mine and torch.equal(mine[n].to(w0[n].dtype), w0[n].cpu()) for n in names)


def rank_correlations(w0: dict[str, torch.Tensor], wT: dict[str, torch.Tensor],
                      names: list[str]) -> list[tuple[str, float]]:
    from scipy import stats  # on use: scipy.stats takes about a second to import
    out = []
    for n in names:
        a = w0[n].detach().reshape(-1).to(torch.float64).numpy()
        b = wT[n].detach().reshape(-1).to(torch.float64).numpy()
        if (a.size < SPEARMAN_MIN_ELEMENTS or np.all(a == a[0]) or np.all(b == b[0])
                or np.array_equal(a, b)):  # an untouched layer says nothing
            continue
        rho = stats.spearmanr(a, b).statistic
        out.append((n, float(rho)))
    return out
