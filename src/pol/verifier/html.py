"""One self-contained HTML page for a verification (`pol report`, `pol verify --html`).

The page holds the verdict first, then every check with its value and bound, the update magnitude
of every segment per epoch with the segments the verifier chose (top-Q and random marked), the
replay error ε against δ for every replayed segment, the KS p-value of every layer of W_0, and the
chain-of-trust and ledger checks when the verification had them. Plots are PNGs embedded as base64
`data:` URIs and the style is inline: the file opens offline, and nothing is fetched.

Inputs: a `Report` (from `pol.verify`, or read back strictly from the JSON `pol verify --json`
writes, schema `pol-report/1`: `read_report_json`), and optionally the proof directory itself
(`proof_facts`): the report lists only the replayed segments, the proof has every segment's
update and W_0. Facts are only taken from a proof whose root digest is the report's.

matplotlib (the `plot` extra) is imported when a page is drawn, never at `import pol`, and only
through its object API (`matplotlib.figure.Figure`): no pyplot, no global backend switched.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pol.errors import ConfigError, ProofFormatError
from pol.verifier.report import SCHEMA, Check, Report, SegmentResult

_STATUSES = ("pass", "fail", "warn", "skip", "inconclusive")
_VERDICTS = ("valid", "invalid", "pending", "inconclusive")
_REPORT_KEYS = {"schema", "proof", "root_digest", "verdict", "policy", "metrics", "d1", "deltas",
                "delta_rule", "checks", "segments", "stats"}
_CHECK_KEYS = {"name", "status", "reason", "value", "bound"}
_SEGMENT_KEYS = {"start", "end", "epoch", "d1", "update", "error", "passed", "exact", "why"}
# checks shown again under "chain of trust and ledger"
PROTOCOL_CHECKS = ("parent", "chain of trust", "commitment", "revealed data", "revealed fraction")
MAX_REPORT_JSON_BYTES = 64 << 20


# ----------------------------------------------------------------------------- reading a report

def _need(cond: bool, where: str, why: str) -> None:
    if not cond:
        raise ProofFormatError(f"verification report: {where}: {why}")


def _num(v: Any, where: str, allow_none: bool = True) -> float | None:
    if v is None and allow_none:
        return None  # a non-finite value is written as null
    _need(isinstance(v, (int, float)) and not isinstance(v, bool), where, "expected a number")
    return float(v)


def _metric_map(d: Any, where: str) -> dict[str, float | None]:
    _need(isinstance(d, dict), where, "expected an object of numbers")
    return {str(k): _num(v, f"{where}.{k}") for k, v in d.items()}


def _check_from(d: Any, i: int) -> Check:
    where = f"checks[{i}]"
    _need(isinstance(d, dict) and set(d) == _CHECK_KEYS, where,
          f"expected exactly the keys {sorted(_CHECK_KEYS)}")
    _need(isinstance(d["name"], str) and d["name"] != "", where, "name must be a string")
    _need(d["status"] in _STATUSES, where, f"status must be one of {_STATUSES}")
    _need(isinstance(d["reason"], str), where, "reason must be a string")
    return Check(d["name"], d["status"], d["reason"], d["value"], d["bound"])


def _segment_from(d: Any, i: int) -> SegmentResult:
    where = f"segments[{i}]"
    _need(isinstance(d, dict) and set(d) == _SEGMENT_KEYS, where,
          f"expected exactly the keys {sorted(_SEGMENT_KEYS)}")
    for k in ("start", "end", "epoch"):
        _need(isinstance(d[k], int) and not isinstance(d[k], bool) and d[k] >= 0, where,
              f"{k} must be a non-negative integer")
    _need(d["end"] > d["start"], where, "end must be after start")
    for k in ("passed", "exact"):
        _need(isinstance(d[k], bool), where, f"{k} must be true or false")
    _need(isinstance(d["why"], str), where, "why must be a string")
    d1 = _num(d["d1"], f"{where}.d1")
    return SegmentResult(d["start"], d["end"], d["epoch"], math.nan if d1 is None else d1,
                         _metric_map(d["update"], f"{where}.update"),
                         _metric_map(d["error"], f"{where}.error"), d["passed"], d["exact"],
                         d["why"])


def report_from_dict(d: Any) -> Report:
    """A `Report` from the dict of `Report.to_dict()` (schema pol-report/1), checked strictly:
    exactly the schema's keys, every type, and a verdict that follows from the checks."""
    _need(isinstance(d, dict), "$", "expected an object")
    _need(d.get("schema") == SCHEMA, "schema", f"expected {SCHEMA!r}, got {d.get('schema')!r}")
    _need(set(d) == _REPORT_KEYS, "$", f"expected exactly the keys {sorted(_REPORT_KEYS)}, got "
          f"{sorted(d)}")
    for k in ("proof", "root_digest", "policy", "d1", "delta_rule"):
        _need(isinstance(d[k], str), k, "expected a string")
    _need(isinstance(d["metrics"], list) and all(isinstance(m, str) for m in d["metrics"]),
          "metrics", "expected a list of strings")
    _need(isinstance(d["checks"], list), "checks", "expected a list")
    _need(isinstance(d["segments"], list), "segments", "expected a list")
    _need(isinstance(d["stats"], dict), "stats", "expected an object")
    deltas = _metric_map(d["deltas"], "deltas")
    r = Report(proof=d["proof"], root_digest=d["root_digest"], policy=d["policy"],
               metrics=list(d["metrics"]), d1=d["d1"],
               deltas={k: (math.nan if v is None else v) for k, v in deltas.items()},
               delta_rule=d["delta_rule"],
               checks=[_check_from(c, i) for i, c in enumerate(d["checks"])],
               segments=[_segment_from(s, i) for i, s in enumerate(d["segments"])],
               stats=dict(d["stats"]))
    _need(d["verdict"] in _VERDICTS, "verdict", f"must be one of {_VERDICTS}")
    _need(d["verdict"] == r.verdict, "verdict", f"says {d['verdict']!r} but the checks give "
          f"{r.verdict!r}")
    return r


