"""The spoofs the PoL paper itself evaluates (§VII, Appendix B/D): retraining, inverse gradient,
concatenation, directed retraining, fine-tuning and fine-pruning a stolen model."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from pol.attacks.common import (DEFAULT_FORGER_SEED, AttackResult, Timer, clone_state, context,
                                epochs_for, forged_spec, honest_cost, load_model_weights,
                                load_public, make_plan, optim_groups, param_names, replace_model,
                                run_steps, write_proof)
from pol.errors import ConfigError
from pol.step import seed_step


def _keep(spec, T):
    k = spec.k
    return lambda t: t % k == 0 or t == T


def _result(name, settings, out, timer, grad_evals, pub, measure_honest, notes, fwd=0):
    hs, hg = honest_cost(pub, measure_honest)
    return AttackResult(name=name, settings=settings, out=Path(out), wall_seconds=timer.seconds,
                        grad_evals=grad_evals, honest_seconds=hs, honest_grad_evals=hg,
                        notes=notes, forward_evals=fwd)


# ------------------------------------------------------------------------------------ retrain

def attack_retrain(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                   steps: int | None = None, seed: int = DEFAULT_FORGER_SEED,
                   measure_honest: bool = True, data_dir: str | None = None) -> AttackResult:
    """Retrain from a fresh init (own seed, same hyperparameters) and claim the result ends at
    W_T: the last checkpoint is replaced by the target's final weights."""
    settings = {"steps": steps, "seed": seed}
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        spec = forged_spec(pub, seed, epochs=epochs_for(steps, S, pub.spec.epochs))
        ctx = context(spec)
        plan = make_plan(spec, optim_groups(ctx))
        T = plan.T
        states = {0: clone_state(ctx)}
        evals = run_steps(ctx, pub.train, plan, 0, T, _keep(spec, T), states)
        own_final = {k: v.clone() for k, v in states[T].items()}
        states[T] = replace_model(states[T], pub.w_final)
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))
    gap = _l2(own_final, pub.w_final)
    notes = [f"own retrained model ended ‖W'_T − W_T‖₂ = {gap:.4g} from the target; the last "
             "checkpoint claims W_T (a jump in the final segment)"]
    return _result("retrain", settings, out, tm, evals, pub, measure_honest, notes)


def _l2(a: dict, b: dict) -> float:
    keys = [k for k in b if k in a and b[k].is_floating_point()]
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)))


# ------------------------------------------------------------------------------ inverse gradient

INVERSE_METHODS = ("newton_krylov", "broyden1", "lbfgs", "fixed-point")


