"""REPRODUCTION.md: every experiment's fragment (the paper's numbers beside ours, a sentence on
each difference) found in an output directory, under a header naming the invocations that made
them (command, machine, size, time; `runs.json` in that directory, appended by every
`pol experiment` run) and what stands in for what. Written from the files, so experiments run in
several invocations (a GPU's per-command time limit) make one document. Hand-written notes on a
particular run (what the generated sentences cannot know) sit beside the fragments: OUT/notes.md
after the header, OUT/NAME.notes.md after experiment NAME's fragment, inserted verbatim (their
links are relative to the document). `merge_outputs` brings the outputs of another directory in
(a run made elsewhere, e.g. on a GPU host): its fragments replace those of the same experiments,
its invocations are appended, and the header says which earlier runs they supersede."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
from pathlib import Path

from pol.errors import ConfigError
from pol.experiments.common import Workspace
from pol.experiments.sizes import SIZES

INVOCATIONS = "runs.json"
NOTES = "notes.md"
PAPER_EPOCHS = SIZES["paper"].epochs  # the paper's E (200)
GPU_COMMAND = ("pol experiment all --device cuda --size paper --epochs E --out "
               "docs/reproduction-gpu --doc docs/REPRODUCTION-gpu.md [--data CIFAR_DIR]")


def record_invocation(ws: Workspace, names: list[str], command: str,
                      failed: list[str] | tuple = ()) -> None:
    """Record this invocation in OUT/runs.json: appended the first time, its entry replaced on
    later calls (`run_experiments` calls this after every experiment). The file is locked while
    it is read and written (invocations may share the directory). Nothing before the first
    experiment has ended."""
    if not names and not failed:
        return
    entry = {
        "experiments": list(names), "command": command, "machine": ws.machine(),
        "size": ws.size.name, "note": ws.size.note, "epochs": _epochs(ws, names, failed),
        "runs": ws.runs,
        "noise": ws.noise_label, "device": ws.device.type, "data": ws.cfg.data_dir,
        "wall_minutes": round((time.time() - ws.started) / 60, 2),
        "cpu_minutes": round(time.process_time() / 60, 2),
        "date": _dt.date.today().isoformat()}
    if ws.cfg.settings:
        entry["settings"] = dict(ws.cfg.settings)
    if failed:
        entry["failed"] = list(failed)
    path = ws.out / INVOCATIONS
    with _locked(path):
        entries = json.loads(path.read_text()) if path.exists() else []
        if ws.record_index is None or ws.record_index >= len(entries):
            ws.record_index = len(entries)
            entries.append(entry)
        else:
            entries[ws.record_index] = entry
        _write_json(path, entries)


def _epochs(ws: Workspace, names, failed) -> int | None:
    """The E the invocation's experiments trained with; None where none of them depends on it
    (Appendix D's fixed trainings; Table III's target when the size fixes its epochs)."""
    fixed = {"appendix-d"} | ({"table3"} if ws.size.inverse_train_epochs is not None else set())
    return None if set(names) | set(failed) <= fixed else ws.epochs


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on PATH's directory while the body runs (flock on the directory
    itself: no lock file left behind; where the OS has fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def merge_outputs(src: Path, out: Path, names: list[str]) -> list[str]:
    """Bring the outputs of directory `src` into `out`: every experiment's NAME.csv, NAME.png and
    NAME.md found there (replacing `out`'s), and the entries of its runs.json that `out`'s lacks
    (appended in their order). Hand-written notes stay as they are; returns the experiments
    whose fragment was replaced while `out` has notes on them (NAME.notes.md: written for the
    fragment replaced, to be reviewed)."""
    src, out = Path(src), Path(out)
    found = [n for n in names if (src / f"{n}.md").exists()]
    runs = src / INVOCATIONS
    if not found and not runs.exists():
        raise ConfigError(f"nothing to merge from {src}: no experiment fragments (NAME.md) and "
                          "no runs.json")
    out.mkdir(parents=True, exist_ok=True)
    stale = [n for n in found if (out / f"{n}.md").exists() and (out / f"{n}.notes.md").exists()]
    for n in found:
        for ext in ("csv", "png", "md"):
            if (src / f"{n}.{ext}").exists():
                shutil.copyfile(src / f"{n}.{ext}", out / f"{n}.{ext}")
    if runs.exists():
        path = out / INVOCATIONS
        with _locked(path):
            entries = json.loads(path.read_text()) if path.exists() else []
            entries += [e for e in json.loads(runs.read_text()) if e not in entries]
            _write_json(path, entries)
    return stale


def _header(entries: list[dict]) -> str:
    lines = [
        "# Reproduction of the paper's experiments",
        "",
        "Jia et al., *Proof-of-Learning: Definitions and Practice* (IEEE S&P 2021), re-run with "
        "pol (`pol experiment`). Every table and figure below has the paper's number beside ours "
        "and a sentence on each difference. This file is generated (`pol experiment all`, or "
        "`pol experiment doc` after several invocations); the CSV, PNG and markdown fragment of "
        "every experiment sit beside the figures.",
        "",
    ]
    latest = {n: i for i, e in enumerate(entries) for n in e["experiments"]}
    for i, e in enumerate(entries):
        lines += _entry_lines(e, [n for n in e["experiments"] if latest[n] != i])
    lines.append("")
    return "\n".join(lines + _caveats(entries))


def _entry_lines(e: dict, superseded: list[str]) -> list[str]:
    """One invocation in the header; `superseded`: its experiments a later invocation re-ran
    (the fragments below are the later ones)."""
    shown = [n for n in e["experiments"] if n not in superseded]
    what = ", ".join(shown)
    if superseded:
        what += ("; " if shown else "") + f"superseded by a later run: {', '.join(superseded)}"
    out = [f"- `{e['command'] or 'pol experiment ' + ','.join(e['experiments'])}` ({what})",
           f"  - machine: {e['machine']}",
           f"  - size `{e['size']}` ({e['note']}); "
           + (f"E = {e['epochs']}, " if e.get("epochs") is not None else "")
           + f"{e['runs']} run(s) "
           f"per configuration; replay noise: {e['noise']}"]
    if e.get("settings"):
        out.append("  - size fields changed for this run (`--set`): "
                   + ", ".join(f"{k} = {json.dumps(v)}" for k, v in e["settings"].items()))
    if e.get("failed"):
        out.append(f"  - **failed** (no fragment from this run): {', '.join(e['failed'])}")
    out.append(f"  - {e['wall_minutes']} min wall-clock, {e['cpu_minutes']} min CPU "
               f"(the process); {e['date']}")
    return out


def _caveats(entries: list[dict]) -> list[str]:
    """What stands in for what: CPU-small sizes, the synthetic set, fewer epochs than the paper."""
    if any(e["size"] != "paper" for e in entries):
        return [
            "**Rows from the `tiny` and `small` sizes are CPU-small stand-ins, not the paper's "
            "CIFAR-scale runs**, and so are `paper`-size rows without `--data` (a CIFAR-format "
            "synthetic set). The paper trains ResNet-20 on CIFAR-10 and ResNet-50 on CIFAR-100 "
            "(50,000 images, batch 128, S = 390, E = 200) on GPUs; each section names the task "
            "it ran. The shapes (which quantity is ≪ which) are what carries over; the absolute "
            "numbers do not. The CIFAR-scale runs are made on a GPU with",
            "",
            f"    {GPU_COMMAND}",
            "",
            "(real CIFAR-10/100 with `--data`, else the synthetic set, labelled as such; several "
            "comma-separated names per invocation share their training runs, and `pol experiment "
            "doc --out DIR` assembles the document).",
            ""]
    lines = []
    if any(e["data"] is None for e in entries):
        lines += [
            "**Data: a CIFAR-shaped synthetic set, not CIFAR-10/100.** These runs have the "
            "paper's scale (its model, 50,000 32×32 colour images, batch 128) but were made "
            "without `--data`: each class is a smooth random pattern, shifted, with distractors "
            "and noise. The setup and the replay noise (named above) carry over; whatever "
            "depends on what the data teaches (the trained weights, d_ref, accuracy) is not "
            "CIFAR's.", ""]
    short = sorted({e["epochs"] for e in entries
                    if e.get("epochs") is not None and e["epochs"] < PAPER_EPOCHS})
    if short:
        e = " or ".join(map(str, short))
        unit = "epoch" if short == [1] else "epochs"
        lines += [
            f"**E = {e} {unit}, where the paper trains {PAPER_EPOCHS}.** Every `k = E·S` row "
            f"replays a whole run of {e} {unit} (T = E·S steps), not of {PAPER_EPOCHS}: its "
            "error has had far fewer steps to grow than the paper's, and d_ref is the distance "
            f"between two models trained {e} {unit}. A one-step replay (k = 1) compares "
            "directly.", ""]
    return lines


def write_reproduction(out: Path, path: Path, names: list[str]) -> Path:
    """Write the document for the fragments of experiments `names` (in that order) found in
    `out` to `path`; figure links relative to it, with OUT/notes.md and OUT/NAME.notes.md where
    they exist (see the module's docstring)."""
    out, path = Path(out), Path(path)
    inv = out / INVOCATIONS
    entries = json.loads(inv.read_text()) if inv.exists() else []
    parts = [_header(entries)]
    if (out / NOTES).exists():
        parts.append(_notes(out / NOTES))
    found = False
    for name in names:
        md = out / f"{name}.md"
        if not md.exists():
            continue
        found = True
        rel = Path(os.path.relpath(out / f"{name}.png", path.parent)).as_posix()
        parts.append(md.read_text().replace(f"]({name}.png)", f"]({rel})"))
        if (out / f"{name}.notes.md").exists():
            parts.append(_notes(out / f"{name}.notes.md"))
    if not found:
        raise ConfigError(f"no experiment fragments (NAME.md) in {out}: run pol experiment first")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def _notes(path: Path) -> str:
    return path.read_text().rstrip("\n") + "\n"
