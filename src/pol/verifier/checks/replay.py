"""The verdict on replayed segments: δ and tolerance, each segment judged, and the checks over
all of them. Pure functions of the replay outcomes (`pol.verifier.parallel.SegmentOutcome`), the
claimed updates, δ and the policy: whichever executor replayed the segments, the verdict is the
same."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from pol.spec import current_cpu_capability, current_gpu_name
from pol.verifier.checks import CheckName, CheckResult
from pol.verifier.distances import fp16_rounding_floor
from pol.verifier.policy import Defence, Policy

DELTA_RULE = ("auto δ per metric = max(ρ · mean single-step update over the proof, "
              "c · fp16 storage rounding floor), ρ = 1, c = 8 (floor only for fp16 proofs): the "
              "paper's heuristic (δ ≈ the average of a few gradient updates), for replays on the "
              "prover's kind of hardware. For other hardware, calibrate δ with `pol calibrate`.")
EXACT_RULE = ("exact mode: the proof was made on this device type with this torch version (fp32, "
              "CPU or deterministic), so replay must be bitwise equal (δ = 0)")
EXACT_STEP_RULE = ("exact mode: the proof's steps compute in float64 and round to float32 with "
                   "a rounding log (spec.step.exact), so replay on any device and thread count "
                   "must be bitwise equal (δ = 0)")


def auto_deltas(updates: list[dict[str, float]], lengths: list[int], metrics: Iterable[str],
                final_params: torch.Tensor | None, precision: str, rho: float,
                floor_factor: float) -> dict[str, float]:
    out = {}
    for m in metrics:
        per_step = float(np.mean([u[m] / n for u, n in zip(updates, lengths)])) if updates else 0.0
        floor = 0.0
        if precision == "fp16" and final_params is not None:
            floor = floor_factor * fp16_rounding_floor(final_params, m)
        out[m] = max(rho * per_step, floor)
    return out


def expect_exact(spec, device: torch.device) -> bool:
    """Replay here should be bitwise the prover's: an exact-mode proof (`spec.step.exact`) on any
    device; else the same device type, GPU model (where the proof names it), torch version and
    (CPU) kernel family and threads, fp32, CPU or deterministic algorithms."""
    if spec.step.exact:
        return True
    return (spec.device == device.type and spec.precision == "fp32"
            and (device.type == "cpu" or spec.deterministic)
            and spec.torch_version == torch.__version__
            and not _other_gpu(spec, device)
            and (device.type != "cpu"
                 or (spec.cpu_capability == current_cpu_capability() != ""
                     and spec.cpu_threads == torch.get_num_threads())))


def cross_hardware_note(spec, device: torch.device) -> str:
    """What to do about a replay on other hardware than the prover's ("" where the replay is
    expected bitwise): there, float32 kernels round differently and the difference grows with
    every replayed step, so an honest proof can end farther than δ at a large k."""
    if expect_exact(spec, device):
        return ""
    where = hardware_differs(spec, device) or (
        f"made with torch {spec.torch_version} / other kernels, replayed here with torch "
        f"{torch.__version__}")
    return (f"the proof was {where}: replay on other hardware than the prover's is not bitwise "
            "and its error grows with k, so an honest proof can fail here. Verify on the "
            "prover's kind of hardware, calibrate δ for this pair (`pol calibrate`), or have the "
            "proof recorded in exact mode (`pol train --exact`, `attach(..., exact=True)`), "
            "which replays bitwise on any device")


def _other_gpu(spec, device: torch.device) -> str:
    """This GPU's model where the proof names another one ("" otherwise, and where either is
    unknown: a proof from before the field, no CUDA here)."""
    if device.type != "cuda" or not spec.gpu_name:
        return ""
    here = current_gpu_name(device)
    return here if here and here != spec.gpu_name else ""


def hardware_differs(spec, device: torch.device) -> str:
    """How this replay's hardware differs from the prover's ("" where it does not, or where the
    proof's steps are exact-mode and so replay bitwise anywhere)."""
    if spec.step.exact:
        return ""
    if spec.device != device.type:
        return f"made on {spec.device}, replayed here on {device.type}"
    if spec.torch_version != torch.__version__:
        return (f"made with torch {spec.torch_version or '?'}, replayed here with torch "
                f"{torch.__version__}")
    gpu = _other_gpu(spec, device)
    if gpu:
        return f"made on {spec.gpu_name}, replayed here on {gpu}"
    here = current_cpu_capability()  # (the replay runs at the proof's thread count)
    if device.type == "cpu" and spec.cpu_capability and here and spec.cpu_capability != here:
        return f"made with CPU kernels {spec.cpu_capability}, replayed here with {here}"
    return ""


# the checks that a float32 replay's rounding drift alone can fail (on other hardware than the
# prover's, the difference grows with every replayed step)
DRIFT_CHECKS = frozenset({CheckName.REPLAY.value, CheckName.RELATIVE_ERROR.value,
                          CheckName.OPTIMIZER_REPLAY.value, CheckName.LOSS_REPLAY.value})


def undecidable_here(failed: set[str], tally: "Tally", spec, device: torch.device,
                     delta_rule: str) -> str:
    """Why the failed checks say nothing about the proof ("" where they do): a float32 replay on
    other hardware than the prover's, with the auto δ (the paper's heuristic, meant for the
    prover's hardware), whose every failure is one that rounding drift alone can cause. An honest
    proof fails so at a large k (measured: ResNet-20 at k = 100, H200 → CPU, relative error
    0.68), so the verdict is inconclusive, never valid, and never a false INVALID."""
    where = hardware_differs(spec, device)
    if not failed or not where or delta_rule != DELTA_RULE or tally.firm:
        return ""
    if not failed <= DRIFT_CHECKS:
        return ""
    return (f"inconclusive here: the proof was {where}, where float32 kernels round differently "
            "and the difference grows with every replayed step, so an honest proof can fail "
            "this check too. Verify on the prover's kind of hardware (or with δ calibrated for "
            "this pair, `pol calibrate`); proofs recorded in exact mode (`pol train --exact`, "
            "`attach(..., exact=True)`) replay bitwise on any device")


def choose_deltas(delta, exact: bool, policy: Policy, updates, lengths, metrics, final_vec,
                  spec, rho: float, floor_factor: float) -> tuple[dict[str, float], str]:
    """(δ per metric, the rule that set it)."""
    if policy.has(Defence.EXACT_MODE) and exact and delta == "auto":
        return {m: 0.0 for m in metrics}, EXACT_STEP_RULE if spec.step.exact else EXACT_RULE
    auto = auto_deltas(updates, lengths, metrics, final_vec, spec.precision, rho, floor_factor)
    if delta == "auto":
        return auto, DELTA_RULE
    out = dict(delta)
    for m in metrics:
        out.setdefault(m, auto[m])
    return out, "given on the command line (auto for metrics not given)"


def tolerance(exact_mode: bool, spec, device: torch.device, deltas: dict[str, float],
              metrics, require_exact: bool) -> CheckResult:
    """Tolerant mode is a fact to report: what put the verifier there and what δ it allows."""
    if exact_mode:
        return CheckResult(CheckName.TOLERANCE, True, "exact mode: every replayed segment must "
                           "land bitwise (δ = 0)")
    why = (f"the proof claims device {spec.device!r}, precision {spec.precision}, torch "
           f"{spec.torch_version or '?'}" + (", deterministic" if spec.deterministic else "") +
           f"; this verifier replays on {device.type} with torch {torch.__version__}")
    shown = ", ".join(f"{m}={deltas[m]:.3g}" for m in metrics)
    return CheckResult(CheckName.TOLERANCE, False, warn=not require_exact, reason=(
        f"tolerant mode ({why}): replay may land up to δ away ({shown}); "
        + ("exact mode was required (--require-exact)" if require_exact else
           "pass --require-exact to refuse any tolerance")))


@dataclass
class Tally:
    """What the judged segments found, for the checks over all of them."""

    data_ok: bool = True
    loss_bad: list[int] = field(default_factory=list)
    rel_bad: list[tuple[int, int, float]] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)  # claimed ℓ2 update ÷ δ, non-exact
    state_bad: list[tuple[int, int, str]] = field(default_factory=list)
    flip_bad: list[tuple[int, int, float]] = field(default_factory=list)
    # exact mode: the steps whose rounding log did not fit the replay; None: no exact-mode replay
    roundlog_bad: list[int] | None = None
    # failures of the drift checks that no rounding drift explains (a recorded loss that is not
    # finite, step counters that differ)
    firm: list[str] = field(default_factory=list)