def read_report_json(path: str | os.PathLike) -> Report:
    """Read back the JSON of `pol verify --json` (strictly: see `report_from_dict`)."""
    from pol.util import loads_strict
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ProofFormatError(f"cannot read the verification report {p}: {e.strerror}") from None
    return report_from_dict(loads_strict(data, str(p), max_bytes=MAX_REPORT_JSON_BYTES))


# ------------------------------------------------------------------------------- proof facts

@dataclass
class LayerP:
    name: str
    kind: str
    pvalue: float
    passed: bool


@dataclass
class ProofFacts:
    """What the page shows from the proof itself (beyond the report)."""

    task: str
    epochs: int
    steps_per_epoch: int
    k: int
    total_steps: int
    init: dict
    updates: list[tuple[int, int, int, float]] = field(default_factory=list)  # start, end, epoch, d1
    layers: list[LayerP] = field(default_factory=list)
    ks_threshold: float | None = None
    alpha: float = 0.01
    notes: list[str] = field(default_factory=list)


def proof_facts(path: str | os.PathLike, d1: str = "l2", alpha: float = 0.01,
                ks: bool = True) -> ProofFacts:
    """Every segment's claimed update (metric `d1`) and, for a cold start, the KS p-value of every
    layer of W_0 (`pol.verifier.check_init`, as the verifier runs it). Reads every checkpoint once."""
    import torch

    from pol.proof.reader import open_proof
    from pol.verifier.distances import distance, flat_params
    p = open_proof(path)
    m = p.manifest
    facts = ProofFacts(task=m.spec.task, epochs=m.epochs, steps_per_epoch=m.steps_per_epoch,
                       k=m.k, total_steps=m.total_steps, init=dict(m.init), alpha=alpha)
    w0 = p.load_checkpoint(0)
    model = None
    try:
        from pol.step import build_model
        with torch.random.fork_rng(devices=[]):  # a constructor may draw from the global RNG
            model = build_model(m.spec.model)
        names = ["model." + n for n, _ in model.named_parameters()]
    except Exception as e:  # noqa: BLE001 - e.g. a user factory not trusted here
        facts.notes.append(f"model not rebuilt here ({e}): updates over all float entries")
        names = sorted(n for n, v in w0.items() if n.startswith("model.")
                       and v.is_floating_point())
    prev = flat_params(w0, names)
    for a, b in zip(m.checkpoints, m.checkpoints[1:]):
        cur = flat_params(p.load_checkpoint(b), names)
        facts.updates.append((a, b, a // m.steps_per_epoch, distance(prev, cur, d1)))
        prev = cur
    cold = m.init.get("kind") != "parent" and m.spec.model.init != "none"
    if ks and model is not None and cold:
        try:
            from pol.verifier.initcheck import check_init
            _, layers, thr = check_init(model, m.spec.model.init,
                                        {n[len("model."):]: w0[n] for n in w0
                                         if n.startswith("model.")}, alpha)
            facts.layers = [LayerP(r.name, r.kind, r.pvalue, r.passed) for r in layers]
            facts.ks_threshold = thr
        except Exception as e:  # noqa: BLE001 - a page without the KS plot, saying why
            facts.notes.append(f"KS p-values per layer not computed here: {e}")
    return facts


# ---------------------------------------------------------------------------------- plotting

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 8.0, h: float = 3.4):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend
    return Figure(figsize=(w, h))


def plot_updates(report: Report, facts: ProofFacts | None) -> str | None:
    """The update magnitude (d1) of every segment, epoch boundaries, the chosen ones marked."""
    chosen = {(s.start, s.end): s.why for s in report.segments}
    if facts is not None and facts.updates:
        segs = [(a, b, e, v) for a, b, e, v in facts.updates]
        S = facts.steps_per_epoch
        E = facts.epochs
    elif report.segments:
        segs = [(s.start, s.end, s.epoch, s.d1) for s in report.segments]
        S, E = None, None
    else:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([a for a, *_ in segs], [v for *_, v in segs], width=[b - a for a, b, *_ in segs],
           align="edge", color="#b8c4d6", edgecolor="#8090a8", linewidth=0.3, label="claimed update")
    marks = {"top-q": ("v", "#c0392b", "top-Q (largest per epoch)"),
             "random": ("o", "#e67e22", "random (verifier's draw)"),
             "all": ("s", "#2c7a3f", "replayed (all)")}
    for why, (mk, col, label) in marks.items():
        pts = [(a + (b - a) / 2, v) for a, b, _, v in segs if chosen.get((a, b)) == why]
        if pts:
            ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=mk, color=col, zorder=3,
                       label=label, s=28)
    if S and E:
        for e in range(1, E):
            ax.axvline(e * S, color="#555", lw=0.6, ls=":")
    ax.set_xlabel("training step (segment start)")
    ax.set_ylabel(f"update {report.d1}")
    ax.set_title("claimed update per segment; dotted lines: epoch boundaries")
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def plot_errors(report: Report) -> str | None:
    """ε (replay error) per replayed segment against δ, one panel per metric (log scale; an exact
    replay, ε = 0, is drawn at the bottom marked as exact)."""
    if not report.segments or not report.metrics:
        return None
    if all(e == 0 for s in report.segments for e in s.error.values()):
        return None  # every replay bitwise exact: said in words, not drawn
    n = len(report.metrics)
    fig = _figure(8.0, 1.8 * n + 0.6)
    for i, m in enumerate(report.metrics):
        ax = fig.add_subplot(n, 1, i + 1)
        xs = list(range(len(report.segments)))
        errs = [s.error.get(m) for s in report.segments]
        finite = [e for e in errs if e is not None and math.isfinite(e) and e > 0]
        delta = report.deltas.get(m)
        pos = [v for v in finite + ([delta] if delta and delta > 0 else []) if v > 0]
        floor = min(pos) / 100 if pos else 1e-12
        ys = [floor if (e is None or not math.isfinite(e) or e <= 0) else e for e in errs]
        cols = ["#2c7a3f" if s.passed else "#c0392b" for s in report.segments]
        ax.scatter(xs, ys, c=cols, s=18, zorder=3)
        for x, e in zip(xs, errs):
            if e == 0:
                ax.annotate("exact", (x, floor), fontsize=6, ha="center", va="bottom")
        if delta is not None and math.isfinite(delta) and delta > 0:
            ax.axhline(delta, color="#444", ls="--", lw=0.8, label=f"δ = {delta:.3g}")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_yscale("log")
        ax.set_ylabel(f"ε {m}")
        if i == n - 1:
            ax.set_xlabel("replayed segment (in report order)")
    fig.suptitle("replay error ε per segment (green: passed, red: over δ)", fontsize=9)
    return _png(fig)


