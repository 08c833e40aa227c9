"""Checks that make a replay mean something (hardened policy).

Replay proves a claimed step only if the step could have gone elsewhere: a segment that lands
bitwise on its claimed checkpoint whatever its data says nothing about the data. An outside review
found exactly such a forgery: the displacement toward someone else's final weights rides in Adam's
moments at checkpoint 0, with moments so large that every real gradient is absorbed below half an
ulp; the verifier's honest replay, with real data, lands bitwise on every forged checkpoint. The
checks here close the channels that forgery (and its variants) used, each a named check:

- **initial optimizer state**: checkpoint 0 holds no optimizer state. pol never writes any there
  (a fresh optimizer has none; a warm start from a parent proof starts a fresh optimizer too).
- **optimizer state**: every checkpoint's optimizer state is plausible: finite, step counters equal
  to the checkpoint's step, second moments non-negative, first moments within the bound that any
  sequence of gradients obeys: |m| ≤ C·√v with C = (1−β₁)/√((1−β₂)(1−β₁²/β₂)) (Cauchy–Schwarz on
  the two exponential averages), and the hyperparameters within `Bounds`.
- **optimizer replay**: after each replayed segment the optimizer state must match the claim like
  the parameters do (bitwise in exact mode; within the relative-error bound otherwise).
- **data dependence**: the first step of each replayed segment is run a second time with the loss
  negated (the gradient's sign flipped); the parameters must move by at least τ times the step's own
  update where the segment replays within a tolerance, and at all where it replays bitwise. A step
  whose gradient is absorbed (huge moments, a learning rate below the float resolution) lands on
  the same bits either way, and fails.
- **epoch structure**: steps per epoch is ⌈N/B⌉ (⌊N/B⌋ with drop_last), only an epoch's last batch
  may be short, and every epoch's indices are a permutation of the dataset (no sample twice, none
  left out unless drop_last).
- **recorded losses**: a replayed step whose recorded loss is NaN or infinite fails loss replay
  (no silent skip).
- **other optimizers' state** (RMSprop, Adagrad, amsgrad) and an fp16 run's **GradScaler**: see
  `_other_state_problem` and `scaler_state_problem`; with fp16 autocast a step counter may lag
  the checkpoint's step by the steps the GradScaler skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pol.step import OPTIM_PREFIX


@dataclass(frozen=True)
class Bounds:
    """Policy bounds on hyperparameters and state (frozen data, documented in docs/SECURITY.md)."""

    lr_min: float = 1e-8  # the spec's base learning rate
    momentum_max: float = 0.999
    beta1_max: float = 0.999
    beta2_max: float = 0.99999
    # data dependence: a sign-flipped gradient must move the step's result by ≥ τ·(its update)
    # where the segment replays within a tolerance (a smaller dependence could hide inside δ).
    # A step whose gradient is absorbed measures 0. Honest steps measure 2‖g‖ ÷ ‖μm + g‖ with SGD
    # momentum μ (Adam: alike, with its first moment): usually ≥ 2(1−μ), but below 1e-3 for a
    # batch whose gradient is small against the momentum (measured: 3 of 8,000 honest segments
    # of digits-mlp late in training, 0.0004–0.0006)
    flip_min: float = 1e-3
    # ... and by more than this where the segment replays bitwise: the claimed bits then depend on
    # the gradient, so a forger who skips computing it cannot produce them; any dependence proves
    # the gradient was computed, and the relative bound above would reject honest steps
    flip_min_exact: float = 0.0
    # slack on the moment bound for float rounding
    moment_slack: float = 1e-3
    # tolerant mode: ‖S′_b − S_b‖ ≤ r_s·‖S_b − S_a‖ for the optimizer state (moments, momentum).
    # Looser than the parameters' 0.5: the state follows the gradient, whose replay noise is
    # relatively larger (an honest ResNet-20 GPU proof replayed on a CPU measured 0.78 on its
    # first segment); the data-dependence check, not this bound, is what closes the state channel
    state_relative_max: float = 1.0
    # exact mode: the rounding-log window (spec.step.exact_window, in float32 ulps). The replay
    # rounds a logged value the logged way within 4 windows of a tie, so a wide window lets a
    # prover choose the last bit of that many values (2^-8: 1 in 32); honest replay needs only
    # the float64 noise between devices (~2^-40 ulps), pol's default is 2^-12
    exact_window_max: float = 2.0 ** -8
    # exact mode's gradient noise bound (spec.step.exact_noise, a fraction ν of each gradient
    # tensor's largest value): the prover chooses the rounding of values within ν·M of a tie and
    # rounds no finer than 2^G·ν·M (below); 2^-32 keeps that to the last bits of values ≥ 2^-4
    # of M
    # (the measured noise is ~2^-43, pol's default 2^-40)
    exact_noise_max: float = 2.0 ** -32
    # ... and its grid (spec.step.exact_grid = G): a logged gradient rounds either way by the
    # grid's spacing 2^G·ν·M, the prover's choice; 2^-28 is what the largest noise bound allowed
    # with the grid of proofs made before G existed (16·ν), pol's default 2^-32 (2^8·2^-40)
    exact_grid_spacing_max: float = 2.0 ** -28


BOUNDS = Bounds()


def hyperparameter_problems(spec, bounds: Bounds = BOUNDS) -> list[str]:
    """Hyperparameters outside the policy bounds (an empty list when all are plausible)."""
    o = spec.optimizer
    out = []
    for lr in (o.lr, *o.group_lrs):
        if lr < bounds.lr_min:
            out.append(f"base learning rate {lr:g} below the policy floor {bounds.lr_min:g}")
            break
    if o.name in ("sgd", "rmsprop"):
        if o.momentum > bounds.momentum_max:
            out.append(f"momentum {o.momentum:g} above the policy bound {bounds.momentum_max:g}")
    if o.name == "rmsprop" and (o.alpha > bounds.beta2_max or float(np.float32(o.alpha)) >= 1.0):
        # alpha plays beta2's part: at 1 the squared-gradient average never moves
        out.append(f"alpha {o.alpha!r} above the policy bound {bounds.beta2_max:g} (or 1 in "
                   "float32)")
    if o.name in ("adam", "adamw"):
        b1, b2 = o.betas
        for name, b, hi in (("beta1", b1, bounds.beta1_max), ("beta2", b2, bounds.beta2_max)):
            if b > hi or float(np.float32(b)) >= 1.0:
                out.append(f"{name} {b!r} above the policy bound {hi:g} (or 1 in float32)")
    if spec.step.exact and spec.step.exact_window > bounds.exact_window_max:
        out.append(f"exact mode's rounding-log window {spec.step.exact_window:g} above the "
                   f"policy bound {bounds.exact_window_max:g} (it lets the prover choose the "
                   "rounding of values that far from a tie)")
    if spec.step.exact and spec.step.exact_noise > bounds.exact_noise_max:
        out.append(f"exact mode's gradient noise bound {spec.step.exact_noise:g} above the "
                   f"policy bound {bounds.exact_noise_max:g} (it lets the prover choose the "
                   "rounding of gradients that large)")
    spacing = spec.step.exact_noise * 2.0 ** spec.step.exact_grid
    if spec.step.exact and spacing > bounds.exact_grid_spacing_max:
        out.append(f"exact mode's gradient grid spacing {spacing:g} of each tensor's largest "
                   f"value (2^exact_grid · exact_noise) above the policy bound "
                   f"{bounds.exact_grid_spacing_max:g} (the prover chooses the rounding of "
                   "logged gradients by that much)")
    return out


def moment_bound(beta1: float, beta2: float) -> float | None:
    """C with |m| ≤ C·√v for Adam's moments after any gradient sequence (None: no finite bound)."""
    if beta2 <= 0 or beta1 * beta1 >= beta2:
        return None
    return (1 - beta1) / math.sqrt((1 - beta2) * (1 - beta1 * beta1 / beta2))


