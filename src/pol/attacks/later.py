"""Spoofs published after the PoL paper: Zhang et al. (S&P 2022) and Fang et al. (EuroS&P 2023),
as understood from their papers' descriptions (simplified, see each docstring)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from pol.attacks.common import (DEFAULT_FORGER_SEED, AttackResult, Timer, clone_state, context,
                                epochs_for, forged_spec, forward_loss, honest_cost,
                                load_model_weights, load_public, make_plan, optim_groups,
                                write_proof)
from pol.errors import ConfigError
from pol.proof import format as fmt
from pol.spec import ScheduleSpec
from pol.step import MODEL_PREFIX, derive_seed


def rank_matched_init(model: torch.nn.Module, strategy: str, w_final: dict[str, torch.Tensor],
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Zhang et al.'s forged init: per parameter, fresh draws from the claimed init distribution,
    sorted into the rank order of W_T's values (same marginal distribution as an honest W_0, so a
    KS test passes, but already close to W_T). Buffers are the fresh model's."""
    from pol.step.init import expected_distributions
    dists = expected_distributions(model, strategy)
    out = {MODEL_PREFIX + k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, d in dists.items():
        key = MODEL_PREFIX + name
        wT = w_final[key]
        buf = torch.empty(wT.shape, dtype=wT.dtype)
        d.sample_(buf, generator)
        if d.kind == "const":
            out[key] = buf
            continue
        flat = torch.empty(wT.numel(), dtype=wT.dtype)
        flat[torch.argsort(wT.reshape(-1), stable=True)] = torch.sort(buf.reshape(-1)).values
        out[key] = flat.reshape(wT.shape)
    return out


def _lerp_states(w0: dict, wT: dict, steps: list[int], T: int) -> dict[int, dict]:
    states = {}
    for t in steps:
        a = t / T
        st = {}
        for k, v0 in w0.items():
            v1 = wT[k]
            if t == T:
                st[k] = v1.clone()
            elif v0.is_floating_point():
                st[k] = (v0.double() + a * (v1.double() - v0.double())).to(v0.dtype)
            else:
                st[k] = torch.round(v0.double() + a * (v1.double() - v0.double())).to(v0.dtype)
        states[t] = st
    return states


def _fill_losses(ctx, pub, plan, states, k, T) -> int:
    """Informational per-step losses: the forward loss at the segment's starting checkpoint on
    each step's batch. Returns the number of forward passes."""
    n = 0
    for a in sorted(states):
        if a == T:
            continue
        load_model_weights(ctx, states[a])
        for t in range(a, min(a + k, T)):
            plan.losses[t] = forward_loss(ctx, pub.train, plan.batch(t), t)
            n += 1
    return n


def _result(name, settings, out, tm, evals, pub, measure_honest, notes, fwd):
    hs, hg = honest_cost(pub, measure_honest)
    return AttackResult(name=name, settings=settings, out=Path(out), wall_seconds=tm.seconds,
                        grad_evals=evals, honest_seconds=hs, honest_grad_evals=hg, notes=notes,
                        forward_evals=fwd)


def _gap(a: dict, b: dict) -> float:
    keys = [k for k in b if k in a and b[k].is_floating_point()]
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)))


# ------------------------------------------------------------------------------------ Zhang et al.

def attack_zhang_init(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                      steps: int | None = None, k: int | None = None,
                      seed: int = DEFAULT_FORGER_SEED, measure_honest: bool = True,
                      data_dir: str | None = None) -> AttackResult:
    """Zhang et al. 2022, Attacks I/II without their data perturbation: a rank-matched forged
    init (passes KS) and checkpoints on the straight line from it to W_T in T' steps (default
    one epoch; rounded up to whole epochs), k from the target's spec unless given. Batches are
    real (forger's seed), optimizer state is left out of the checkpoints (every replayed segment
    starts from a fresh momentum buffer)."""
    settings = {"steps": steps, "k": k, "seed": seed}
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        kk = k or pub.spec.k
        spec = forged_spec(pub, seed, epochs=epochs_for(steps or S, S, 1), k=kk)
        ctx = context(spec)
        plan = make_plan(spec, optim_groups(ctx))
        T = plan.T
        g = torch.Generator().manual_seed(derive_seed(seed, "zhang-init"))
        w0 = rank_matched_init(ctx.model, spec.model.init, pub.w_final, g)
        states = _lerp_states(w0, pub.w_final, fmt.checkpoint_steps(T, kk), T)
        fwd = _fill_losses(ctx, pub, plan, states, kk, T)
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))
    notes = [f"rank-matched init, ‖W_0 − W_T‖₂ = {_gap(w0, pub.w_final):.4g}; straight line to "
             f"W_T in T' = {T} steps with k = {kk} ({len(states) - 1} segments)",
             "simplified: no data perturbation (Zhang's Attacks I/II optimize per-step noise on "
             "the samples so that the gradient reproduces each interpolation step: zhang-data; "
             "Attack III's zero-gradient data: zhang-zero)",
             "no optimizer state in the checkpoints"]
    return _result("zhang-init", settings, out, tm, 0, pub, measure_honest, notes, fwd)