def judge_segment(out, update: dict[str, float], deltas: dict[str, float], metrics,
                  exact_mode: bool, policy: Policy, tally: Tally) -> bool:
    """Whether one replayed segment passes; what it found goes into `tally`."""
    a, b, err = out.start, out.end, out.error
    tally.data_ok = tally.data_ok and out.data_ok
    tally.loss_bad.extend(out.loss_bad)
    passed = all(err[m] <= deltas[m] for m in metrics)
    bad_log = getattr(out, "roundlog_bad", None)
    if bad_log is not None:
        tally.roundlog_bad = (tally.roundlog_bad or []) + list(bad_log)
        passed = passed and not bad_log
    if policy.has(Defence.RELATIVE_ERROR) and not out.exact and "l2" in err:
        rel = err["l2"] / max(update["l2"], 1e-300)
        if rel > policy.relative_error_max:
            tally.rel_bad.append((a, b, rel))
            passed = False
    if policy.has(Defence.UPDATE_SIZE) and not out.exact and deltas.get("l2", 0) > 0:
        tally.sizes.append(update["l2"] / deltas["l2"])
    if policy.has(Defence.OPTIMIZER_STATE):
        why, drift = _state_problem(out, exact_mode, policy)
        if why:
            tally.state_bad.append((a, b, why))
            if not drift:
                tally.firm.append(f"steps {a}–{b}: optimizer state {why}")
            passed = False
    if policy.has(Defence.DATA_DEPENDENCE) and not flip_passes(out, policy.bounds):
        tally.flip_bad.append((a, b, out.flip))  # NaN (not measured) fails too
        passed = False
    return passed