def optimizer_entries(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in tensors if k.startswith(OPTIM_PREFIX)]


def state_problem(t: int, tensors: dict[str, torch.Tensor], spec) -> str | None:
    """The first implausibility in checkpoint t's optimizer state, or None."""
    keys = optimizer_entries(tensors)
    if getattr(spec, "step", None) is not None:
        why = scaler_state_problem(t, tensors, spec)
        if why:
            return why
    if t == 0:
        if keys:
            return ("checkpoint 0 holds optimizer state: a fresh optimizer has none (pol never "
                    "writes any there), so this state was put there by hand")
        return None
    opt = spec.optimizer
    C = moment_bound(*opt.betas) if opt.name in ("adam", "adamw") else None
    # fp16 autocast: a step whose gradients overflow is skipped (the optimizer's counter stays)
    skips = getattr(spec, "step", None) is not None and spec.step.autocast == "fp16"
    if not skips and _plausible_at_once(t, tensors, keys, opt, C):
        return None
    for k in keys:
        v = tensors[k]
        if not torch.isfinite(v.float()).all():
            return f"checkpoint {t}: {k} has NaN/Inf values"
        if k.endswith(".step") and not bool((v.double() == t).all()) and not (
                skips and bool(((v.double() >= 1) & (v.double() <= t)
                                & (v.double() == v.double().round())).all())):
            return (f"checkpoint {t}: the step counter {k} is {float(v.reshape(-1)[0]):g}, "
                    f"not {t}" + (" (or fewer, with skipped steps)" if skips else ""))
    why = _other_state_problem(tensors, keys, opt)
    if why:
        return f"checkpoint {t}: {why}"
    if C is not None:
        groups = sorted({k[len(OPTIM_PREFIX):].split(".")[0] for k in keys}, key=int)
        for i in groups:
            m = tensors.get(f"{OPTIM_PREFIX}{i}.exp_avg")
            sq = tensors.get(f"{OPTIM_PREFIX}{i}.exp_avg_sq")
            if m is None or sq is None:
                continue
            sq = sq.double()
            if bool((sq < 0).any()):
                return f"checkpoint {t}: {OPTIM_PREFIX}{i}.exp_avg_sq has negative entries"
            # rounding slack: relative, plus the square root of the storage type's smallest step
            tiny = math.sqrt(torch.finfo(tensors[f"{OPTIM_PREFIX}{i}.exp_avg_sq"].dtype).smallest_normal)
            bound = C * (1 + BOUNDS.moment_slack) * (sq.sqrt() + 2 * tiny)
            over = m.double().abs() > bound
            if bool(over.any()):
                j = int(torch.nonzero(over.reshape(-1))[0])
                return (f"checkpoint {t}: {OPTIM_PREFIX}{i}.exp_avg[{j}] = "
                        f"{float(m.reshape(-1)[j]):.3g} exceeds what any gradients can produce "
                        f"with its exp_avg_sq ({C:.3g}·√v = {float(bound.reshape(-1)[j]):.3g})")
    return None


