"""REPRODUCTION.md: every experiment's fragment (the paper's numbers beside ours, a sentence on
each difference), under a header naming the command, the machine and what stands in for what."""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path

from pol.experiments.common import Output, Workspace

GPU_COMMAND = ("pol experiment all --device cuda --size paper --out docs/reproduction-gpu "
               "--doc docs/REPRODUCTION-gpu.md [--data CIFAR_DIR] [--epochs E]")


def _header(ws: Workspace, command: str) -> str:
    size = ws.size
    minutes = (time.time() - ws.started) / 60
    stand_in = size.name != "paper" or ws.cfg.data_dir is None
    lines = [
        "# Reproduction of the paper's experiments",
        "",
        "Jia et al., *Proof-of-Learning: Definitions and Practice* (IEEE S&P 2021), re-run with "
        "pol (`pol experiment`). Every table and figure below has the paper's number beside ours "
        "and a sentence on each difference. This file is generated; the CSV, PNG and markdown "
        "fragment of every experiment sit beside the figures.",
        "",
        f"- Command: `{command or 'pol experiment all --size ' + size.name}`",
        f"- Machine: {ws.machine()}",
        f"- Size: `{size.name}` ({size.note}); E = {ws.epochs}, {ws.runs} run(s) per "
        "configuration",
        f"- Replay noise: {ws.noise_label}",
        f"- Run time: {minutes:.1f} min; written {_dt.date.today().isoformat()}",
        "",
    ]
    if stand_in:
        lines += [
            "**These are CPU-small stand-ins, not the paper's CIFAR-scale runs.** The paper "
            "trains ResNet-20 on CIFAR-10 and ResNet-50 on CIFAR-100 (50,000 images, batch 128, "
            "S = 390, E = 200) on GPUs; here the tasks are the small ones each section names. "
            "The shapes (which quantity is ≪ which) are what carries over; the absolute numbers "
            "do not. The CIFAR-scale rows are produced on a GPU with",
            "",
            f"    {GPU_COMMAND}",
            "",
            "(real CIFAR-10/100 with `--data`, else a CIFAR-format synthetic set, labelled as "
            "such in every section).",
            ""]
    return "\n".join(lines)


def write_reproduction(ws: Workspace, outputs: list[Output], path: Path, command: str) -> Path:
    """Write the document to `path`; figure links relative to its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_header(ws, command)]
    for o in outputs:
        rel = Path(os.path.relpath(o.png, path.parent)).as_posix()
        parts.append(o.summary["fragment"].replace("{img}", rel))
    path.write_text("\n".join(parts))
    return path
