"""The paper's experiments re-run with pol (`pol experiment NAME`): each writes NAME.csv, NAME.png
and NAME.md (a markdown fragment with the paper's numbers beside ours) into the output
directory; `all` runs every one and writes REPRODUCTION.md (`doc` writes it alone, from the
fragments an earlier invocation, or several, left in the directory).

| name | module | paper |
|---|---|---|
| `table1`, `table5`, `fig1`, `fig2`, `fig3` | `reproduction` | §VI-C: ‖ε_repr‖, d_ref, against k, storage, η |
| `table2`, `fig4` | `ksinit` | §VI-D: KS p-values of the first steps |
| `table3`, `fig5` | `spoofing` | §VII: inverse-gradient proofs, the concatenation spoof |
| `fig7` | `cost` | Appendix E: verification cost against k and Q |
| `appendix-d` | `solvers` | Appendix D: root solvers inverting steps |

Sizes (`pol.experiments.sizes`): `tiny` (CI), `small` (the documented CPU size), `paper` (the
paper's CIFAR-scale setup, for a GPU). Experiments of one invocation share their training runs
(`common.Workspace`). matplotlib (the `plot` extra) is imported when a figure is drawn, through
its object API only.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from pol.errors import ConfigError
from pol.experiments.common import Config, Output, Workspace

# name: (module, function, what it reproduces)
EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "table1": ("reproduction", "table1", "normalized reproduction error at k = E·S, k = 1, "
               "deterministic, and pol's exact mode"),
    "table5": ("reproduction", "table5", "reference distance d_ref"),
    "fig1": ("reproduction", "fig1", "‖ε_repr‖ against the checkpointing interval k"),
    "fig2": ("reproduction", "fig2", "‖ε_repr‖ against storage overhead (and MB: fp32, fp16, "
             "pol's codec)"),
    "fig3": ("reproduction", "fig3", "‖ε_repr‖ against the learning rate"),
    "table2": ("ksinit", "table2", "the step where the KS p-value drops below 0.01"),
    "fig4": ("ksinit", "fig4", "KS p-values of the first training steps"),
    "table3": ("spoofing", "table3", "reproduction error of inverse-gradient proofs"),
    "fig5": ("spoofing", "fig5", "concatenation spoof: discontinuity against honest updates"),
    "fig7": ("cost", "fig7", "verification cost against k and Q"),
    "appendix-d": ("solvers", "appendix_d", "root solvers inverting training steps"),
}
ALIASES = {"fig6": "fig2"}


def names() -> list[str]:
    return [*EXPERIMENTS, *ALIASES, "all", "doc"]


def parse_names(spec: str) -> list[str]:
    """`table1`, `table1,fig1,fig2` (one workspace: shared runs), `all`, or `doc` (only
    REPRODUCTION.md, from the fragments already in the output directory)."""
    out = [ALIASES.get(n.strip(), n.strip()) for n in spec.split(",") if n.strip()]
    bad = [n for n in out if n not in EXPERIMENTS and n not in ("all", "doc")]
    if bad or not out:
        raise ConfigError(f"unknown experiment {', '.join(bad) or repr(spec)}; known: "
                          f"{', '.join(names())} (or several, comma-separated)")
    if "all" in out:
        return [*EXPERIMENTS, "doc"]
    return list(dict.fromkeys(out))


def run_one(name: str, ws: Workspace) -> Output:
    name = ALIASES.get(name, name)
    try:
        module, fn, _ = EXPERIMENTS[name]
    except KeyError:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(names())}") from None
    with ws.threads():
        return getattr(importlib.import_module(f"pol.experiments.{module}"), fn)(ws)


def run_experiments(name: str, cfg: Config, doc: str | os.PathLike | None = None,
                    command: str | None = None,
                    on_error: Callable[[str, Exception], None] | None = None,
                    merge: list[str | os.PathLike] | tuple = ()) -> tuple[list[Output], Path | None]:
    """Run the experiments `name` names (see `parse_names`) with `cfg` in one workspace; `all`
    and `doc` also write REPRODUCTION.md (to `doc`, default OUT/REPRODUCTION.md) from every
    fragment in the output directory, after bringing in those of the directories `merge` names
    (`document.merge_outputs`). Returns (outputs, the document written or None).

    OUT/runs.json records the invocation after every experiment (a run killed by a time limit
    keeps what it finished). `on_error(name, exception)`: an experiment that raises is passed to
    it and the next one runs (recorded as failed); without it, the exception propagates."""
    from pol.experiments import document
    todo = parse_names(name)
    runs = [n for n in todo if n != "doc"]
    if merge and "doc" not in todo:
        raise ConfigError("merging other output directories needs doc (or all): the merged "
                          "outputs go into the document")
    outs: list[Output] = []
    if runs:
        from pol.experiments.common import command_line
        ws = Workspace(cfg)
        cmd = command or command_line(name, cfg, doc)
        done: list[str] = []
        failed: list[str] = []
        try:
            for n in runs:
                try:
                    outs.append(run_one(n, ws))
                    done.append(n)
                except Exception as e:
                    if on_error is None:
                        raise
                    failed.append(n)
                    on_error(n, e)
                finally:
                    document.record_invocation(ws, done, cmd, failed)
        finally:
            ws.close()
    if "doc" not in todo:
        return outs, None
    for src in merge:
        stale = document.merge_outputs(Path(src), Path(cfg.out), list(EXPERIMENTS))
        if stale:
            import warnings
            warnings.warn(f"{cfg.out}: the hand-written notes on {', '.join(stale)} "
                          f"(NAME.notes.md) were written for the fragments {src} replaced: "
                          "review them", stacklevel=2)
    path = Path(doc) if doc is not None else Path(cfg.out) / "REPRODUCTION.md"
    return outs, document.write_reproduction(Path(cfg.out), path, list(EXPERIMENTS))


__all__ = ["ALIASES", "Config", "EXPERIMENTS", "Output", "Workspace", "names", "parse_names",
           "run_experiments", "run_one"]