def attack_inverse_gradient(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                            steps: int | None = None, seed: int = DEFAULT_FORGER_SEED,
                            method: str = "newton_krylov", tol: float = 1e-10,
                            maxiter: int = 50, measure_honest: bool = True,
                            data_dir: str | None = None) -> AttackResult:
    # long: the paper's Algorithm (inverse-gradient spoof), one solver loop with its bookkeeping in order
    """Invert N training steps from W_T: solve β(W_{t-1}) = W_{t-1} − η∇L(W_{t-1}; batch_t) − W_t
    = 0 for t = N, ..., 1 with a scipy root finder (or minimize ½‖β‖² with L-BFGS), on batches the
    forger picks (own seed), and write the path as a proof with k = 1 whose W_0 is the point
    reached. Plain SGD only (no momentum): with momentum the step also depends on the unknown
    buffer. `steps` defaults to one epoch; it is rounded up to whole epochs."""
    import scipy.optimize as so

    if method not in INVERSE_METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(INVERSE_METHODS)}")
    settings = {"steps": steps, "seed": seed, "method": method, "tol": tol, "maxiter": maxiter}
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        opt = pub.spec.optimizer
        if opt.name != "sgd" or opt.momentum != 0:
            raise ConfigError("inverse-gradient handles plain SGD (momentum 0) only; the target "
                              f"uses {opt.name} with momentum {opt.momentum}")
        S = pub.steps_per_epoch
        spec = forged_spec(pub, seed, k=1, epochs=epochs_for(steps or S, S, 1))
        ctx = context(spec)
        plan = make_plan(spec, optim_groups(ctx))
        T = plan.T
        model64 = copy.deepcopy(ctx.model).double()
        params = list(model64.parameters())
        names = param_names(ctx)
        wd = opt.weight_decay
        calls = [0]
        last_loss = [float("nan")]

        def to_vec(w: dict) -> np.ndarray:
            return torch.cat([w[n].reshape(-1).double() for n in names]).numpy().copy()

        def set_params(w: np.ndarray) -> None:
            torch.nn.utils.vector_to_parameters(torch.from_numpy(np.asarray(w, dtype=np.float64)),
                                                params)

        def batch(t):
            idx = plan.batch(t)
            x = ctx.prepare(torch.from_numpy(pub.train.x[idx])).double()
            if ctx.augment is not None:
                x = ctx.augment(x, ctx.generator(t))
            return x, torch.from_numpy(pub.train.y[idx])

        def grad(w: np.ndarray, t: int, x, y) -> np.ndarray:
            calls[0] += 1
            set_params(w)
            seed_step(spec.seed, t)
            model64.train()
            model64.zero_grad(set_to_none=True)
            loss = ctx.loss_fn(model64(x), y)
            loss.backward()
            last_loss[0] = float(loss.detach())
            g = torch.cat([p.grad.reshape(-1) for p in params]).numpy()
            return g + wd * w

        cur = to_vec(pub.w_final)
        path = {T: cur}
        residuals = []
        for t in range(T - 1, -1, -1):
            lr = float(plan.lrs[t, 0])
            x, y = batch(t)
            w_next = cur

            def F(w, t=t, x=x, y=y, lr=lr, w_next=w_next):
                return w - lr * grad(w, t, x, y) - w_next

            x0 = w_next + lr * grad(w_next, t, x, y)  # backward-Euler predictor
            if method == "newton_krylov":
                try:
                    sol = so.newton_krylov(F, x0, f_tol=tol, maxiter=maxiter)
                except so.NoConvergence as e:
                    sol = e.args[0]
            elif method == "broyden1":
                try:
                    sol = so.broyden1(F, x0, f_tol=tol, maxiter=maxiter)
                except so.NoConvergence as e:
                    sol = e.args[0]
            elif method == "fixed-point":
                sol = x0
                for _ in range(maxiter):
                    new = w_next + lr * grad(sol, t, x, y)
                    done = np.max(np.abs(new - sol)) <= tol
                    sol = new
                    if done:
                        break
            else:  # lbfgs on ½‖β‖², gradient β − η H β by a Hessian-vector product
                def fun(w, t=t, x=x, y=y, lr=lr, w_next=w_next):
                    calls[0] += 2  # gradient + Hessian-vector product
                    set_params(w)
                    seed_step(spec.seed, t)
                    model64.train()
                    loss = ctx.loss_fn(model64(x), y)
                    gs = torch.autograd.grad(loss, params, create_graph=True)
                    g = torch.cat([q.reshape(-1) for q in gs])
                    wt = torch.from_numpy(w)
                    beta = wt - lr * (g + wd * wt) - torch.from_numpy(w_next)
                    hv = torch.autograd.grad(g, params, grad_outputs=beta.detach())
                    hv = torch.cat([h.reshape(-1) for h in hv]).detach()
                    b = beta.detach()
                    jac = b - lr * (hv + wd * b)
                    return 0.5 * float(b @ b), jac.numpy()

                sol = so.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": maxiter, "gtol": tol * 1e-3,
                                           "ftol": 0}).x
            res = F(sol)
            residuals.append(float(np.max(np.abs(res))))
            plan.losses[t] = last_loss[0]
            cur = np.asarray(sol, dtype=np.float64)
            path[t] = cur

        base = clone_state(ctx)  # fresh buffers; SGD without momentum keeps no state
        states = {}
        for t, w in path.items():
            st = dict(base)
            off = 0
            for n in names:
                numel = base[n].numel()
                st[n] = torch.from_numpy(w[off:off + numel]).reshape(base[n].shape).to(
                    base[n].dtype)
                off += numel
            states[t] = st
        states[T] = replace_model(states[T], pub.w_final)
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))
    from pol.verifier import check_init  # the published KS test (public API)
    ok, layers, thr = check_init(ctx.model, spec.model.init,
                                 {n[len("model."):]: states[0][n] for n in names})
    pmin = min((r.pvalue for r in layers), default=float("nan"))
    notes = [f"{T} steps inverted with {method}: {calls[0]} gradient evaluations "
             f"({calls[0] / T:.1f} per inverted step vs 1 per training step); max |β| after "
             f"solving: median {np.median(residuals):.2e}, worst {max(residuals):.2e}",
             f"reached W_0: KS min p = {pmin:.3g} (threshold {thr:.3g}) -> "
             f"{'passes' if ok else 'fails'} the init check; ‖W_0 − W_T‖₂ = "
             f"{float(np.linalg.norm(path[0] - path[T])):.4g}",
             "the proof claims the forger's own batches (own seed) and k = 1"]
    return _result("inverse-gradient", settings, out, tm, calls[0], pub, measure_honest, notes)