def _plausible_at_once(t: int, tensors: dict[str, torch.Tensor], keys: list[str], opt,
                       C: float | None) -> bool:
    """Whether checkpoint t's optimizer state surely passes `state_problem`'s checks, decided in
    a few passes over all its tensors at once and a wait per kind of check: a finite sum (no
    NaN/Inf), every step counter t, Adam's first moments within C·√v computed in the stored
    precision with a margin of 2^-16 (float rounding of a few ulps cannot decide it). True only
    when all hold; False (a check failed, a sum overflowed, a value at the margin, mixed
    precisions) sends `state_problem` tensor by tensor, in float64, for the verdict and its
    message. The per-tensor form costs ~0.6 ms per checkpoint of a 38k-parameter CNN, more than
    the rest of its reading; this one about a third."""
    if not keys or any(k.rsplit(".", 1)[-1] in _OTHER_KEYS for k in keys):
        return False  # RMSprop, Adagrad, amsgrad: their own checks
    floats = [tensors[k].detach() for k in keys if not k.endswith(".step")]
    if len({v.dtype for v in floats}) > 1 or not all(v.is_floating_point() for v in floats):
        return False
    ok = []
    if floats:
        ok.append(torch.isfinite(torch.cat([v.reshape(-1) for v in floats]).sum()))
    steps = [tensors[k].detach().reshape(-1).double() for k in keys if k.endswith(".step")]
    if steps:
        ok.append((torch.cat(steps) == t).all())
    pairs = [(tensors.get(k[:-len("exp_avg_sq")] + "exp_avg"), tensors[k]) for k in keys
             if k.endswith(".exp_avg_sq")] if C is not None else []
    pairs = [(m, sq) for m, sq in pairs if m is not None]
    if pairs:
        tiny = math.sqrt(torch.finfo(pairs[0][1].dtype).smallest_normal)
        sq = torch.cat([v.detach().reshape(-1) for _, v in pairs])
        m = torch.cat([v.detach().reshape(-1) for v, _ in pairs])
        k = C * (1 + BOUNDS.moment_slack) * (1 - 2.0 ** -16)
        # (`cat` copies: in place on its results) the root of a negative second moment is NaN,
        # and the comparison fails
        ok.append(torch.le(m.abs_(), sq.sqrt_().add_(2 * tiny).mul_(k)).all())
    return bool(ok) and all(bool(o) for o in ok)  # (tensors may be on different devices)


# optimizer state keys `_other_state_problem` checks
_OTHER_KEYS = ("square_avg", "max_exp_avg_sq", "sum", "grad_avg")