def flip_passes(out, bounds) -> bool:
    """The data-dependence bound on one segment: any movement where it replayed bitwise, τ of the
    step's update otherwise (NaN, not measured, fails)."""
    if out.exact:
        return out.flip > bounds.flip_min_exact
    return out.flip >= bounds.flip_min


def _state_problem(out, exact_mode: bool, policy: Policy) -> tuple[str, bool]:
    """(what is wrong with a segment's replayed optimizer state, "" if nothing; whether rounding
    drift alone can cause it)."""
    srel = out.state_error / out.state_change if out.state_change > 0 else (
        0.0 if out.state_error == 0 else float("inf"))
    if not out.steps_ok:
        return "the step counters differ", False
    if exact_mode and not out.exact and out.state_error > 0:
        return "not bitwise equal in exact mode", True
    if not exact_mode and srel > policy.bounds.state_relative_max:
        return f"{srel:.2f}× its own change", True
    return "", True


def over_segments(tally: Tally, losses: np.ndarray, policy: Policy) -> list[CheckResult]:
    """The hardened policy's checks over every replayed segment."""
    out: list[CheckResult] = []
    t = tally
    if policy.has(Defence.LOSS_REPLAY):
        nonfinite = [s for s in t.loss_bad if not np.isfinite(losses[s])]
        t.firm.extend(f"step {s}: recorded loss {losses[s]}" for s in nonfinite)
        out.append(CheckResult(
            CheckName.LOSS_REPLAY, not t.loss_bad,
            "the recomputed loss matches the recorded loss at every replayed step"
            if not t.loss_bad else f"{len(t.loss_bad)} replayed step(s) have a recorded loss "
            f"that the replay does not reproduce (first: step {t.loss_bad[0]})" +
            (f"; {len(nonfinite)} recorded loss(es) are NaN or infinite (first: step "
             f"{nonfinite[0]}): the hardened policy needs every step's loss"
             if nonfinite else "")))
    if policy.has(Defence.OPTIMIZER_STATE):
        out.append(CheckResult(
            CheckName.OPTIMIZER_REPLAY, not t.state_bad,
            "the optimizer state replays onto the claimed state at the end of every "
            "replayed segment" if not t.state_bad else
            f"{len(t.state_bad)} segment(s) end with optimizer state other than the claim "
            f"(first: steps {t.state_bad[0][0]}–{t.state_bad[0][1]}, {t.state_bad[0][2]})"))
    if policy.has(Defence.DATA_DEPENDENCE):
        fmin = policy.bounds.flip_min
        worst = min((r for _, _, r in t.flip_bad if r == r), default=None)
        out.append(CheckResult(
            CheckName.DATA_DEPENDENCE, not t.flip_bad,
            f"each replayed segment's first step moves with its gradient (a sign-flipped "
            f"gradient lands ≥ {fmin:g}× the step's update away, or anywhere else in a segment "
            "replayed bitwise)" if not t.flip_bad else
            f"{len(t.flip_bad)} replayed segment(s) land on the same weights whatever their "
            f"gradient (first: steps {t.flip_bad[0][0]}–{t.flip_bad[0][1]}, a sign-flipped "
            f"gradient moves the step by {t.flip_bad[0][2]:.3g}× its update): the claimed "
            "training does not depend on the data", value=worst, bound=fmin))
    if policy.has(Defence.RELATIVE_ERROR):
        r = policy.relative_error_max
        worst_rel = max((x for _, _, x in t.rel_bad), default=0.0)
        out.append(CheckResult(
            CheckName.RELATIVE_ERROR, not t.rel_bad,
            f"every non-exact replayed segment lands within {r:g}× its own update"
            if not t.rel_bad else
            f"{len(t.rel_bad)} segment(s) replay farther from the claim than {r:g}× their own "
            f"update (first: steps {t.rel_bad[0][0]}–{t.rel_bad[0][1]}, {t.rel_bad[0][2]:.2f}×): "
            "the claimed steps do not follow the gradient", value=worst_rel, bound=r))
    return out


