"""The optimizer-state forgery (issue 10 §1): a proof whose displacement from an honest W_0 to the
target's W_T is carried by the optimizer state of checkpoint 0, not by the data.

The forger holds only the target's final weights W_T, the public dataset and the spec. Its proof
starts at the honest seeded init of its own seed (so init regeneration, KS and rank correlation
pass) and stores, at checkpoint 0, an optimizer state that pol never writes there: moments (Adam)
or a momentum buffer (SGD) so large, with betas / momentum chosen so, that every real gradient is
absorbed below half an ulp of the state it is added to. Every replayed step then moves the weights
by an amount fixed by the state alone: the trajectory does not depend on the data, the dropout
masks or the gradients. The forger computes it by running torch's own optimizer with zero
gradients (on a CPU `torch.optim.Adam` / `SGD` use their single-tensor implementation: the same
elementwise float32 arithmetic as the verifier's replay, which with the real gradient gives the
same bits), so the verifier's honest replay lands bitwise on every claimed checkpoint, model and
optimizer state alike. No gradient is evaluated; the recorded losses are forward passes at the
claimed weights (or NaN: `losses="nan"`, which the landed verifier takes as "no loss recorded").

Adam (default for Adam/AdamW targets): β1 = β2 = 1 − 1e-15. The lerp weight 1 − β1 ≈ 1.1e-15 is
far below 2^-25, so `exp_avg.lerp_(g, 1 − β1)` returns exp_avg unchanged for |g| < 2.7e7·|m|;
β2 rounds to 1.0 in float32 and (1 − β2)·g² is absorbed in exp_avg_sq. m_i = ∓M carries the sign
of the displacement, v_i its size (lr / bias correction / sqrt(v) scale it); the step counter
starts at 0 and counts like an honest run's. The lr of the spec stays plausible (the target's).

SGD with momentum (default for SGD targets): momentum = 1 − 1e-10 rounds to 1.0 in float32, so
`buf.mul_(μ).add_(g)` returns buf unchanged for |g| < |buf|·2^-25; |buf| ≥ 1e12 and a tiny lr
(≈ 1e-21 / T) turn it into a constant per-step displacement.

Both states are refined (zero-gradient re-simulations, `refine`, no gradients) so that the last
checkpoint lands within a few ulps of W_T. What the verifier must do to reject it: checkpoint 0's
optimizer state must be a fresh optimizer's (pol never writes one at step 0); the optimizer
hyperparameters and state must be plausible (betas that do not round to 1, bounded moments); and,
in general, a replayed step must depend on its data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from pol.attacks.common import (DEFAULT_FORGER_SEED, AttackResult, Timer, clone_state, context,
                                epochs_for, forged_spec, forward_loss, honest_cost, load_public,
                                make_plan, optim_groups, param_names, write_proof)
from pol.errors import ConfigError
from pol.spec import OptimizerSpec, ScheduleSpec, current_cpu_capability
from pol.step import MODEL_PREFIX, OPTIM_PREFIX

ADAM_BETA = 1.0 - 1e-15  # 1 − β ≈ 1.1e-15: lerp weight and (1 − β2) far below float32's 2^-25
ADAM_M = 1e3  # |exp_avg|: absorbs |g| < 2.7e10 in the lerp
V_MIN, V_MAX = 1.0, 1e38  # exp_avg_sq range (float32 max 3.4e38)
SGD_MOMENTUM = 1.0 - 1e-10  # rounds to 1.0 in float32: buf * μ == buf
SGD_BUF_MIN = 1e12  # |momentum_buffer|: absorbs |g| < 3e4
D_FLOOR = 1e-9  # displacements below this are not encoded (below the weights' ulp anyway)
VARIANTS = ("adam", "sgd")


def _has_running_stats(model: torch.nn.Module) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def _simulate(ctx, plan, T: int, keep, states: dict | None, losses_from=None) -> None:
    """T steps of ctx's optimizer with zero gradients (the data-independent trajectory); stores
    clone_state after step t in states[t] where keep(t). `losses_from`: (data) to record the
    forward loss of every step at its pre-step weights into plan.losses."""
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    for t in range(T):
        if losses_from is not None:
            plan.losses[t] = forward_loss(ctx, losses_from, plan.batch(t), t)
        for group, lr in zip(ctx.optimizer.param_groups, plan.lrs[t].tolist()):
            group["lr"] = float(lr)
        for p in params:
            p.grad = torch.zeros_like(p)
        ctx.optimizer.step()
        if states is not None and keep(t + 1):
            states[t + 1] = clone_state(ctx)
    for p in params:
        p.grad = None


def attack_optimizer_state(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                           steps: int | None = None, k: int | None = None,
                           optimizer: str | None = None, lr: float | None = None,
                           refine: int = 1, losses: str = "forward",
                           seed: int = DEFAULT_FORGER_SEED, measure_honest: bool = True,
                           data_dir: str | None = None) -> AttackResult:
    # long: one forgery, read top to bottom (plan, simulate, refine, write); its steps share the plan's state
    """Forge a proof whose W_0 is the honest seeded init of the forger's seed and whose
    checkpoint-0 optimizer state carries the whole displacement to W_T (module docstring).

    `optimizer`: "adam" or "sgd" (momentum variant); default the target's family. `steps`:
    length T' (default the target's T, rounded up to whole epochs); `k` default the target's.
    `lr`: the declared constant lr of the Adam variant (default the target's; the SGD variant
    derives its own tiny lr). `refine`: zero-gradient re-simulations that bring the end onto W_T.
    `losses`: "forward" (forward pass per step: what a replay recomputes) or "nan" (none)."""
    settings = {"steps": steps, "k": k, "optimizer": optimizer, "lr": lr, "refine": refine,
                "losses": losses, "seed": seed}
    if losses not in ("forward", "nan"):
        raise ConfigError("losses must be 'forward' or 'nan'")
    if optimizer is not None and optimizer not in VARIANTS:
        raise ConfigError(f"optimizer must be one of {', '.join(VARIANTS)}")
    if refine < 0:
        raise ConfigError("refine must be non-negative")
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        tgt_opt = pub.spec.optimizer
        variant = optimizer or ("sgd" if tgt_opt.name == "sgd" else "adam")
        kk = int(k or pub.spec.k)
        E = epochs_for(steps or pub.total_steps, S, 1)
        T = E * S
        if variant == "adam":
            name = tgt_opt.name if tgt_opt.name in ("adam", "adamw") else "adam"
            base_lr = float(lr if lr is not None else
                            (tgt_opt.lr if tgt_opt.name != "sgd" else 1e-3))
            ospec = OptimizerSpec(name=name, lr=base_lr, betas=(ADAM_BETA, ADAM_BETA),
                                  eps=1e-8, weight_decay=0.0)
        else:
            base_lr = 1e-3  # placeholder: the real one depends on the displacement (below)
            ospec = OptimizerSpec(name="sgd", lr=base_lr, momentum=SGD_MOMENTUM,
                                  weight_decay=0.0)
        spec = forged_spec(pub, seed, epochs=E, k=kk, optimizer=ospec,
                           schedule=ScheduleSpec(name="constant"), precision="fp32",
                           cpu_capability=current_cpu_capability(),
                           cpu_threads=torch.get_num_threads())
        ctx = context(spec)
        if _has_running_stats(ctx.model):
            raise ConfigError("the model keeps running statistics (batch norm): they follow the "
                              "data, so the optimizer-state forgery does not apply")
        names = param_names(ctx)
        fresh = clone_state(ctx)  # W_0: the honest init of the forger's seed
        w0 = {n: fresh[n].double() for n in names}
        disp = {n: pub.w_final[n].double() - w0[n] for n in names}  # what the state must carry

        if variant == "sgd":
            dmax = max(float(d.abs().max()) for d in disp.values())
            base_lr = D_FLOOR / (T * SGD_BUF_MIN)
            if not dmax / (T * base_lr) < 1e37:
                raise ConfigError("the displacement to W_T is too large for the SGD variant")
            spec = forged_spec(pub, seed, epochs=E, k=kk,
                               optimizer=OptimizerSpec(name="sgd", lr=base_lr,
                                                       momentum=SGD_MOMENTUM, weight_decay=0.0),
                               schedule=ScheduleSpec(name="constant"), precision="fp32",
                               cpu_capability=current_cpu_capability(),
                               cpu_threads=torch.get_num_threads())
        plan = make_plan(spec, optim_groups(ctx))
        assert plan.T == T

        # the state per parameter (float64 while refining), by parameter index
        state: dict[str, torch.Tensor] = {}
        for i, n in enumerate(names):
            d = disp[n]
            sign = torch.where(d >= 0, 1.0, -1.0).double()
            if variant == "sgd":
                # per step p += -lr·buf (μ == 1.0f): buf = −D / (T·lr), at least SGD_BUF_MIN
                state[f"{OPTIM_PREFIX}{i}.momentum_buffer"] = -sign * torch.clamp(
                    d.abs() / (T * base_lr), min=SGD_BUF_MIN)
            else:
                # per step Δ ≈ −lr/bc1(s) · m / (sqrt(v)/sqrt(bc2(s)) + eps); m = −sign·M
                K = sum(math.sqrt(1 - ADAM_BETA ** s) / (1 - ADAM_BETA ** s)
                        for s in range(1, T + 1))
                v = (ADAM_M * base_lr * K / torch.clamp(d.abs(), min=1e-300)) ** 2
                state[f"{OPTIM_PREFIX}{i}.exp_avg"] = -sign * ADAM_M
                state[f"{OPTIM_PREFIX}{i}.exp_avg_sq"] = torch.clamp(v, V_MIN, V_MAX)
                state[f"{OPTIM_PREFIX}{i}.step"] = torch.tensor(0.0)

        def start_state() -> dict[str, torch.Tensor]:
            st = {n: fresh[n].clone() for n in fresh if n.startswith(MODEL_PREFIX)}
            for key, v in state.items():
                st[key] = v.to(torch.float32).clone()
            return st

        from pol.step import load_state

        def run(keep=None, states=None, with_losses=False) -> dict[str, torch.Tensor]:
            load_state(ctx.model, ctx.optimizer, spec.optimizer.name, start_state())
            _simulate(ctx, plan, T, keep or (lambda t: False), states,
                      pub.train if with_losses else None)
            return {n: p.detach().clone() for n, p in zip(names, ctx.model.parameters())}

        # refinement: the achieved displacement scales with 1/sqrt(v) (Adam) or buf (SGD)
        for _ in range(refine):
            end = run()
            for i, n in enumerate(names):
                got = end[n].double() - w0[n]
                want = disp[n]
                ok = (got.abs() > 0) & (want.abs() >= D_FLOOR) & (torch.sign(got) ==
                                                                  torch.sign(want))
                ratio = torch.where(ok, want / torch.where(ok, got, 1.0), 1.0)
                if variant == "sgd":
                    key = f"{OPTIM_PREFIX}{i}.momentum_buffer"
                    b = state[key] * ratio
                    state[key] = torch.sign(b) * torch.clamp(b.abs(), min=SGD_BUF_MIN)
                else:
                    key = f"{OPTIM_PREFIX}{i}.exp_avg_sq"
                    state[key] = torch.clamp(state[key] / ratio ** 2, V_MIN, V_MAX)

        states = {0: start_state()}
        keep = (lambda t: t % kk == 0 or t == T)
        end = run(keep, states, with_losses=(losses == "forward"))
        fwd = T if losses == "forward" else 0
        if losses == "nan":
            plan.losses[:] = np.nan
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))

    diff = torch.cat([(end[n].double() - pub.w_final[n].double()).reshape(-1) for n in names])
    tgt = torch.cat([pub.w_final[n].double().reshape(-1) for n in names])
    exact = int((diff == 0).sum())
    o = spec.optimizer
    hp = (f"adam-family β = ({o.betas[0]!r}, {o.betas[1]!r}), lr {o.lr:g}, eps {o.eps:g}"
          if variant == "adam" else f"sgd momentum {o.momentum!r} (1.0 in float32), lr {o.lr:.3g}")
    notes = [f"checkpoint-0 optimizer state carries W_0 → W_T ({variant} variant: {hp}); W_0 is "
             f"the honest init of seed {seed}; T' = {T} steps, k = {kk}",
             f"final claimed model vs W_T: max |Δ| = {float(diff.abs().max()):.3g}, "
             f"‖Δ‖₂/‖W_T‖₂ = {float(diff.norm() / tgt.norm()):.3g}, {exact} of {diff.numel()} "
             "weights bitwise equal",
             "no gradient evaluated: the trajectory is torch's optimizer run with zero gradients "
             "(real gradients are absorbed below half an ulp of the state); losses "
             + ("are forward passes at the claimed weights" if losses == "forward" else
                "recorded as NaN (no loss)")]
    hs, hg = honest_cost(pub, measure_honest)
    return AttackResult(name="optimizer-state", settings=settings, out=Path(out),
                        wall_seconds=tm.seconds, grad_evals=0, honest_seconds=hs,
                        honest_grad_evals=hg, notes=notes, forward_evals=fwd)