def scaler_state_problem(t: int, tensors: dict[str, torch.Tensor], spec) -> str | None:
    """An fp16 run's GradScaler state in checkpoint t: present, plausible, and at checkpoint 0
    the declared initial scale with a zero growth tracker."""
    if spec.step.autocast != "fp16":
        return None
    from pol.step.amp import scaler_problem
    why = scaler_problem(tensors, spec.step)
    if why is None and t == 0 and not (
            float(tensors["scaler.scale"].reshape(())) == spec.step.scaler_init_scale
            and int(tensors["scaler.growth_tracker"].reshape(())) == 0):
        why = "the GradScaler does not start from the declared init_scale"
    return None if why is None else f"checkpoint {t}: {why}"


def _other_state_problem(tensors: dict[str, torch.Tensor], keys: list[str], opt) -> str | None:
    """RMSprop, Adagrad and amsgrad state: averages and sums of squares are non-negative (an
    Adagrad sum never below its initial value), RMSprop's centered average of gradients is at most
    the root of its average of squares (Cauchy–Schwarz), amsgrad's maximum at least the current
    second moment."""
    def bad(name: str, mask: torch.Tensor) -> str | None:
        if bool(mask.any()):
            j = int(torch.nonzero(mask.reshape(-1))[0])
            return f"{name}[{j}] = {float(tensors[name].reshape(-1)[j]):.3g} is implausible"
        return None

    for k in keys:
        i_key = k[len(OPTIM_PREFIX):].split(".")
        prefix, key = f"{OPTIM_PREFIX}{i_key[0]}.", i_key[-1]
        if key not in _OTHER_KEYS:
            continue  # (momentum, Adam's moments: nothing to check here, nothing to convert)
        v = tensors[k].double()
        why = None
        if key in ("square_avg", "max_exp_avg_sq"):
            why = bad(k, v < 0)
        if key == "sum":
            why = bad(k, v < opt.initial_accumulator_value * (1 - 2.0**-7))
        if key == "max_exp_avg_sq" and prefix + "exp_avg_sq" in tensors:
            why = why or bad(k, v < tensors[prefix + "exp_avg_sq"].double())
        if key == "grad_avg" and prefix + "square_avg" in tensors:
            sq = tensors[prefix + "square_avg"]
            tiny = math.sqrt(torch.finfo(sq.dtype).smallest_normal)
            why = bad(k, v.abs() > (1 + BOUNDS.moment_slack) * (sq.double().clamp_min(0).sqrt()
                                                                 + 2 * tiny))
        if why:
            return why
    return None


def flat_optimizer(tensors: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """The float optimizer state (moments, momentum buffers) as one float64 vector."""
    if not keys:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([tensors[k].detach().to("cpu", torch.float64).reshape(-1) for k in keys])


def float_state_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in optimizer_entries(tensors) if not k.endswith(".step"))


def epoch_structure_problem(proof) -> str | None:
    """The first violation of the epoch structure, or None (see the module docstring)."""
    m = proof.manifest
    spec = m.spec
    N, B, S = spec.data.size, spec.batch_size, m.steps_per_epoch
    want = N // B if spec.drop_last else -(-N // B)
    if S != want:
        return (f"steps_per_epoch is {S}, but {N} samples in batches of {B} make {want}"
                f"{' (drop_last)' if spec.drop_last else ''}")
    idx = proof.indices
    if idx.shape[0] != m.epochs * S:
        return f"{idx.shape[0]} recorded steps, expected {m.epochs} × {S}"
    last = N - (S - 1) * B if not spec.drop_last else B
    counts = (idx >= 0).sum(axis=1).reshape(m.epochs, S)
    for e in range(m.epochs):
        full = counts[e, :-1]
        if (full != B).any():
            s = int(np.nonzero(full != B)[0][0])
            return (f"epoch {e}, step {e * S + s}: a batch of {int(full[s])} samples before the "
                    f"epoch's last batch (batch size {B})")
        if counts[e, -1] != last:
            return (f"epoch {e}: the last batch has {int(counts[e, -1])} samples, expected {last}")
        rows = idx[e * S:(e + 1) * S]
        flat = rows[rows >= 0]
        if np.unique(flat).size != flat.size:
            return f"epoch {e}: a sample is used twice (indices are not a permutation)"
        if spec.data.order == "seed":
            from pol.step import epoch_order
            want_order = epoch_order(spec.seed, e, N)[:flat.size]
            if not np.array_equal(flat, want_order):
                s = int(np.nonzero(flat != want_order)[0][0]) // B
                return (f"epoch {e}, step {e * S + s}: the spec says the batch order comes from "
                        "the seed, but the recorded indices differ from it")
    return None