def update_size(tally: Tally, any_segments: bool, policy: Policy) -> CheckResult | None:
    if not policy.has(Defence.UPDATE_SIZE):
        return None
    c, sizes = policy.update_size_min, tally.sizes
    if sizes:
        small, big = sum(r < c for r in sizes), max(sizes)
        return CheckResult(
            CheckName.UPDATE_SIZE, big >= c,
            f"{len(sizes) - small} of {len(sizes)} non-exact replayed segment(s) claim an update "
            f"of at least {c:g}·δ (largest {big:.3g}·δ); the {small} smaller one(s) rest on the "
            f"relative-error check" if big >= c else
            f"every non-exact replayed segment claims an update below {c:g}·δ (largest "
            f"{big:.3g}·δ): each step is absorbed in the tolerance, so replay proves nothing "
            "(a tiny-step spoof, Fang et al.)", value=big, bound=c)
    if any_segments:
        return CheckResult(CheckName.UPDATE_SIZE, True, "δ = 0 (exact mode) or every replayed "
                           "segment bitwise exact: no tolerance to hide steps in")
    return None


def final_checks(tally: Tally, segments, deltas: dict[str, float], metrics, mode: str,
                 expect_exact_here: bool, cross_note: str = "") -> list[CheckResult]:
    """data hashes, replay (δ), exact replay and (exact mode) the rounding log. `cross_note`:
    `cross_hardware_note`, added to a failed replay's reason."""
    out = [CheckResult(CheckName.DATA_HASHES, tally.data_ok,
                       "every replayed batch matches its recorded hash" if tally.data_ok else
                       "a replayed batch's data does not match the hash recorded in the proof")]
    if tally.roundlog_bad is not None:
        bad = sorted(tally.roundlog_bad)
        out.append(CheckResult(
            CheckName.ROUNDING_LOG, not bad,
            "every replayed step's rounding log names values near a rounding tie in the replay"
            if not bad else f"{len(bad)} replayed step(s) have a rounding log that names a value "
            f"not near a rounding tie in the replay (first: step {bad[0]}): the log can only "
            "settle ties, never move a value", value=bad[0] if bad else None))
    n_bad = sum(not s.passed for s in segments)
    worst_ratio = max((max(s.error[m] / deltas[m] if deltas[m] > 0 else
                           (0.0 if s.error[m] == 0 else float("inf")) for m in metrics)
                       for s in segments), default=0.0)
    first = next((s for s in segments if not s.passed), None)
    out.append(CheckResult(
        CheckName.REPLAY, n_bad == 0,
        f"{len(segments)} segment(s) replayed ({mode}), all within δ" if n_bad == 0 else
        f"{n_bad} of {len(segments)} replayed segment(s) end farther than δ from the claimed "
        f"checkpoint (first: steps {first.start}–{first.end})"
        + (f"; {cross_note}" if cross_note else ""), value=worst_ratio, bound=1.0))
    n_exact = sum(s.exact for s in segments)
    if n_exact == len(segments):
        out.append(CheckResult(CheckName.EXACT_REPLAY, True, f"all {n_exact} replayed "
                               "segment(s) are bitwise equal to the claimed checkpoints"))
    elif expect_exact_here:
        out.append(CheckResult(
            CheckName.EXACT_REPLAY, False, f"only {n_exact} of {len(segments)} segment(s) "
            "replayed bitwise exactly, though the proof was made on this device type with this "
            "torch version: other hardware, or checkpoints altered within δ", warn=True))
    else:
        out.append(CheckResult(
            CheckName.EXACT_REPLAY, None, f"{n_exact} of {len(segments)} segment(s) replayed "
            "bitwise exactly (not expected: different device, precision or torch version)"))
    return out