# ------------------------------------------------------------------------------ concatenation

def attack_concatenate(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                       steps: int | None = None, finetune_steps: int | None = None,
                       seed: int = DEFAULT_FORGER_SEED, measure_honest: bool = True,
                       data_dir: str | None = None) -> AttackResult:
    """Two valid pieces glued (§VII-C1): a fresh model trained s steps (valid start W'_0 → W'_s)
    and W_T fine-tuned for the remaining steps (valid end W_T → f). The segment at the glue claims
    W'_s → (W_T after its first k fine-tuning steps). `steps`: total length (rounded up to whole
    epochs, default 2 epochs); `finetune_steps`: default one epoch. The claimed model is the
    fine-tuned f ≈ W_T, not W_T itself (as in the paper)."""
    settings = {"steps": steps, "finetune_steps": finetune_steps, "seed": seed}
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        spec = forged_spec(pub, seed, epochs=epochs_for(steps, S, 2))
        k = spec.k
        T = spec.epochs * S
        ft_req = finetune_steps if finetune_steps is not None else S
        s = max(k, ((T - max(1, ft_req)) // k) * k)
        if s >= T:
            raise ConfigError(f"concatenate needs a total length ({T}) above k ({k}) plus "
                              "fine-tuning steps")
        ctx_b = context(spec)
        plan = make_plan(spec, optim_groups(ctx_b))
        keep = _keep(spec, T)
        states = {0: clone_state(ctx_b)}
        evals = run_steps(ctx_b, pub.train, plan, 0, s, keep, states)
        fresh_end = states[s]
        ctx_a = context(spec)  # fresh optimizer state
        load_model_weights(ctx_a, pub.w_final)
        piece_a: dict[int, dict] = {}
        evals += run_steps(ctx_a, pub.train, plan, s, T, keep, piece_a)
        for t, st in piece_a.items():
            states[t] = st
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx_b))
    nxt = min(t for t in piece_a)
    notes = [f"fresh piece: steps 0–{s}; fine-tuned piece of W_T: steps {s}–{T}; the glued "
             f"segment {s}–{nxt} jumps ‖·‖₂ = {_l2(fresh_end, piece_a[nxt]):.4g}",
             "final claimed model is W_T fine-tuned for "
             f"{T - s} steps (‖f − W_T‖₂ = {_l2(piece_a[T], pub.w_final):.4g})"]
    return _result("concatenate", settings, out, tm, evals, pub, measure_honest, notes)


# ------------------------------------------------------------------------------ directed retraining

