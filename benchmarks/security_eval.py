"""Security evaluation: every spoofing attack against the paper's verifier (`--policy paper`, top-1)
and pol's hardened verifier (the default), plus both verifiers' acceptance rate over honest proofs.
Writes docs/SECURITY.md and benchmarks/results/security.json.

    python benchmarks/security_eval.py                 # digits-mlp, digits-cnn, iris-logreg; 20 honest seeds
    python benchmarks/security_eval.py --honest 5 --tasks iris-logreg   # quick
    python benchmarks/security_eval.py --resnet-honest -1               # without synthetic-resnet20

synthetic-resnet20 runs at a toy size (RESNET below) after the other tasks: its attack rows, and
--resnet-honest honest proofs (default 3).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pol.attacks import PAPER_ATTACKS, run_attack
from pol.prover.trainer import train_task
from pol.verifier import verify

ROOT = Path(__file__).resolve().parents[1]

# (row label, attack name, settings); inverse-gradient needs plain SGD (iris-logreg only)
SETTINGS = [
    ("retrain", "retrain", {}),
    ("concatenate", "concatenate", {}),
    ("directed-retrain λ=1", "directed-retrain", {"lam": 1.0}),
    ("finetune", "finetune", {}),
    ("fineprune 50%", "fineprune", {"prune": 0.5}),
    ("inverse-gradient newton_krylov", "inverse-gradient", {"method": "newton_krylov"}),
    ("inverse-gradient, claims device=cuda", "inverse-gradient",
     {"method": "newton_krylov", "claim_device": "cuda"}),
    ("zhang-init (rank-resampled init, interpolated)", "zhang-init", {}),
    ("zhang-data (Attacks I/II: perturbed data reproduces each step; user data)", "zhang-data",
     {}),
    ("zhang-data, full convergence (T' = T, maxiter 40; the earlier setting)", "zhang-data",
     {"steps": "T", "maxiter": 40, "tol": 0.0, "final_tol": 0.0, "warm": False, "reaim": False,
      "exact_chain": True, "dtype": "float64", "init_draws": 1}),
    ("zhang-zero (Attack III: zero-gradient data, anchored; user data)", "zhang-zero", {}),
    ("zhang-zero, no anchor, δ set by the verifier (honest auto δ, l2)", "zhang-zero",
     {"anchor": False, "k": 5, "delta": "honest"}),
    ("fang (lr 1e-6, k=1)", "fang", {}),
    ("fang anchored (one real step per epoch)", "fang", {"anchor_lr": 0.5}),
    ("fang anchored, claims device=cuda", "fang", {"anchor_lr": 0.5, "claim_device": "cuda"}),
    ("optimizer-state (checkpoint-0 Adam state absorbs every gradient)", "optimizer-state",
     {"optimizer": "adam"}),
    ("optimizer-state, SGD-momentum variant", "optimizer-state", {"optimizer": "sgd"}),
    ("optimizer-state, NaN losses", "optimizer-state", {"optimizer": "adam", "losses": "nan"}),
    ("optimizer-state, claims device=cuda", "optimizer-state",
     {"optimizer": "adam", "claim_device": "cuda"}),
    ("sparse-epoch (one claimed epoch; 2 forged segments behind an anchored step)",
     "sparse-epoch", {}),
]
ENTROPY = b"security-eval"
# attacks that need plain SGD (no momentum, no weight decay): iris-logreg here
PLAIN_SGD_ONLY = ("inverse-gradient", "zhang-data")
# synthetic-resnet20 at the smallest size that still has several segments per epoch (2 CPU cores)
RESNET = {"task": "synthetic-resnet20", "epochs": 2, "k": 2, "batch_size": 32,
          "dataset_params": {"seed": 0, "n_train": 256, "n_test": 64}}

LIMITS = [
    "- Honest acceptance is measured on the machine that made the proofs, where the hardened "
    "verifier runs in exact mode. Honest proofs replayed on *other* hardware (e.g. a "
    "non-deterministic GPU proof checked on a CPU) were not part of this table; "
    "docs/BENCHMARKS.md shows that the auto δ rejects such proofs at k ≥ 10 — calibrate δ "
    "(`pol calibrate`) or train with `--deterministic`. The relative-error bound (0.5) has not "
    "been validated on non-deterministic GPU replays.",
    "- `zhang-data` (Zhang et al. Attacks I/II) perturbs real samples so that each step of a "
    "straight line from a rank-matched init to W_T is a genuine SGD step; the forger ships its "
    "perturbed samples as the proof's (user) dataset — the realistic setting in which the "
    "paper's verifier accepts it. The default settings stop each step's L-BFGS at the residual "
    "that δ tolerates (only the last segment must land near W_T: the other checkpoints are the "
    "forger's own chain), warm-start Δ on the same samples, re-aim every step at W_T and take "
    "T' = T/4 steps; on iris this costs about 0.6× honest training (median over forger seeds "
    "1–6; 0.6–2.6×, the default seed 2×) against ≈ 43× for full convergence (the row above it). "
    "Its perturbations are large (‖Δ‖/‖x‖ ≈ 0.7): a verifier that binds the proof to a known "
    "dataset (a built-in dataset, or a data root committed on a ledger) rejects it by the "
    "dataset commitment; pol's hardened verifier also rejects it by init regeneration. It needs "
    "plain SGD (iris-logreg here). It gets harder as the target trains longer: on iris trained "
    "20 epochs (T = 160) neither the cheap settings (T' = 40; 3.75×) nor full convergence at "
    "T' = 40 (10.5×) reach W_T (mean step residual 0.5–0.76, final gap 13–14 steps) and the "
    "paper's verifier rejects both; a near-converged model's gradient cannot be pushed that far "
    "per step by perturbing 16 samples, so T' must approach T (the ≈ 43×-per-step regime).",
    "- `zhang-zero` (Attack III): checkpoints on the line to W_T, each step's batch perturbed so "
    "that its gradient is ≈ 0 (L-BFGS driving the batch loss to 0: samples pushed deep into "
    "their own class; one solution reused for every step and only checked every 8 steps), so a "
    "replay stays at its starting checkpoint and the gap to the next one must be within δ. "
    "The paper's auto δ is the mean single-step update of the proof itself, so a uniform line "
    "never fits (a k-step gap is k·δ; at k = 1 it equals δ): the forger makes step 0 a genuine "
    "step on real samples scaled up (the proof's largest update — the only segment top-1 "
    "replays — which lifts the mean) and claims k = 1; then every zero-gradient step lands "
    "within δ, even when the verifier replays every segment (iris; cost ≈ 1× at T = 24, "
    "0.28× — 44 of 160 gradient evaluations — on iris trained 20 epochs, since one solve serves "
    "the whole proof). With a δ the verifier sets "
    "itself (the honest proof's auto δ, the paper's \"average of a few gradient updates\"), no "
    "anchor is needed: T' is chosen so every gap is 0.9 δ (on digits-mlp, with its momentum "
    "and dropout, this passes even replaying every segment, at under half the honest cost). "
    "The anchored variant on digits-mlp passes top-1 only because top-1 replays just the "
    "genuine anchor: with gaps at 0.85 δ, the zero-gradient batch thinned by the replay's "
    "dropout masks moves the weights enough to fail `--all`. The hardened "
    "verifier rejects it by init regeneration, relative error (a replay ends a whole gap away, "
    "≈ 1× the claimed update) and exact mode.",
    "- `zhang-init` without perturbed data does not replay, so the paper's verifier rejects it.",
    "- Init regeneration is what stops fine-tuning and inverse-gradient spoofs on tiny models, "
    "where the KS test has too few weights (12 on iris) to tell. It relies on pol drawing W_0 "
    "from the seed; a proof made elsewhere with its own init can only be judged by KS and rank "
    "correlation. The Zhang et al. rows are rejected by the hardened verifier by more than init "
    "regeneration only where the table's last column says so (zhang-data: also exact mode).",
    "- Exact mode rests on the proof's claims (device, torch version, CPU kernel family); a "
    "forger who claims a GPU gets tolerance, and the remaining defences (relative error, random "
    "segments, loss replay) then decide — they do in every row above.",
    "- `optimizer-state` (issue 10): W_0 is the forger's honest seeded init and checkpoint 0 "
    "carries an optimizer state that pol never writes there: Adam moments with β1 = β2 = "
    "1 − 1e-15 (β2 is 1.0 in float32, the lerp weight 1 − β1 is far below 2^-25) or an SGD "
    "momentum buffer ≥ 1e12 with momentum 1.0 in float32 and lr ≈ 1e-22, so every real gradient "
    "is absorbed below half an ulp and each step moves the weights by what the state alone "
    "dictates. The forger runs torch's own optimizer with zero gradients (no gradient "
    "evaluation; the cost is forward passes for plausible losses, or none with NaN losses); the "
    "verifier's honest replay lands bitwise on every checkpoint, model and optimizer state, so "
    "the published verifier accepts it in exact mode, also replaying every segment. It ends "
    "within a few ulps of W_T. The hardened verifier must reject it by the checkpoint-0 "
    "optimizer state (not a fresh optimizer's), the hyperparameter and state plausibility "
    "checks and, in general, by requiring a replayed step to depend on its data. Models with "
    "batch-norm running statistics (resnet) are out of its reach: those follow the data.",
    "- `sparse-epoch` (issue 10): the proof claims one epoch of all its steps (steps_per_epoch "
    "is not checked against the dataset, indices need not be a permutation), so top-1 is taken "
    "over the whole run and one random segment stands for the whole run. Genuine training from "
    "the honest init, whose last step is taken with a large lr declared by a multistep schedule "
    "(the largest segment, replayed exactly by top-1), then two forged segments on the line to "
    "W_T, each smaller than that step; about 1× honest cost. The paper's top-1 always accepts "
    "it, `--all` rejects it, and the default's random segment hits a forged one with "
    "probability 2 / (N − 1) for N segments (the table's hardened verdict is one draw with a "
    "fixed seed). The hardened verifier must reject it by the epoch structure check.",
    "- synthetic-resnet20 is evaluated at a toy size (256 synthetic samples, batch 32, 2 epochs, "
    "k = 2: 16 steps) to fit a 2-core CPU; inverse-gradient and the Zhang et al. data attacks "
    "do not apply to it (momentum with weight decay).",
]  # fixed verifier randomness so the table is reproducible


def verdicts(path: Path, data: str | None = None, paper_delta: dict | None = None) -> dict:
    """paper (top-1), paper replaying every segment, hardened. `paper_delta`: a δ the paper's
    verifier sets itself (l2 only), instead of its auto δ."""
    out = {}
    given = {"delta": paper_delta, "metrics": tuple(paper_delta)} if paper_delta else {}
    for key, policy, kw in (("paper", "paper", given),
                            ("paper_all", "paper", {**given, "all_segments": True}),
                            ("hardened", "hardened", {})):
        r = verify(path, policy=policy, entropy=ENTROPY, data=data, **kw)
        out[key] = {"valid": r.valid, "failed": [c.name for c in r.checks if c.failed]}
    return out


def applies(name: str, settings: dict, target: Path) -> bool:
    from pol.proof.reader import open_proof
    o = open_proof(target).manifest.spec.optimizer
    if name in PLAIN_SGD_ONLY:
        return o.name == "sgd" and not o.momentum and not o.weight_decay
    if name == "zhang-zero":
        return o.name == "sgd" and not o.weight_decay
    if name == "optimizer-state":  # batch-norm running statistics follow the data
        from pol.attacks.optstate import _has_running_stats
        from pol.registry import build_model
        with torch.device("meta"):
            return not _has_running_stats(build_model(open_proof(target).manifest.spec.model))
    return True


def run_rows(task: str, target: Path, tmp: Path, rows: list) -> None:
    from pol.proof.reader import open_proof
    for label, name, settings in SETTINGS:
        if not applies(name, settings, target):
            continue
        settings = dict(settings)
        paper_delta = None
        if settings.get("steps") == "T":
            settings["steps"] = open_proof(target).manifest.total_steps
        if settings.get("delta") == "honest":  # the verifier's δ: its auto δ on the honest proof
            settings["delta"] = verify(target, policy="paper").deltas["l2"]
            paper_delta = {"l2": settings["delta"]}
        spoof = tmp / task / "".join(c if c.isalnum() else "_" for c in label)
        try:
            res = run_attack(name, target, spoof, **settings)
        except Exception as e:  # noqa: BLE001 - an attack that cannot run is reported
            rows.append({"task": task, "attack": label, "error": str(e)})
            print(f"{task:18} {label:45} could not run: {e}")
            continue
        data = next((n.split(": ", 1)[1] for n in res.notes
                     if n.startswith("forged dataset: ")), None)
        v = verdicts(spoof, data, paper_delta)  # zhang-*: the forger supplies its (user) data
        rows.append({"task": task, "attack": label, "name": name,
                     "paper_attack": name in PAPER_ATTACKS,
                     "cost_ratio": res.cost_ratio, "time_ratio": res.time_ratio,
                     "grad_evals": res.grad_evals,
                     "honest_grad_evals": res.honest_grad_evals, **v})
        print(f"{task:18} {label:45} cost {res.cost_ratio:6.2f}x  paper "
              f"{'ACCEPT' if v['paper']['valid'] else 'reject'} (all: "
              f"{'ACCEPT' if v['paper_all']['valid'] else 'reject'})  hardened "
              f"{'ACCEPT' if v['hardened']['valid'] else 'reject'} {v['hardened']['failed'][:3]}")


def honest_rate(task: str, tmp: Path, n: int, train_kw: dict) -> dict:
    acc = {"paper": 0, "hardened": 0}
    fails: dict[str, list] = {"paper": [], "hardened": []}
    for s in range(n):
        p = tmp / task / f"honest{s}"
        train_task(task, p, seed=100 + s, **train_kw)
        v = verdicts(p)
        for pol in acc:
            acc[pol] += v[pol]["valid"]
            if not v[pol]["valid"]:
                fails[pol].append((s, v[pol]["failed"]))
        shutil.rmtree(p)
    print(f"{task}: honest acceptance paper {acc['paper']}/{n}, hardened {acc['hardened']}/{n}")
    return {"n": n, "accepted": acc, "failures": fails, "setting": train_kw}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="digits-mlp,digits-cnn,iris-logreg")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--honest", type=int, default=20, help="honest proofs per task")
    ap.add_argument("--resnet-honest", type=int, default=3,
                    help="honest synthetic-resnet20 proofs (its attack rows run unless this is "
                         "negative)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "SECURITY.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="pol-security-"))
    rows, honest = [], {}
    t_start = time.perf_counter()
    try:
        for task in args.tasks.split(","):
            target = tmp / task / "target"
            kw = {"epochs": args.epochs, "k": 5}
            train_task(task, target, seed=1, **kw)
            run_rows(task, target, tmp, rows)
            honest[task] = honest_rate(task, tmp, args.honest, kw)
        if args.resnet_honest >= 0:
            task = RESNET["task"]
            kw = {k: v for k, v in RESNET.items() if k != "task"}
            target = tmp / task / "target"
            train_task(task, target, seed=1, **kw)
            run_rows(task, target, tmp, rows)
            if args.resnet_honest:
                honest[task] = honest_rate(task, tmp, args.resnet_honest, kw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    write_report(Path(args.out), rows, honest, args, elapsed)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "security.json").write_text(
        json.dumps({"rows": rows, "honest": honest}, indent=1))


def write_report(out: Path, rows: list, honest: dict, args, elapsed: float) -> None:
    def verdict(v: dict) -> str:
        return "**ACCEPTED**" if v["valid"] else "rejected"

    lines = [
        "# Security evaluation",
        "",
        f"Generated by `python benchmarks/security_eval.py` on {dt.date.today()} "
        f"({platform.machine()}, torch {torch.__version__}, 1 thread; {elapsed:.0f} s). "
        f"Targets: the built-in tasks trained for {args.epochs} epochs, k = 5, and "
        f"synthetic-resnet20 at a toy size ({RESNET['dataset_params']['n_train']} samples, batch "
        f"{RESNET['batch_size']}, {RESNET['epochs']} epochs, k = {RESNET['k']}). Spoofs use only "
        "public information: the target's spec, its final weights and the dataset "
        "(`pol.attacks`). *Paper* = Algorithm 2 as published (`--policy paper`, top-1 per epoch); "
        "*paper, all* = the same verifier replaying every segment (`--all`); "
        "*hardened* = pol's default verifier (exact mode where the claimed device allows it, "
        "relative error, one random segment per epoch, init regeneration and rank correlation, "
        "loss replay, and any further named check it has). Cost = gradient evaluations of the "
        "spoof ÷ those of honest training (an L-BFGS call counts as one). The zhang-data and "
        "zhang-zero spoofs are verified on the forger's own (user) dataset; the "
        "\"δ set by the verifier\" row is verified by the paper's verifier with that δ in l2.",
        "",
        "| task | attack | spoof cost / honest | paper verifier | paper, all | hardened verifier "
        "| caught by |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['attack']} | — | could not run | — | — | "
                         f"{r['error']} |")
            continue
        caught = ", ".join(r["hardened"]["failed"]) or "—"
        lines.append(f"| {r['task']} | {r['attack']} | {r['cost_ratio']:.2f} | "
                     f"{verdict(r['paper'])} | {verdict(r['paper_all'])} | "
                     f"{verdict(r['hardened'])} | {caught} |")
    lines += ["", "## Honest proofs (false rejections)", "",
              "| task | honest proofs | accepted by paper | accepted by hardened |",
              "|---|---|---|---|"]
    tot = {"n": 0, "paper": 0, "hardened": 0}
    for task, h in honest.items():
        lines.append(f"| {task}{' (toy size)' if task == RESNET['task'] else ''} | {h['n']} | "
                     f"{h['accepted']['paper']} | "
                     f"{h['accepted']['hardened']} |")
        tot["n"] += h["n"]
        tot["paper"] += h["accepted"]["paper"]
        tot["hardened"] += h["accepted"]["hardened"]
    if tot["n"]:
        lines.append(f"| all | {tot['n']} | {tot['paper']} ({tot['paper'] / tot['n']:.1%}) | "
                     f"{tot['hardened']} ({tot['hardened'] / tot['n']:.1%}) |")
    accepted_paper = [r for r in rows if "error" not in r and r["paper_attack"]
                      and r["paper"]["valid"]]
    accepted_hard = [r for r in rows if "error" not in r and r["hardened"]["valid"]]
    lines += ["", "## Findings", ""]
    if accepted_paper:
        lines.append("Attacks from the paper that its own verifier **accepts** here:")
        lines += [f"- {r['task']}: {r['attack']} (cost {r['cost_ratio']:.2f}× honest)"
                  for r in accepted_paper]
    else:
        lines.append("Every attack from the paper is rejected by the paper's verifier.")
    later = [r for r in rows if "error" not in r and not r["paper_attack"] and r["paper"]["valid"]]
    if later:
        lines += ["", "Later attacks (Zhang et al., Fang et al., and issue 10's optimizer-state and "
                  "sparse-epoch forgeries) that the paper's verifier **accepts** here:"]
        lines += [f"- {r['task']}: {r['attack']} (cost {r['cost_ratio']:.2f}× honest; replaying "
                  f"every segment: {'accepted' if r['paper_all']['valid'] else 'rejected'})"
                  for r in later]
    lines.append("")
    if accepted_hard:
        lines.append("Spoofs that **beat the hardened verifier** (findings, not tuned away):")
        lines += [f"- {r['task']}: {r['attack']} (cost {r['cost_ratio']:.2f}× honest"
                  f"{'; costlier than honest training, so not a spoof by Definition 2' if r['cost_ratio'] > 1 else ''})"
                  for r in accepted_hard]
    else:
        lines.append("No spoof beats the hardened verifier in these settings.")
    lines += ["", "## Scope and limits of this evaluation", "", *LIMITS]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
