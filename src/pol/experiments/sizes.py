"""The sizes an experiment runs at: `tiny` (CI smoke tests, seconds), `small` (the documented CPU
size: every experiment in minutes on 2 cores) and `paper` (the paper's CIFAR-scale setup for a GPU:
ResNet-20, 50,000 CIFAR-shaped samples, batch 128, E = 200; S = 391, where the paper's 390
drops the last short batch).

A size is frozen data; `Config` (the command line's options) overrides the task, the epochs and
the number of runs, and any field with `--set FIELD=VALUE` (`parse_setting`): what a time limit
makes a run leave out (fewer k, fewer learning rates, a smaller inverse-gradient target), said in
the command and the report.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Size:
    name: str
    task: str  # the reproduction-error experiments (table1, table5, fig1-3, fig5, fig7)
    epochs: int
    runs: int  # independent repetitions (mean ± std), each with its own seed
    dataset_params: dict = field(default_factory=dict)
    fixed_ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)  # plus S/2, S, multiples of S, E·S
    fp16_all_ks: bool = True  # fp16 replays at every k (else only at 1, S and E·S)
    fig3_lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    fig3_k: int = 12  # the paper's
    # table2 / fig4: the first training steps of these (task, dataset params, label) setups
    ks_setups: tuple[tuple[str, dict, str], ...] = ()
    ks_steps: int = 20
    # table3: inverse-gradient target (a plain-SGD variant of the task) and its length
    inverse_task: str = "digits-mlp"
    inverse_params: dict = field(default_factory=dict)
    inverse_epochs: int = 2
    inverse_batch: int | None = None  # None: the task's
    inverse_train_epochs: int | None = None  # the target's training (None: the size's epochs)
    inverse_maxiter: int = 20
    fig7_ks: tuple[int, ...] = (5, 10)
    fig7_qs: tuple[int, ...] = (1, 2)
    solver_steps: int = 10  # appendix-d: steps inverted per solver run
    solver_lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
    solver_lenet: bool = False  # appendix-d also on a LeNet-style model
    # torch intra-op threads on a CPU for the whole experiment (restored after): these models
    # are too small to gain from more, and a busy machine slows spinning OpenMP threads down
    cpu_threads: int | None = None
    note: str = ""


SIZES: dict[str, Size] = {
    "tiny": Size(
        "tiny", task="digits-mlp", epochs=2, runs=1, fixed_ks=(1, 5), fig3_lrs=(0.01, 1.0),
        fig3_k=12, ks_setups=(("digits-mlp", {}, "digits-mlp"),), ks_steps=6,
        inverse_task="iris-logreg", inverse_epochs=1, inverse_maxiter=10, fig7_ks=(15, 45),
        fig7_qs=(1,), solver_steps=3, solver_lrs=(0.1, 1.0), cpu_threads=1,
        note="smoke-test size: numbers are not meaningful"),
    "small": Size(
        "small", task="digits-mlp", epochs=5, runs=3, fixed_ks=(1, 2, 5, 10, 20),
        fig3_lrs=(1e-3, 1e-2, 5e-2, 1e-1, 5e-1, 1.0), fig3_k=12,
        ks_setups=(("synthetic-resnet20", {"n_train": 2000, "n_test": 250},
                    "ResNet-20, 2,000 CIFAR-shaped synthetic samples"),),
        ks_steps=12, inverse_task="digits-mlp", inverse_epochs=1, inverse_maxiter=20,
        inverse_batch=256,
        fig7_ks=(1, 5, 15, 45), fig7_qs=(1, 2, 3), solver_steps=20,
        solver_lrs=(0.01, 0.1, 1.0, 5.0), solver_lenet=False, cpu_threads=1,
        note="CPU-small stand-in for the paper's CIFAR-scale runs"),
    "paper": Size(
        "paper", task="synthetic-resnet20", epochs=200, runs=1,
        dataset_params={"n_train": 50000, "n_test": 10000}, fixed_ks=(1, 10, 100),
        fp16_all_ks=False,
        fig3_lrs=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), fig3_k=12,
        ks_setups=(("synthetic-resnet20", {"n_train": 50000, "n_test": 10000},
                    "ResNet-20, 10 classes"),
                   ("synthetic-resnet50", {"n_train": 50000, "n_test": 10000, "num_classes": 100},
                    "ResNet-50, 100 classes")),
        ks_steps=20, inverse_task="synthetic-resnet20",
        # 3,200 samples at batch 128: S = 25, one epoch inverted (the paper: 50 steps) on the CPU
        # (the attack toolkit's), at most 3 Newton-Krylov iterations a step: minutes, not hours
        inverse_params={"n_train": 3200, "n_test": 1000}, inverse_epochs=1, inverse_maxiter=3,
        inverse_train_epochs=2,
        fig7_ks=(10, 50, 100, 390), fig7_qs=(1, 2, 5), solver_steps=50,
        solver_lrs=(1e-3, 1e-2, 1e-1, 1.0), solver_lenet=True,
        note="the paper's setup (ResNet-20, 50,000 samples, batch 128; S = 391, the paper's 390 "
             "without its last short batch)"),
}


def get_size(name: str) -> Size:
    from pol.errors import ConfigError
    try:
        return SIZES[name]
    except KeyError:
        raise ConfigError(f"unknown size {name!r}; known: {', '.join(SIZES)}") from None


def parse_settings(texts) -> dict[str, Any]:
    """Every `FIELD=VALUE` of `pol experiment --set` (`parse_setting`), as one dict."""
    return dict(parse_setting(t) for t in texts)


def parse_setting(text: str) -> tuple[str, Any]:
    """`FIELD=VALUE` (`pol experiment --set`) as (field, value) for `with_settings`: VALUE is JSON
    (`3`, `[10, 50]`, `{"n_train": 1280}`, `true`, `null`), or for a tuple field comma-separated
    numbers (`10,50,100`), or for a text field the text itself."""
    from pol.errors import ConfigError
    name, sep, raw = text.partition("=")
    name = name.strip()
    types = {f.name: str(f.type) for f in dataclasses.fields(Size) if f.name != "name"}
    if not sep or name not in types:
        raise ConfigError(f"--set {text!r}: expected FIELD=VALUE with FIELD one of "
                          f"{', '.join(types)}")
    kind = types[name]
    try:
        value: Any = json.loads(raw)
    except ValueError:
        if kind.startswith("tuple"):
            try:
                value = [json.loads(v) for v in raw.split(",")]
            except ValueError:
                value = raw
        else:
            value = raw
    try:
        return name, _typed(value, kind)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--set {text!r}: {name} must be {kind} ({e})") from None


def _typed(value: Any, kind: str) -> Any:
    """`value` (parsed JSON) checked against a Size field's annotation; lists become tuples."""
    if value is None and kind.endswith("| None"):
        return None
    base = kind.removesuffix(" | None")
    if base.startswith("tuple"):
        out = _tuples(value if isinstance(value, list) else [value])
        item = {"tuple[int, ...]": "int", "tuple[float, ...]": "float"}.get(base)
        return tuple(_typed(v, item) for v in out) if item else out
    want = {"int": int, "float": (int, float), "bool": bool, "str": str, "dict": dict}[base]
    if not isinstance(value, want) or (base in ("int", "float") and isinstance(value, bool)):
        raise TypeError(f"got {value!r}")
    return float(value) if base == "float" else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def with_settings(size: Size, settings: dict[str, Any]) -> Size:
    """`size` with the fields `settings` names changed (checked by `parse_setting`)."""
    return dataclasses.replace(size, **settings) if settings else size


def k_values(size: Size, S: int, T: int) -> list[int]:
    """fig1's checkpointing intervals: the size's fixed ones, S/2, S, multiples of S, E·S."""
    ks = set(size.fixed_ks) | {max(1, S // 2), S, 2 * S, 5 * S, 10 * S, 50 * S, T}
    return sorted(k for k in ks if 1 <= k <= T)
