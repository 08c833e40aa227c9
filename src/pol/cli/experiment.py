"""`pol experiment`, `pol report`: the paper's experiments re-run (pol.experiments); one
self-contained HTML page for a verification (pol.verifier.html)."""

from __future__ import annotations

import sys

import click

from pol.cli import options as opt
from pol.cli import render
from pol.cli.exits import fail, handle_errors

SIZE_NAMES = ["tiny", "small", "paper"]


@click.command("experiment")
@click.argument("name", metavar="NAME[,NAME...]")
@click.option("--task", help="Task of the reproduction-error experiments (default: the size's).")
@opt.device("cpu", "cpu or cuda: where training and replays run.")
@click.option("--out", default="experiments", show_default=True, type=click.Path(file_okay=False),
              help="Directory for NAME.csv, NAME.png, NAME.md (and the runs).")
@click.option("--size", type=click.Choice(SIZE_NAMES), default="small", show_default=True,
              help="tiny: CI smoke test; small: minutes on a CPU; paper: the paper's CIFAR-scale "
              "setup (a GPU).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False),
              help="Local CIFAR directory: paper size uses real CIFAR-10/100 (else a labelled "
              "CIFAR-format synthetic set).")
@click.option("--epochs", type=click.IntRange(1), help="Override the size's epochs.")
@click.option("--runs", type=click.IntRange(1), help="Override the size's repetitions.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--noise", type=click.Choice(["auto", "emulated", "none"]), default="auto",
              show_default=True, help="Replay noise: auto = emulated fp32 rounding on a CPU, the "
              "hardware's own on a GPU.")
@click.option("--doc", type=click.Path(dir_okay=False),
              help="all: write REPRODUCTION.md here (default OUT/REPRODUCTION.md).")
@click.option("--keep-runs", is_flag=True, help="Keep the proofs trained on the way in OUT/runs.")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="Change a field of the size (pol.experiments.sizes.Size), e.g. fig7_ks=10,50 "
              "or 'inverse_params={\"n_train\": 1280}' (JSON); recorded in the report. Repeatable.")
@click.option("--merge", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="With doc or all: first bring the outputs of this directory (fragments, CSV, "
              "PNG, runs.json) into --out, replacing the same experiments'. Repeatable.")
@handle_errors
def experiment(name, task, device, out, size, data_dir, epochs, runs, seed, noise, doc,
               keep_runs, settings, merge):
    """Re-run the paper's experiment NAME (or all): a CSV, a PNG plot and a markdown fragment
    with the paper's numbers beside ours; `all` also writes REPRODUCTION.md.

    NAME: table1, table5, fig1, fig2 (fig6), fig3, table2, fig4, table3, fig5, fig7,
    appendix-d; several comma-separated (they share their training runs; one that fails is
    reported and the others still run, exit code 1); all; or doc (REPRODUCTION.md from the
    fragments already in --out)."""
    from pathlib import Path

    from pol.experiments import Config, run_experiments
    from pol.experiments.sizes import parse_settings
    cfg = Config(size=size, task=task, device=device, out=Path(out), data_dir=data_dir,
                 epochs=epochs, runs=runs, seed=seed, noise=noise, progress=sys.stderr.isatty(),
                 keep_runs=keep_runs, settings=parse_settings(settings))
    failed: list[str] = []

    def on_error(exp: str, e: Exception) -> None:
        failed.append(exp)
        render.experiment_failed(exp, e)
    outputs, written = run_experiments(name, cfg, doc, on_error=on_error, merge=list(merge))
    render.experiments_written(outputs, written)
    if failed:
        fail(f"experiment(s) failed: {', '.join(failed)} (the others were written)", 1)


@click.command("report")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write.")
@click.option("--proof", type=click.Path(file_okay=False),
              help="For a JSON SOURCE: the proof directory (default: the path the report names, "
              "if it is there), for every segment's update and the KS p-values per layer.")
@opt.data()
@click.option("--q", "q", type=click.IntRange(1), default=1, show_default=True,
              help="For a proof SOURCE: largest updates replayed per epoch.")
@click.option("--all", "all_segments", is_flag=True, help="For a proof SOURCE: replay all.")
@click.option("--policy", type=click.Choice(["hardened", "paper"]), default="hardened",
              show_default=True)
@opt.device("cpu")
@handle_errors
def report(source, out, proof, data, q, all_segments, policy, device):
    """Write one self-contained HTML page for a verification: SOURCE is the JSON of
    `pol verify --json` or a proof directory (verified first). Exit code as `pol verify`'s."""
    from pol.verifier.html import report_page
    r, path = report_page(source, out, proof=proof, data=data, q=q, all_segments=all_segments,
                          policy=policy, device=device)
    sys.exit(render.report_written(r, path))