def attack_directed_retrain(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                            steps: int | None = None, lam: float = 1.0,
                            seed: int = DEFAULT_FORGER_SEED, measure_honest: bool = True,
                            data_dir: str | None = None) -> AttackResult:
    """Train from a fresh init with the loss plus λ‖W − W_T‖² (pulling towards the stolen
    weights); the proof records the plain step's batches and lrs, so replay (without the
    regularizer) diverges. The last checkpoint claims W_T exactly."""
    settings = {"steps": steps, "lam": lam, "seed": seed}
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        spec = forged_spec(pub, seed, epochs=epochs_for(steps, S, pub.spec.epochs))
        ctx = context(spec)
        plan = make_plan(spec, optim_groups(ctx))
        T = plan.T
        anchors = [pub.w_final["model." + n].to(p.dtype) for n, p in ctx.model.named_parameters()]

        def step(c, x, y, lrs, t):
            for g, lr in zip(c.optimizer.param_groups, lrs):
                g["lr"] = float(lr)
            seed_step(c.seed, t)
            inputs = c.prepare(x)
            if c.augment is not None:
                inputs = c.augment(inputs, c.generator(t))
            c.model.train()
            c.optimizer.zero_grad(set_to_none=True)
            loss = c.loss_fn(c.model(inputs), y)
            reg = sum(((p - a) ** 2).sum() for p, a in zip(c.model.parameters(), anchors))
            (loss + lam * reg).backward()
            c.optimizer.step()
            return loss.detach()

        states = {0: clone_state(ctx)}
        evals = run_steps(ctx, pub.train, plan, 0, T, _keep(spec, T), states, step_fn=step)
        gap = _l2(states[T], pub.w_final)
        states[T] = replace_model(states[T], pub.w_final)
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))
    notes = [f"λ = {lam}: directed model ended ‖W'_T − W_T‖₂ = {gap:.4g} from the target; the "
             "last checkpoint claims W_T"]
    return _result("directed-retrain", settings, out, tm, evals, pub, measure_honest, notes)


# ------------------------------------------------------------------------------ fine-tune / prune

def _finetune(name, target_proof, out, steps, seed, measure_honest, data_dir, prune):
    settings = {"steps": steps, "seed": seed}
    if prune is not None:
        settings["prune"] = prune
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        S = pub.steps_per_epoch
        spec = forged_spec(pub, seed, epochs=epochs_for(steps, S, 1))
        ctx = context(spec)
        w0 = {k: v.clone() for k, v in pub.w_final.items()}
        zeroed = 0
        if prune is not None:
            for n, p in ctx.model.named_parameters():
                key = "model." + n
                if p.dim() >= 2:  # magnitude pruning of weight matrices / kernels
                    w = w0[key]
                    q = int(prune * w.numel())
                    if q:
                        thr = w.abs().reshape(-1).kthvalue(q).values
                        mask = w.abs() <= thr
                        zeroed += int(mask.sum())
                        w0[key] = torch.where(mask, torch.zeros_like(w), w)
        load_model_weights(ctx, w0)
        plan = make_plan(spec, optim_groups(ctx))
        T = plan.T
        states = {0: clone_state(ctx)}
        evals = run_steps(ctx, pub.train, plan, 0, T, _keep(spec, T), states)
        write_proof(out, spec, states, plan, pub.leaves, groups=optim_groups(ctx))
    notes = [f"W_0 := {'pruned ' if prune is not None else ''}W_T"
             + (f" ({zeroed} weights zeroed, fraction {prune} per weight tensor; pruned weights "
                "may regrow: no mask during fine-tuning, so that steps replay)"
                if prune is not None else "")
             + f", fine-tuned {T} steps; the claimed model is the fine-tuned one "
             f"(‖f − W_T‖₂ = {_l2(states[T], pub.w_final):.4g}); init declared as the "
             f"{spec.model.init} strategy (no parent proof exists for W_T)"]
    return _result(name, settings, out, tm, evals, pub, measure_honest, notes)


def attack_finetune(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                    steps: int | None = None, seed: int = DEFAULT_FORGER_SEED,
                    measure_honest: bool = True, data_dir: str | None = None) -> AttackResult:
    """W_0 := W_T, a short fine-tuning (default one epoch), an honest proof of that."""
    return _finetune("finetune", target_proof, out, steps, seed, measure_honest, data_dir, None)


def attack_fineprune(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                     steps: int | None = None, prune: float = 0.5,
                     seed: int = DEFAULT_FORGER_SEED, measure_honest: bool = True,
                     data_dir: str | None = None) -> AttackResult:
    """W_0 := W_T with the smallest `prune` fraction of every weight matrix zeroed, then a short
    fine-tuning with an honest proof."""
    if not 0 <= prune < 1:
        raise ConfigError("prune must be in [0, 1)")
    return _finetune("fineprune", target_proof, out, steps, seed, measure_honest, data_dir, prune)

