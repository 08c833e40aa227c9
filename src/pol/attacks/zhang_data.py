"""Zhang et al. (S&P 2022), Attacks I/II with their data perturbation, for small models trained
with plain SGD (no momentum), e.g. the iris-logreg task.

The forger starts from a rank-matched forged init (as zhang-init), draws the straight line
W_0 → W_T in T' steps, and for every step t takes a batch of real training samples and optimizes
a small perturbation Δ of their inputs (labels unchanged) with scipy's L-BFGS so that one plain
SGD step from the current weights on x + Δ, with the spec's lr, lands on the line's next point:

    minimize  ‖W̃_t − lr·∇L(W̃_t; x + Δ) − W_{t+1}‖² / ‖W_{t+1} − W_t‖²  +  λ·‖Δ‖² / |Δ|

(gradients by torch autograd, double backward; every function call of the solver counts as one
gradient evaluation). The perturbed samples are new samples of a forged dataset ("user" data):
step t's batch is its own B rows, so the dataset is all perturbed batches concatenated and the
proof claims one epoch of T' steps over it.

The step that is actually taken is the verifier's own `update()` (float32, the spec's prepare,
the recorded lr), chained from the forged W_0; the checkpoints are that chain's states, so a
replay of any segment reproduces them (bitwise on the same machine and thread count), except the
last checkpoint, which is the target's W_T itself (the claim): the last segment carries the
chain's final residual ‖W̃_T − W_T‖.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pol.attacks.common import (DEFAULT_FORGER_SEED, AttackResult, Timer, context, forged_spec,
                                honest_cost, load_model_weights, load_public, make_plan,
                                optim_groups, write_proof)
from pol.attacks.later import _gap, _lerp_states, rank_matched_init
from pol.errors import ConfigError
from pol.proof import format as fmt
from pol.proof.hashing import merkle_root, sample_leaves
from pol.spec import DataSpec
from pol.step import MODEL_PREFIX, derive_seed, update


def _solve_step(model, names, w_cur, w_next, x0, y, lr, prepare, loss_fn, penalty, maxiter):
    """L-BFGS over Δ (float64): returns (x0 + Δ as float64 array, function calls, relative
    residual of the float64 model)."""
    from scipy.optimize import minimize
    from torch.func import functional_call

    p = {n: w_cur[MODEL_PREFIX + n].detach().double().requires_grad_(True) for n in names}
    target = {n: w_next[MODEL_PREFIX + n].double() for n in names}
    step = sum(((target[n] - p[n].detach()) ** 2).sum() for n in names).item()
    scale = 1.0 / max(step, 1e-300)
    xt0 = torch.from_numpy(np.asarray(x0, dtype=np.float64))
    yt = torch.from_numpy(np.asarray(y)).long()
    calls = [0]

    def fg(d_flat):
        calls[0] += 1
        d = torch.from_numpy(d_flat.reshape(xt0.shape).copy()).requires_grad_(True)
        inp = prepare(xt0 + d).double()
        loss = loss_fn(functional_call(model, p, (inp,)), yt)
        grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=True)
        r = sum(((p[n] - lr * g - target[n]) ** 2).sum() for n, g in zip(names, grads))
        f = r * scale + penalty * (d ** 2).sum() / d.numel()
        (gd,) = torch.autograd.grad(f, d)
        return float(f.detach()), gd.detach().numpy().reshape(-1).astype(np.float64)

    res = minimize(fg, np.zeros(xt0.numel()), jac=True, method="L-BFGS-B",
                   options={"maxiter": maxiter, "ftol": 1e-20, "gtol": 1e-14, "maxcor": 20})
    d = res.x.reshape(xt0.shape)
    return (xt0.numpy() + d), calls[0], float(np.sqrt(max(res.fun, 0.0)))


def _match_class_sums(w0: dict, wT: dict, names: list[str]) -> dict:
    """Cross-entropy's gradient w.r.t. the output layer sums to zero over the classes (softmax
    minus one-hot), so plain SGD conserves the class-sum of the last layer's weight columns and
    bias: no data can reach W_T from a W_0 whose sums differ. Shift the last layer's rows by the
    per-column difference / C (keeps the rank order; the marginals move by that constant)."""
    out = dict(w0)
    for n in names[-2:]:
        key = MODEL_PREFIX + n
        a, b = w0[key].double(), wT[key].double()
        if a.dim() == 0:
            continue
        shift = (b.sum(0, keepdim=True) - a.sum(0, keepdim=True)) / a.shape[0]
        out[key] = (a + shift).to(w0[key].dtype)
    return out


def attack_zhang_data(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                      steps: int | None = None, k: int | None = None,
                      seed: int = DEFAULT_FORGER_SEED, penalty: float = 1e-6,
                      maxiter: int = 200, match_sums: bool = True, measure_honest: bool = True,
                      data_dir: str | None = None) -> AttackResult:
    """Zhang et al. 2022 Attacks I/II: rank-matched forged init, straight line to W_T in T' steps
    (default: the target's T; k default the target's), per-step L-BFGS perturbation of real
    samples so that each replayed SGD step follows the line. Needs plain SGD without momentum or
    weight decay, no augmentation. Writes the forged dataset next to the proof as
    `<out>/../<out.name>-data.npz` (x, y): verify with data=that file."""
    settings = {"steps": steps, "k": k, "seed": seed, "penalty": penalty, "maxiter": maxiter,
                "match_sums": match_sums}
    out = Path(out)
    data_path = out.parent / f"{out.name}-data.npz"
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        ospec = pub.spec.optimizer
        if ospec.name != "sgd" or ospec.momentum or ospec.weight_decay:
            raise ConfigError("zhang-data needs a target trained with plain SGD (no momentum, "
                              "no weight decay)")
        if pub.spec.data.augment != "none":
            raise ConfigError("zhang-data needs a target without data augmentation")
        T = int(steps or pub.total_steps)
        if T < 1:
            raise ConfigError("--steps must be positive")
        kk = int(k or pub.spec.k)
        B = pub.spec.batch_size
        n = T * B
        # provisional spec (root filled in once the data exists): one epoch of T full batches
        spec = forged_spec(pub, seed, epochs=1, k=kk, drop_last=False,
                           data=DataSpec(name="user", params={}, size=n, root="0" * 64,
                                         prepare=pub.spec.data.prepare, augment="none"))
        ctx = context(spec)
        names = [nm for nm, _ in ctx.model.named_parameters()]
        g = torch.Generator().manual_seed(derive_seed(seed, "zhang-init"))
        w0 = rank_matched_init(ctx.model, spec.model.init, pub.w_final, g)
        if match_sums:
            w0 = _match_class_sums(w0, pub.w_final, names)
        line = _lerp_states(w0, pub.w_final, list(range(T + 1)), T)
        plan = make_plan(spec, optim_groups(ctx))
        assert plan.T == T
        plan.indices[:] = np.arange(n, dtype=np.int64).reshape(T, B)  # step t: its own rows
        lr = float(spec.schedule.lr_at(spec.optimizer.lr, 0, T))
        lrs = [spec.schedule.lr_at(spec.optimizer.lr, t, T) for t in range(T)]
        rng = np.random.default_rng(derive_seed(seed, "zhang-data"))
        xr, yr = pub.train.x, pub.train.y
        xs = np.empty((n,) + xr.shape[1:], dtype=xr.dtype)
        ys = np.empty((n,), dtype=np.int64)
        ckset = set(fmt.checkpoint_steps(T, kk))
        states = {0: {kk_: v.clone() for kk_, v in w0.items()}}
        evals = 0
        rel_res: list[float] = []  # per step: ‖W̃_{t+1} − W_{t+1}‖ / ‖W_{t+1} − W_t‖ (float32)
        pert: list[float] = []  # per step: ‖Δ‖ / ‖x‖
        threads = spec.cpu_threads if spec.device == "cpu" else 0
        saved = torch.get_num_threads()
        if threads and threads != saved:
            torch.set_num_threads(threads)
        try:
            load_model_weights(ctx, w0)
            cur = {MODEL_PREFIX + k_: v.detach().clone() for k_, v in ctx.model.state_dict().items()}
            for t in range(T):
                lr = float(lrs[t])
                pick = rng.choice(len(xr), size=B, replace=len(xr) < B)
                x0, y0 = xr[pick], np.asarray(yr[pick]).astype(np.int64)
                xp, calls, _ = _solve_step(ctx.model, names, cur, line[t + 1], x0, y0, lr,
                                           ctx.prepare, ctx.loss_fn, penalty, maxiter)
                evals += calls
                xp = xp.astype(xr.dtype)
                rows = plan.batch(t)
                xs[rows], ys[rows] = xp, y0
                plan.lrs[t, :] = lr
                load_model_weights(ctx, cur)
                loss = update(ctx, torch.from_numpy(xs[rows]), torch.from_numpy(ys[rows]),
                              plan.lrs[t].tolist(), t)
                plan.losses[t] = float(loss)
                cur = {MODEL_PREFIX + k_: v.detach().clone()
                       for k_, v in ctx.model.state_dict().items()}
                rel_res.append(_gap(cur, line[t + 1]) / max(_gap(line[t + 1], line[t]), 1e-300))
                pert.append(float(np.linalg.norm(xp.astype(np.float64) - x0)
                                  / max(np.linalg.norm(x0), 1e-300)))
                if t + 1 in ckset:
                    states[t + 1] = {k_: v.clone() for k_, v in cur.items()}
        finally:
            if threads and threads != saved:
                torch.set_num_threads(saved)
        final_gap = _gap(cur, pub.w_final)
        states[T] = {k_: v.clone() for k_, v in pub.w_final.items()}  # the claim: W_T itself
        leaves = sample_leaves(xs, ys)
        spec = replace(spec, data=replace(spec.data, root=merkle_root(leaves).hex()))
        write_proof(out, spec, states, plan, leaves, groups=optim_groups(ctx))
        np.savez(data_path, x=xs, y=ys)
    step_norm = _gap(line[1], line[0])
    hs, hg = honest_cost(pub, measure_honest)
    notes = [f"forged dataset: {data_path}",
             ("rank-matched init shifted to the target's class sums (invariant of SGD on "
              "cross-entropy)" if match_sums else "rank-matched init (class sums not matched)")
             + f", ‖W_0 − W_T‖₂ = {_gap(w0, pub.w_final):.4g}; straight line to "
             f"W_T in T' = {T} steps (one epoch of {n} perturbed samples, B = {B}), k = {kk}",
             f"per-step residual ‖W̃_(t+1) − W_(t+1)‖ / ‖step‖ (float32 update()): max "
             f"{max(rel_res):.3g}, mean {np.mean(rel_res):.3g}; step ‖W_(t+1) − W_t‖ = "
             f"{step_norm:.4g}",
             f"final chain gap ‖W̃_T − W_T‖ = {final_gap:.4g} ({final_gap / step_norm:.3g} steps), "
             "carried by the last segment (its checkpoint is W_T itself)",
             f"relative perturbation ‖Δ‖/‖x‖ per batch: max {max(pert):.3g}, mean "
             f"{np.mean(pert):.3g}",
             f"{evals} L-BFGS function calls (each a forward + double backward) for {T} steps; "
             "no optimizer state (plain SGD has none)"]
    res = AttackResult(name="zhang-data", settings=settings, out=out, wall_seconds=tm.seconds,
                       grad_evals=evals, honest_seconds=hs, honest_grad_evals=hg, notes=notes,
                       forward_evals=T)
    res.settings["residuals"] = {"max_rel": max(rel_res), "mean_rel": float(np.mean(rel_res)),
                                 "final_gap": final_gap, "step_norm": step_norm}
    return res