def plot_ks(facts: ProofFacts | None) -> str | None:
    tested = [r for r in (facts.layers if facts else []) if r.kind != "const"]
    if not tested:
        return None
    fig = _figure(8.0, max(2.0, 0.22 * len(tested) + 1.0))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(tested)))
    ps = [max(r.pvalue, 1e-300) for r in tested]
    ax.barh(ys, ps, color=["#2c7a3f" if r.passed else "#c0392b" for r in tested])
    ax.set_yticks(ys, [r.name for r in tested], fontsize=6)
    ax.set_xscale("log")
    if facts.ks_threshold:
        ax.axvline(facts.ks_threshold, color="#444", ls="--", lw=0.8,
                   label=f"α/L = {facts.ks_threshold:.2g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("KS p-value of W_0 against the declared init distribution")
    ax.invert_yaxis()
    return _png(fig)


# ------------------------------------------------------------------------------------- page

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
.verdict{font-size:1.6em;font-weight:bold;padding:.5em .8em;border-radius:6px;display:inline-block}
.valid{background:#dff3e3;color:#1d6b31}.invalid{background:#fbe0dc;color:#a12a1c}
.pending,.inconclusive{background:#fff2cc;color:#7a5a00}
table{border-collapse:collapse;font-size:.85em;width:100%}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
tr.fail td{background:#fdecea}tr.warn td,tr.inconclusive td{background:#fff8e1}
tr.skip td{color:#777}
code{font-size:.9em}img{max-width:100%}.note{color:#555;font-size:.85em}"""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if v == 0 or 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    if isinstance(v, (dict, list)):
        import json
        return json.dumps(v, default=str)[:300]
    return str(v)


def _e(v: Any) -> str:
    return html.escape(_fmt(v))


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f'<p class="note">{html.escape(alt)}: nothing to plot.</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _errors_section(report: Report) -> str:
    if report.segments and all(e == 0 for s in report.segments for e in s.error.values()):
        return (f"<p>All {len(report.segments)} replayed segments landed bitwise on the claimed "
                "checkpoints (ε = 0 in every metric).</p>")
    return _img(plot_errors(report), "replay errors")


def _checks_table(checks: list[Check]) -> str:
    rows = "".join(f'<tr class="{c.status}"><td>{_e(c.name)}</td><td>{_e(c.status)}</td>'
                   f"<td>{_e(c.value)}</td><td>{_e(c.bound)}</td><td>{_e(c.reason)}</td></tr>"
                   for c in checks)
    return ("<table><tr><th>check</th><th>status</th><th>value</th><th>bound</th>"
            f"<th>reason</th></tr>{rows}</table>")


def _segments_table(report: Report) -> str:
    m = report.metrics
    head = "".join(f"<th>ε {html.escape(x)} / δ {_e(report.deltas.get(x))}</th>" for x in m)
    rows = "".join(
        f"<tr class=\"{'pass' if s.passed else 'fail'}\"><td>[{s.start}, {s.end})</td>"
        f"<td>{s.epoch}</td><td>{_e(s.why)}</td><td>{_e(s.d1)}</td>"
        + "".join(f"<td>{_e(s.error.get(x))}</td>" for x in m)
        + f"<td>{'exact' if s.exact else ''}</td><td>{'ok' if s.passed else 'FAIL'}</td></tr>"
        for s in report.segments)
    return (f"<table><tr><th>segment</th><th>epoch</th><th>why</th><th>update {_e(report.d1)}"
            f"</th>{head}<th></th><th></th></tr>{rows}</table>")


def _summary(report: Report, facts: ProofFacts | None) -> str:
    st = report.stats
    items = [("proof", report.proof), ("root digest", report.root_digest),
             ("policy", report.policy), ("metrics", ", ".join(report.metrics)),
             ("d1 (ranks updates)", report.d1),
             ("δ", ", ".join(f"{k} = {_fmt(v)}" for k, v in report.deltas.items())),
             ("δ rule", report.delta_rule)]
    if st:
        items.append(("replayed", f"{st.get('replayed_steps', 0)} of {st.get('total_steps', 0)} "
                      f"steps in {_fmt(st.get('seconds', 0.0))} s"))
    if facts is not None:
        items.append(("run", f"task {facts.task}: E = {facts.epochs}, S = {facts.steps_per_epoch}"
                      f", k = {facts.k}, T = {facts.total_steps}"))
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_e(v)}</td></tr>"
                               for k, v in items) + "</table>"


def _protocol(report: Report, facts: ProofFacts | None) -> str:
    rows = [c for c in report.checks if c.name in PROTOCOL_CHECKS]
    parts = []
    if facts is not None:
        init = facts.init
        if init.get("kind") == "parent":
            parts.append(f"<p>Warm start: W_0 is the final model of the parent proof "
                         f"<code>{_e(init.get('root_digest'))}</code> (chain of trust).</p>")
        else:
            parts.append(f"<p>Cold start: W_0 drawn with the <code>{_e(init.get('strategy', ''))}"
                         f"</code> strategy{' (external init)' if init.get('external') else ''}"
                         "; no parent proof.</p>")
    if rows:
        parts.append(_checks_table(rows))
    else:
        parts.append('<p class="note">No chain-of-trust or ledger check in this verification '
                     "(no parent proof; no --ledger given).</p>")
    return "".join(parts)


def render_html(report: Report, facts: ProofFacts | None = None, title: str | None = None) -> str:
    """The page, as one string (self-contained: inline style, embedded PNGs)."""
    from pol._version import __version__
    v = report.verdict
    layers = "".join(f'<tr class="{"pass" if r.passed else "fail"}"><td>{_e(r.name)}</td>'
                     f"<td>{_e(r.kind)}</td><td>{_e(r.pvalue)}</td></tr>"
                     for r in (facts.layers if facts else []))
    ks_note = (f"<p class=\"note\">Bonferroni: each layer's p-value is compared with α/L = "
               f"{_fmt(facts.ks_threshold)} (α = {_fmt(facts.alpha)}).</p>"
               if facts and facts.ks_threshold else "")
    init_check = next((c for c in report.checks if c.name == "initialization"), None)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in (facts.notes if facts else []))
    no_facts = ("" if facts else '<p class="note">The proof directory was not available (or its '
                "root digest differs from the report's): only the replayed segments are shown.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title or 'pol verification: ' + v.upper())}</title>
<style>{_STYLE}</style></head><body>
<h1>Proof-of-learning verification</h1>
<div class="verdict {v}" id="verdict">verdict: {v.upper()}</div>
{_summary(report, facts)}
<h2>Checks</h2>
{_checks_table(report.checks)}
<h2>Update magnitudes per epoch, segments chosen</h2>
{no_facts}{_img(plot_updates(report, facts), "update magnitudes")}
<h2>Replay error ε against δ</h2>
{_errors_section(report)}
{_segments_table(report) if report.segments else ''}
<h2>Initialization: KS p-values per layer</h2>
{f'<p>initialization check: {_e(init_check.status)}, {_e(init_check.reason)}</p>'
 if init_check else ''}
{_img(plot_ks(facts), "KS p-values")}{ks_note}
{'<table><tr><th>layer</th><th>kind</th><th>p-value</th></tr>' + layers + '</table>'
 if layers else ''}{notes}
<h2>Chain of trust and ledger</h2>
{_protocol(report, facts)}
<p class="note">pol {html.escape(__version__)}; this page is self-contained (no network).</p>
</body></html>
"""


def facts_for(report: Report, proof: str | os.PathLike | None = None,
              alpha: float = 0.01) -> ProofFacts | None:
    """The proof's facts when the proof directory (`proof`, else the report's own path) is there
    and is the report's proof (same root digest); None otherwise."""
    from pol.proof.reader import read_manifest
    where = Path(proof if proof is not None else report.proof)
    if not where.is_dir():
        if proof is not None:
            raise ConfigError(f"--proof {proof}: not a proof directory")
        return None
    if read_manifest(where).root_digest != report.root_digest:
        if proof is not None:
            raise ConfigError(f"--proof {proof}: its root digest is not the report's")
        return None
    return proof_facts(where, d1=report.d1, alpha=alpha)


def write_html(out: str | os.PathLike, report: Report, proof: str | os.PathLike | None = None,
               alpha: float = 0.01) -> Path:
    """Write the page for `report` to `out` (facts from the proof when available)."""
    from pol.util import atomic_write
    page = render_html(report, facts_for(report, proof, alpha))
    out = Path(out)
    atomic_write(out, page.encode("utf-8"), False)
    return out


def report_page(source: str | os.PathLike, out: str | os.PathLike, *,
                proof: str | os.PathLike | None = None, **verify_options: Any) -> tuple[Report, Path]:
    """`pol report`: `source` is a verification JSON (read back strictly) or a proof directory
    (verified here first, with `verify_options`). Returns (report, page path)."""
    src = Path(source)
    if src.is_dir():
        from pol.verifier.core import VerifyOptions, verify
        report = verify(src, VerifyOptions(**verify_options))
        return report, write_html(out, report, proof if proof is not None else src,
                                  verify_options.get("alpha", 0.01))
    report = read_report_json(src)
    return report, write_html(out, report, proof)
