"""Checks of the start of training: W_0 and the optimizer state at checkpoint 0."""

from __future__ import annotations

import torch

from pol.errors import ProofFormatError
from pol.verifier import hardened as hd
from pol.verifier import soundness
from pol.verifier.checks import CheckName, CheckResult


def initial_optimizer_state(ck0: dict[str, torch.Tensor], spec) -> CheckResult:
    prob = soundness.state_problem(0, ck0, spec)
    return CheckResult(CheckName.INITIAL_OPTIMIZER_STATE, prob is None,
                       "checkpoint 0 holds no optimizer state (a fresh optimizer)" if prob is None
                       else prob)


def initialization(model: torch.nn.Module, spec, w0: dict[str, torch.Tensor], names: list[str],
                   alpha: float, helper=None) -> CheckResult:
    """KS test of W_0 against the declared strategy, per layer, Bonferroni-corrected (`helper`:
    an `initcheck.PvalueHelper` for the p-values)."""
    from pol.verifier.initcheck import check_init
    if spec.model.init == "none":  # the model's own init (a transformers model's): no table
        return CheckResult(CheckName.INITIALIZATION, None,
                           "init strategy 'none' (the model constructor's own init, e.g. a "
                           "transformers model's): no distribution to test; W_0 is regenerated "
                           "from the spec and compared bitwise instead (init regeneration)")
    try:
        ok, layers, thr = check_init(model, spec.model.init,
                                     {n[len("model."):]: w0[n] for n in names}, alpha,
                                     helper=helper)
    except ValueError as e:
        raise ProofFormatError(f"initialization strategy: {e}") from None
    worst = min(layers, key=lambda r: r.pvalue) if layers else None
    return CheckResult(CheckName.INITIALIZATION, ok,
                       (f"W_0 fits the {spec.model.init} distribution in all {len(layers)} "
                        f"layers (KS, Bonferroni)") if ok else
                       f"W_0 is unlikely to come from {spec.model.init}: layer {worst.name} "
                       f"(KS p = {worst.pvalue:.2e})",
                       value=worst.pvalue if worst else None, bound=thr)


def seeded_init_equal(model: torch.nn.Module, w0: dict[str, torch.Tensor],
                      names: list[str]) -> bool:
    """W_0 bitwise equal to a freshly built (still untouched) model's weights: the init pol draws
    from the proof's seed, built as `hardened.regenerated_init_matches` does (`build_context`
    draws W_0 on the CPU and then moves the model, so a model built for a GPU holds the same
    bits)."""
    mine = {"model." + k: v for k, v in model.state_dict().items()}
    return all(n in mine and torch.equal(mine[n].detach().to("cpu", w0[n].dtype), w0[n].cpu())
               for n in names)


def init_regeneration(regen: bool) -> CheckResult:
    return CheckResult(CheckName.INIT_REGENERATION, regen,
                       "W_0 is bitwise the init pol derives from the proof's seed" if regen else
                       "W_0 is not the init that the proof's seed and strategy give: pol always "
                       "draws W_0 from the seed, so this start was forged or made elsewhere "
                       "(start from other weights through a parent proof)")


def external_init() -> CheckResult:
    """A W_0 the prover recorded as given (`Recorder(init="external")`): not regenerable from the
    seed, so it is checked statistically only (KS above, rank correlation below)."""
    return CheckResult(CheckName.INIT_REGENERATION, None,
                       "external init (the prover's own W_0, recorded as given): checked "
                       "statistically (KS, rank correlation), not regenerated from the seed")


def init_rank_correlation(w0: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
                          names: list[str]) -> CheckResult:
    rhos = hd.rank_correlations(w0, final, names)
    top = max(rhos, key=lambda r: r[1]) if rhos else None
    ok = top is None or top[1] <= hd.SPEARMAN_MAX
    return CheckResult(CheckName.INIT_RANK_CORRELATION, ok,
                       "W_0's ranks are not copied from W_T" if ok else
                       f"W_0 is rank-ordered like the final weights in layer {top[0]} "
                       f"(Spearman ρ = {top[1]:.4f}): a rank-resampled forged init",
                       value=top[1] if top else None, bound=hd.SPEARMAN_MAX)
