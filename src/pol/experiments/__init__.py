"""The paper's experiments re-run with pol (`pol experiment NAME`): each writes NAME.csv, NAME.png
and NAME.md (a markdown fragment with the paper's numbers beside ours) into the output
directory; `all` runs every one and writes REPRODUCTION.md.

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
    return [*EXPERIMENTS, "all"]


def run_one(name: str, ws: Workspace) -> Output:
    name = ALIASES.get(name, name)
    try:
        module, fn, _ = EXPERIMENTS[name]
    except KeyError:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(names())}") from None
    with ws.threads():
        return getattr(importlib.import_module(f"pol.experiments.{module}"), fn)(ws)


def run_experiments(name: str, cfg: Config, doc: str | os.PathLike | None = None,
                    command: str = "") -> tuple[list[Output], Path | None]:
    """Run experiment `name` (or `all`) with `cfg`; `all` also writes REPRODUCTION.md (to `doc`,
    default OUT/REPRODUCTION.md). Returns (outputs, the document written or None)."""
    ws = Workspace(cfg)
    try:
        if name != "all":
            return [run_one(name, ws)], None
        outs = [run_one(n, ws) for n in EXPERIMENTS]
        from pol.experiments.document import write_reproduction
        path = Path(doc) if doc is not None else ws.out / "REPRODUCTION.md"
        return outs, write_reproduction(ws, outs, path, command)
    finally:
        ws.close()


__all__ = ["ALIASES", "Config", "EXPERIMENTS", "Output", "Workspace", "names", "run_experiments",
           "run_one"]
