"""The sparse-epoch forgery (issue 10 §1): honest steps almost everywhere, a short forged jump to
W_T, and an epoch structure chosen so that the verifier almost never looks at the jump.

What it exploits in a verifier that takes the proof's epoch structure on trust:

- `steps_per_epoch` is not validated against the dataset (S = ceil(N/B), or N // B with
  drop_last): the proof claims ONE epoch of all T' steps. Top-Q and the random segments are drawn
  per epoch, so the whole run is checked by Q + 1 replayed segments (hardened; Q under the paper's
  Algorithm 2), and top-Q is taken over the whole run: the largest honest segment (early in
  training, where updates are large) covers every forged segment whose update is smaller.
- indices need not be a permutation of the dataset within an epoch: the claimed epoch runs over
  several real passes (the forger's own order, repeated), and with `rows` < B every batch row is
  padded (-1) to `rows` samples, in every step, not only the last batch of an epoch (cheaper
  honest steps).

The proof: W_0 is the honest seeded init of the forger's seed (init regeneration passes), `steps`
genuine training steps (default the target's T; the declared optimizer is the target's, with a
constant schedule), then p forged segments on the straight line from the forger's own model to
W_T, each claiming an update just below the largest genuine segment's (`margin`), so top-Q never
picks one; the last checkpoint is W_T exactly. A verifier replaying the top-1 segment (the paper's)
always accepts; the hardened default's one random segment catches it with probability
p / (N − 1) (N segments); replaying every segment (`--all`) rejects it. Cost: about one honest
training (the genuine steps) plus forward passes for the forged steps' recorded losses.

What the verifier must do to reject it: validate the epoch structure (S = ceil(N/B); padding only
in an epoch's last batch; each epoch's indices a permutation of the dataset).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pol.attacks.common import (DEFAULT_FORGER_SEED, AttackResult, Plan, Timer, clone_state,
                                context, forged_spec, forward_loss, honest_cost,
                                load_full_state, load_model_weights, load_public, optim_groups,
                                param_names, run_steps, write_proof)
from pol.errors import ConfigError
from pol.spec import ScheduleSpec
from pol.step import MODEL_PREFIX


def _l2(a: dict, b: dict, names: list[str]) -> float:
    return float(torch.sqrt(sum(((a[n].double() - b[n].double()) ** 2).sum() for n in names)))


def _schedule(base: float, big: float, at: int) -> ScheduleSpec:
    """A declared multistep schedule: `base` before step `at`, `big` from it on (gamma ≤ 10 per
    milestone, so the milestone is repeated)."""
    ratio = big / base
    if ratio <= 1:
        return ScheduleSpec(name="constant")
    j = max(1, math.ceil(math.log10(ratio) - 1e-12))
    return ScheduleSpec(name="multistep", milestones=(at,) * j, gamma=ratio ** (1 / j))


def attack_sparse_epoch(target_proof: str | os.PathLike, out: str | os.PathLike, *,
                        steps: int | None = None, k: int | None = None, rows: int | None = None,
                        anchor: float | None = 4.0, margin: float = 0.9,
                        seed: int = DEFAULT_FORGER_SEED, measure_honest: bool = True,
                        data_dir: str | None = None) -> AttackResult:
    # long: one forgery, read top to bottom: genuine steps, the anchored step, the forged segments
    """Genuine training, a forged jump to W_T in segments smaller than the largest genuine one,
    all claimed as one epoch (module docstring). `steps`: genuine steps (default the target's T,
    rounded up to a multiple of k); `k`: checkpoint interval (default the target's); `rows`: real
    samples per batch (default the batch size; fewer = padded rows); `margin`: a forged segment's
    update ÷ the largest genuine segment's.

    `anchor` (default 4): the last genuine step is taken with a large lr, declared by a multistep
    schedule that raises the lr at that step, so that the last genuine segment claims an update of
    `anchor` × the distance to W_T: the forged jump then needs only 2 segments (without the anchor,
    `anchor=None`, it needs distance ÷ the largest honest segment, ≈ 17 on digits-mlp). One extra
    gradient evaluation (the step is measured at lr 1 first)."""
    settings = {"steps": steps, "k": k, "rows": rows, "anchor": anchor, "margin": margin,
                "seed": seed}
    if not 0 < margin < 1:
        raise ConfigError("margin must be in (0, 1)")
    if anchor is not None and not anchor > 0:
        raise ConfigError("anchor must be positive")
    with Timer() as tm:
        pub = load_public(target_proof, data_dir)
        kk = int(k or pub.spec.k)
        B = pub.spec.batch_size
        r = int(rows or B)
        if not 1 <= r <= B:
            raise ConfigError(f"rows must be in [1, {B}]")
        g = -(-int(steps or pub.total_steps) // kk) * kk  # genuine steps, whole segments
        if g < 1:
            raise ConfigError("steps must be positive")
        spec = forged_spec(pub, seed, epochs=1, k=kk, schedule=ScheduleSpec(name="constant"))
        base = float(spec.optimizer.lr)
        ctx = context(spec)
        names = param_names(ctx)
        G = optim_groups(ctx)
        n = spec.data.size
        from pol.step import epoch_order
        S_real = math.ceil(n / B)  # the forger's own passes over the data, concatenated

        def batch_rows(t: int) -> np.ndarray:
            e, s = divmod(t, S_real)
            b = epoch_order(seed, e, n)[s * B:(s + 1) * B][:r]
            row = np.full(B, -1, dtype=np.int64)
            row[:len(b)] = b
            return row

        plan = Plan(indices=np.stack([batch_rows(t) for t in range(g)]),
                    lrs=np.full((g, G), base), losses=np.full(g, np.nan, dtype=np.float32))
        states = {0: clone_state(ctx)}
        keep = (lambda t: t % kk == 0)
        big = base
        if anchor is None:
            evals = run_steps(ctx, pub.train, plan, 0, g, keep, states)
        else:
            evals = run_steps(ctx, pub.train, plan, 0, g - 1, keep, states)
            before = clone_state(ctx)
            gap0 = _l2(before, pub.w_final, names)
            probe = Plan(indices=plan.indices, lrs=np.ones_like(plan.lrs), losses=plan.losses)
            probe_states: dict[int, dict] = {}
            evals += run_steps(ctx, pub.train, probe, g - 1, g, lambda t: True, probe_states)
            unit = _l2(before, probe_states[g], names)  # the update of this step at lr 1
            big = min(max(anchor * gap0 / max(unit, 1e-30), base), 1e3 * 0.999)
            load_full_state(ctx, spec, before)
            spec = replace(spec, schedule=_schedule(base, big, g - 1))
            big = spec.schedule.lr_at(base, g - 1, g)
            plan.lrs[g - 1:] = big
            evals += run_steps(ctx, pub.train, plan, g - 1, g, keep, states)

        # the largest genuine segment covers the forged ones (top-Q over the one claimed epoch)
        d1 = [_l2(states[a], states[a + kk], names) for a in range(0, g, kk)]
        dmax = max(d1)
        own = states[g]
        gap = _l2(own, pub.w_final, names)
        p = max(1, math.ceil(gap / (margin * dmax)))
        T = g + p * kk
        for j in range(1, p + 1):  # the straight line own → W_T; optimizer state of the end
            a = j / p
            st = dict(own)
            for key, v0 in own.items():
                if key.startswith(MODEL_PREFIX) and v0.is_floating_point():
                    st[key] = (pub.w_final[key].clone() if j == p else
                               (v0.double() + a * (pub.w_final[key].double() - v0.double()))
                               .to(v0.dtype))
            states[g + j * kk] = st
        tail_idx = np.stack([batch_rows(t) for t in range(g, T)])
        lrs = np.array([spec.schedule.lr_at(base, t, T) for t in range(T)])
        plan = Plan(indices=np.concatenate([plan.indices, tail_idx]),
                    lrs=np.repeat(lrs[:, None], G, axis=1),
                    losses=np.concatenate([plan.losses,
                                           np.full(T - g, np.nan, dtype=np.float32)]))
        fwd = 0
        for a in range(g, T, kk):  # recorded losses of the forged steps: forward passes
            load_model_weights(ctx, states[a])
            for t in range(a, a + kk):
                plan.losses[t] = forward_loss(ctx, pub.train, plan.batch(t), t)
                fwd += 1
        write_proof(out, spec, states, plan, pub.leaves, groups=G, claimed_steps_per_epoch=T)
    N = T // kk
    catch = p / max(N - 1, 1)
    notes = [f"claimed 1 epoch of {T} steps (the dataset gives S = {S_real}); {g} genuine "
             f"steps ({N - p} segments, largest update {dmax:.4g}) from the honest init of seed "
             f"{seed}, then {p} forged segment(s) on the line to W_T (gap {gap:.4g}, "
             f"{gap / p:.4g} each ≤ {margin:g}× the largest genuine one); k = {kk}",
             (f"anchor: step {g - 1} taken with lr {big:.4g} (declared: {spec.schedule.name} "
              f"schedule, milestones {list(spec.schedule.milestones)}, gamma "
              f"{spec.schedule.gamma:.4g})" if anchor is not None else
              f"no anchor: constant lr {base:g}"),
             (f"batches: {r} of {B} rows real in every step (the rest padded); "
              if r < B else "batches: full; ")
             + f"the forger's order over {math.ceil(T / S_real)} real pass(es) of the data "
             "within the one claimed epoch (not a permutation)",
             f"top-1 replays a genuine segment; one random segment per epoch hits a forged one "
             f"with probability {catch:.3f} ({p} of {N - 1}); every segment (--all) rejects it",
             "the last checkpoint is W_T exactly"]
    hs, hg = honest_cost(pub, measure_honest)
    return AttackResult(name="sparse-epoch", settings=settings, out=Path(out),
                        wall_seconds=tm.seconds, grad_evals=evals, honest_seconds=hs,
                        honest_grad_evals=hg, notes=notes, forward_evals=fwd)
