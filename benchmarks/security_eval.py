"""Security evaluation: every spoofing attack against the paper's verifier (`--policy paper`, top-1)
and pol's hardened verifier (the default), plus both verifiers' acceptance rate over honest proofs.
Writes docs/SECURITY.md and benchmarks/results/security.json.

    python benchmarks/security_eval.py                 # digits-mlp, digits-cnn, iris-logreg; 20 honest seeds
    python benchmarks/security_eval.py --honest 5 --tasks iris-logreg   # quick
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
     {"maxiter": 40}),
    ("fang (lr 1e-6, k=1)", "fang", {}),
    ("fang anchored (one real step per epoch)", "fang", {"anchor_lr": 0.5}),
    ("fang anchored, claims device=cuda", "fang", {"anchor_lr": 0.5, "claim_device": "cuda"}),
]
ENTROPY = b"security-eval"

LIMITS = [
    "- Honest acceptance is measured on the machine that made the proofs, where the hardened "
    "verifier runs in exact mode. Honest proofs replayed on *other* hardware (e.g. a "
    "non-deterministic GPU proof checked on a CPU) were not part of this table; "
    "docs/BENCHMARKS.md shows that the auto δ rejects such proofs at k ≥ 10 — calibrate δ "
    "(`pol calibrate`) or train with `--deterministic`. The relative-error bound (0.5) has not "
    "been validated on non-deterministic GPU replays.",
    "- `zhang-data` (Zhang et al. Attacks I/II) perturbs real samples per step so that each "
    "interpolated step is a genuine SGD step; the forger ships its perturbed samples as the "
    "proof's (user) dataset. This is the realistic setting where the paper's verifier accepts it. "
    "Its perturbations are large (‖Δ‖/‖x‖ ≈ 0.7–0.9 on iris): a verifier that binds the proof "
    "to a known dataset (a built-in dataset, or a committed data root on a ledger) rejects it by "
    "the dataset commitment; pol's hardened verifier also rejects it by init regeneration. It is "
    "costlier than honest training here (tens of L-BFGS calls per step on iris). Attack III "
    "(zero-gradient data) is not implemented. `zhang-init` without perturbed data does not replay, "
    "so the paper's verifier rejects it.",
    "- Init regeneration is what stops fine-tuning and inverse-gradient spoofs on tiny models, "
    "where the KS test has too few weights (12 on iris) to tell. It relies on pol drawing W_0 "
    "from the seed; a proof made elsewhere with its own init can only be judged by KS and rank "
    "correlation.",
    "- Exact mode rests on the proof's claims (device, torch version, CPU kernel family); a "
    "forger who claims a GPU gets tolerance, and the remaining defences (relative error, random "
    "segments, loss replay) then decide — they do in every row above.",
    "- synthetic-resnet20 is not evaluated here (CPU cost); the attacks are model-agnostic.",
]  # fixed verifier randomness so the table is reproducible


def verdicts(path: Path, data: str | None = None) -> dict:
    out = {}
    for policy in ("paper", "hardened"):
        r = verify(path, policy=policy, entropy=ENTROPY, data=data)
        out[policy] = {"valid": r.valid, "failed": [c.name for c in r.checks if c.failed]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="digits-mlp,digits-cnn,iris-logreg")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--honest", type=int, default=20, help="honest proofs per task")
    ap.add_argument("--out", default=str(ROOT / "docs" / "SECURITY.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="pol-security-"))
    rows, honest = [], {}
    t_start = time.perf_counter()
    try:
        for task in args.tasks.split(","):
            target = tmp / task / "target"
            train_task(task, target, epochs=args.epochs, k=5, seed=1)
            for label, name, settings in SETTINGS:
                if name in ("inverse-gradient", "zhang-data") and task != "iris-logreg":
                    continue  # plain-SGD logistic regression only
                spoof = tmp / task / "".join(c if c.isalnum() else "_" for c in label)
                try:
                    res = run_attack(name, target, spoof, **settings)
                except Exception as e:  # noqa: BLE001 - an attack that cannot run is reported
                    rows.append({"task": task, "attack": label, "error": str(e)})
                    print(f"{task:12} {label:45} could not run: {e}")
                    continue
                data = next((n.split(": ", 1)[1] for n in res.notes
                             if n.startswith("forged dataset: ")), None)
                v = verdicts(spoof, data)  # zhang-data: the forger supplies its (perturbed) data
                rows.append({"task": task, "attack": label, "name": name,
                             "paper_attack": name in PAPER_ATTACKS,
                             "cost_ratio": res.cost_ratio, "time_ratio": res.time_ratio,
                             "grad_evals": res.grad_evals,
                             "honest_grad_evals": res.honest_grad_evals, **v})
                print(f"{task:12} {label:45} cost {res.cost_ratio:6.2f}x  paper "
                      f"{'ACCEPT' if v['paper']['valid'] else 'reject'}  hardened "
                      f"{'ACCEPT' if v['hardened']['valid'] else 'reject'} "
                      f"{v['hardened']['failed'][:3]}")
            acc = {"paper": 0, "hardened": 0}
            fails: dict[str, list] = {"paper": [], "hardened": []}
            for s in range(args.honest):
                p = tmp / task / f"honest{s}"
                train_task(task, p, epochs=args.epochs, k=5, seed=100 + s)
                v = verdicts(p)
                for pol in acc:
                    acc[pol] += v[pol]["valid"]
                    if not v[pol]["valid"]:
                        fails[pol].append((s, v[pol]["failed"]))
                shutil.rmtree(p)
            honest[task] = {"n": args.honest, "accepted": acc, "failures": fails}
            print(f"{task}: honest acceptance paper {acc['paper']}/{args.honest}, hardened "
                  f"{acc['hardened']}/{args.honest}")
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
        f"Targets: the built-in tasks trained for {args.epochs} epochs, k = 5. Spoofs use only "
        "public information: the target's spec, its final weights and the dataset "
        "(`pol.attacks`). *Paper* = Algorithm 2 as published (`--policy paper`, top-1 per epoch); "
        "*hardened* = pol's default verifier (exact mode where the claimed device allows it, "
        "relative error, one random segment per epoch, init regeneration and rank correlation, "
        "loss replay). Cost = gradient evaluations of the spoof ÷ those of honest training.",
        "",
        "| task | attack | spoof cost / honest | paper verifier | hardened verifier | caught by |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['attack']} | — | could not run | — | {r['error']} |")
            continue
        caught = ", ".join(r["hardened"]["failed"]) or "—"
        lines.append(f"| {r['task']} | {r['attack']} | {r['cost_ratio']:.2f} | "
                     f"{verdict(r['paper'])} | {verdict(r['hardened'])} | {caught} |")
    lines += ["", "## Honest proofs (false rejections)", "",
              "| task | honest proofs | accepted by paper | accepted by hardened |",
              "|---|---|---|---|"]
    tot = {"n": 0, "paper": 0, "hardened": 0}
    for task, h in honest.items():
        lines.append(f"| {task} | {h['n']} | {h['accepted']['paper']} | "
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