# ------------------------------------------------------------------------------------ Fang et al.

def attack_fang(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                steps: int | None = None, lr: float = 1e-6, k: int = 1,
                anchor_lr: float | None = None, seed: int = DEFAULT_FORGER_SEED,
                measure_honest: bool = True, data_dir: str | None = None) -> AttackResult:
    """Fang et al. 2023 as summarized: declare a tiny constant learning rate (spec and lrs), so
    every replayed step barely moves, and interpolate a fresh init (drawn from the claimed
    distribution with the forger's seed) to W_T in many tiny steps (T' default = the target's T,
    rounded up to whole epochs; k default 1), so that the claimed update of every segment is of
    the size of the proof's own δ. Batches are real. No gradient is computed.

    `anchor_lr` (variant, exploits that the prover declares the schedule): the schedule is
    declared "recorded" (the verifier then takes every step's lr from the proof) and the first
    step of every epoch is a genuine SGD step with lr `anchor_lr` (needs k = 1): it is the largest
    update of its epoch, so top-Q replays it (exactly), and it inflates the proof's own auto δ;
    the interpolation jumps in between are never replayed by top-Q. E gradient evaluations."""
    settings = {"steps": steps, "lr": lr, "k": k, "anchor_lr": anchor_lr, "seed": seed}
    if anchor_lr is not None:
        return _fang_anchored(target_proof, out, settings, steps, lr, anchor_lr, seed,
                              measure_honest, data_dir)
    if not 0 < lr < 1e3:
        raise ConfigError("lr must be in (0, 1000)")
    if k < 1:
        raise ConfigError("k must be positive")
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        spec = forged_spec(pub, seed, epochs=epochs_for(steps or pub.total_steps, S, 1), k=k,
                           optimizer=replace(pub.spec.optimizer, lr=float(lr)),
                           schedule=ScheduleSpec(name="constant"))
        ctx = context(spec)
        plan = make_plan(spec, optim_groups(ctx))
        T = plan.T
        w0 = {kk: v for kk, v in clone_state(ctx).items() if kk.startswith(MODEL_PREFIX)}
        states = _lerp_states(w0, pub.w_final, fmt.checkpoint_steps(T, k), T)
        fwd = _fill_losses(ctx, pub, plan, states, k, T)
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))
    notes = [f"declared lr {lr} (constant schedule); fresh init from the claimed "
             f"{spec.model.init} distribution; ‖W_0 − W_T‖₂ = {_gap(w0, pub.w_final):.4g} covered "
             f"in T' = {T} equal steps, k = {k}",
             "no optimizer state in the checkpoints; losses are forward passes at the "
             "interpolated weights"]
    return _result("fang", settings, out, tm, 0, pub, measure_honest, notes, fwd)


def _fang_anchored(target_proof, out, settings, steps, lr, anchor_lr, seed, measure_honest,
                   data_dir) -> AttackResult:
    from pol.attacks.common import run_steps
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        if S < 2:
            raise ConfigError("the anchored variant needs at least 2 steps per epoch")
        spec = forged_spec(pub, seed, epochs=epochs_for(steps or pub.total_steps, S, 1), k=1,
                           optimizer=replace(pub.spec.optimizer, lr=float(lr)),
                           schedule=ScheduleSpec(name="recorded"))
        ctx = context(spec)
        plan = make_plan(spec, optim_groups(ctx))
        T, E = plan.T, spec.epochs
        w0 = {kk: v for kk, v in clone_state(ctx).items() if kk.startswith(MODEL_PREFIX)}
        way = _lerp_states(w0, pub.w_final, [e * S for e in range(E + 1)], T)
        states = {0: w0}
        evals = 0
        for e in range(E):
            a = e * S
            plan.lrs[a, :] = anchor_lr
            ctx2 = context(spec)  # fresh optimizer: checkpoints carry no optimizer state
            load_model_weights(ctx2, states[a])
            got: dict[int, dict] = {}
            evals += run_steps(ctx2, pub.train, plan, a, a + 1, lambda t: True, got)
            start = {kk: v for kk, v in got[a + 1].items() if kk.startswith(MODEL_PREFIX)}
            end = way[a + S] if a + S < T else pub.w_final
            seg = _lerp_states(start, end, list(range(S)), S - 1) if S > 1 else {}
            for j in range(1, S):
                states[a + j] = seg[j - 1]
            states[a + S] = {kk: v.clone() for kk, v in end.items()}
        for t in range(T):  # informational losses
            if t % S:
                load_model_weights(ctx, states[t])
                plan.losses[t] = forward_loss(ctx, pub.train, plan.batch(t), t)
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))
    notes = [f"anchored variant: schedule declared 'recorded'; one genuine step per epoch with "
             f"lr {anchor_lr} ({E} gradient evaluations), the other {T - E} steps are "
             f"interpolation jumps recorded with lr {lr}; ‖W_0 − W_T‖₂ = "
             f"{_gap(w0, pub.w_final):.4g}",
             "no optimizer state in the checkpoints"]
    return _result("fang", settings, out, tm, evals, pub, measure_honest, notes, T - E)
