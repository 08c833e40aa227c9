"""The verdict: a structured result of every check, rendered as text or JSON.

JSON schema (`schema: "pol-report/1"`)::

    {
      "schema": "pol-report/1",
      "proof": str, "root_digest": str,
      "verdict": "valid" | "invalid" | "pending" | "inconclusive",
      "policy": str, "metrics": [str], "d1": str, "deltas": {metric: float},
      "delta_rule": str,
      "checks": [{"name": str, "status": "pass"|"fail"|"warn"|"skip"|"inconclusive",
                  "value": any, "bound": any, "reason": str}],
      "segments": [{"start": int, "end": int, "epoch": int, "d1": float,
                    "update": {metric: float},   # d(W_start, W_end) as claimed
                    "error": {metric: float},    # d(W'_end replayed, W_end claimed)
                    "passed": bool, "exact": bool, "why": "top-q"|"all"}],
      "stats": {"replayed_steps": int, "total_steps": int, "seconds": float, ...}
    }

A proof is valid iff no check has status "fail" or "inconclusive". A verification is *pending*
(verdict "pending", `pol verify` exit 3) when no check failed but the replay was not done: lazy
verification (`--request-data`) stops after the checkpoint pass until the prover reveals the
data; it says nothing yet about whether the training happened.

A verification is *inconclusive* (verdict "inconclusive", `pol verify` exit 4) when no check failed
outright but some are "inconclusive": a float32 proof (not exact mode) replayed on other hardware
than the prover's (another device type, GPU model, torch version or CPU kernel family) with the
auto δ, whose only failures are the ones a replay's rounding drift can cause (replay distance,
relative error, optimizer replay, loss replay). Kernels round differently there and the
difference grows with every step, so such a failure says nothing about the proof: verify it on
the prover's kind of hardware (or calibrate δ for this pair). An inconclusive proof is not
valid.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "pol-report/1"


@dataclass
class Check:
    name: str
    status: str  # pass | fail | warn | skip
    reason: str = ""
    value: Any = None
    bound: Any = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    @property
    def blocks(self) -> bool:
        """Failed or inconclusive: the proof is not valid while this check stands."""
        return self.status in ("fail", "inconclusive")


@dataclass
class SegmentResult:
    start: int
    end: int
    epoch: int
    d1: float
    update: dict[str, float]
    error: dict[str, float]
    passed: bool
    exact: bool
    why: str


@dataclass
class Report:
    proof: str
    root_digest: str
    policy: str = "paper"
    metrics: list[str] = field(default_factory=list)
    d1: str = "l2"
    deltas: dict[str, float] = field(default_factory=dict)
    delta_rule: str = ""
    checks: list[Check] = field(default_factory=list)
    segments: list[SegmentResult] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """No check failed and none is inconclusive (pending counts: see `pending`)."""
        return not any(c.blocks for c in self.checks)

    @property
    def inconclusive(self) -> bool:
        """No check failed, but some could not be decided on this hardware."""
        return (not any(c.failed for c in self.checks)
                and any(c.status == "inconclusive" for c in self.checks))

    @property
    def pending(self) -> bool:
        """No check failed but the replay was deferred (a "replay" check skipped: lazy
        verification waiting for the prover's data), so the proof is not verified yet. `valid`
        stays "no check failed"; a complete verdict needs `valid and not pending`."""
        return self.valid and any(c.name == "replay" and c.status == "skip" for c in self.checks)

    @property
    def verdict(self) -> str:
        if self.inconclusive:
            return "inconclusive"
        if not self.valid:
            return "invalid"
        return "pending" if self.pending else "valid"

    def add(self, name: str, ok: bool | None, reason: str = "", value: Any = None,
            bound: Any = None, warn: bool = False) -> Check:
        status = "skip" if ok is None else ("pass" if ok else ("warn" if warn else "fail"))
        # a CheckName member is stored as its plain string (hash, equality and JSON of a str)
        c = Check(str(getattr(name, "value", name)), status, reason, _jsonable(value),
                  _jsonable(bound))
        self.checks.append(c)
        return c

    def leave_open(self, names: set[str], why: str, main: str = "replay") -> None:
        """Make the failed checks named `names` inconclusive: `why` added to the reason of the
        one named `main` (else of the first), a pointer to it to the others'."""
        opened = [c for c in self.checks if c.failed and c.name in names]
        if not opened:
            return
        first = next((c for c in opened if c.name == main), opened[0])
        for c in opened:
            c.status = "inconclusive"
            c.reason += f"; {why}" if c is first else (
                f"; inconclusive here (other hardware: see the {first.name} check)")

    def to_dict(self) -> dict:
        return _jsonable({
            "schema": SCHEMA, "proof": self.proof, "root_digest": self.root_digest,
            "verdict": self.verdict, "policy": self.policy, "metrics": self.metrics,
            "d1": self.d1, "deltas": self.deltas, "delta_rule": self.delta_rule,
            "checks": [asdict(c) for c in self.checks],
            "segments": [asdict(s) for s in self.segments], "stats": self.stats})

    def to_json(self, indent: int = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render(self, verbose: bool = False) -> str:
        lines = [f"proof {self.proof}  (root {self.root_digest[:16]}…)"]
        mark = {"pass": "ok  ", "fail": "FAIL", "warn": "warn", "skip": "skip",
                "inconclusive": "????"}
        for c in self.checks:
            extra = ""
            if c.value is not None and c.bound is not None:
                extra = f"  [{_fmt(c.value)} vs {_fmt(c.bound)}]"
            lines.append(f"  {mark[c.status]} {c.name}: {c.reason}{extra}")
        if self.segments:
            m = self.metrics
            worst = {x: max(s.error[x] for s in self.segments) for x in m}
            lines.append(f"  segments replayed: {len(self.segments)} "
                         f"({sum(s.exact for s in self.segments)} bitwise exact, "
                         f"{sum(not s.passed for s in self.segments)} over δ)")
            lines.append("  max error / δ: " + ", ".join(
                f"{x} {_fmt(worst[x])}/{_fmt(self.deltas.get(x, float('nan')))}" for x in m))
            if verbose:
                for s in self.segments:
                    errs = " ".join(f"{x}={_fmt(s.error[x])}" for x in m)
                    lines.append(f"    [{s.start:>6},{s.end:>6}) epoch {s.epoch} {s.why:5} "
                                 f"{'ok  ' if s.passed else 'FAIL'}{' exact' if s.exact else ''}"
                                 f"  {errs}")
        st = self.stats
        if st:
            lines.append(f"  replayed {st.get('replayed_steps', 0)} of {st.get('total_steps', 0)} "
                         f"steps in {st.get('seconds', 0):.2f}s")
        lines.append(f"verdict: {self.verdict.upper()}" + (
            " (nothing replayed yet: the replay waits for the requested data)"
            if self.pending else
            " (replay on this hardware cannot decide: verify on the prover's kind of hardware)"
            if self.inconclusive else ""))
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or (1e-3 <= abs(v) < 1e4):
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item):
        return _jsonable(v.item())
    return v
