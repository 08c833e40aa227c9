"""Options shared by several commands, defined once, and the parsing helpers of option values.

Defaults come from the library (the dataclass field or the function parameter the option feeds:
`default_of`), never re-declared here, so `pol verify --help` shows what `pol.verify()` does.
An option factory takes what differs between commands (help text, metavar, required): the flag
name, its destination and its type are the same everywhere.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any, Callable

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def default_of(owner: Any, name: str) -> Any:
    """The default of field `name` of a dataclass, or of parameter `name` of a function."""
    if dataclasses.is_dataclass(owner):
        f = {f.name: f for f in dataclasses.fields(owner)}[name]
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory()  # type: ignore[misc]
    return inspect.signature(owner).parameters[name].default


def compose(*decorators: Decorator) -> Decorator:
    """Several options as one decorator (applied in the order listed, top to bottom)."""
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


GIB = 2**30
SEED = click.IntRange(0, 2**63 - 1)
METRIC = click.Choice(["l1", "l2", "linf", "cos"])


# ------------------------------------------------------------------------- output, overwrite

def json_flag(help: str = "Print JSON.") -> Decorator:  # noqa: A002
    return click.option("--json", "as_json", is_flag=True, help=help)


def json_file(help: str) -> Decorator:  # noqa: A002
    return click.option("--json", "json_out", type=click.Path(dir_okay=False), help=help)


def force(help: str) -> Decorator:  # noqa: A002
    return click.option("--force", is_flag=True, help=help)


# --------------------------------------------------------------------------- keys, ledgers

def passphrase_env(help: str = "Environment variable holding the private key's passphrase "  # noqa: A002
                   "(never read from the command line).") -> Decorator:
    return click.option("--passphrase-env", "passphrase_env", metavar="VAR", default=None,
                        help=help)


def sign_with(help: str, required: bool = False) -> Decorator:  # noqa: A002
    return click.option("--sign-with", "sign_with", required=required, metavar="KEY",
                        type=click.Path(dir_okay=False), help=help)


def ledger(help: str, required: bool = False) -> Decorator:  # noqa: A002
    return click.option("--ledger", "ledger_db", required=required, metavar="DB",
                        type=click.Path(dir_okay=False), help=help)


# ------------------------------------------------------------------------ devices and trust

def device(default: str, help: str | None = None) -> Decorator:  # noqa: A002
    return click.option("--device", default=default, show_default=True,
                        help=help or "cpu, cuda (cuda:N) or auto.")


def trust_module() -> Decorator:
    return click.option("--trust-module", "trust_module", multiple=True, metavar="PACKAGE",
                        help="Allow the proof's model factory from this Python package.")


def data(help: str = "The proof's dataset when pol cannot rebuild it: a directory (CIFAR), "  # noqa: A002
         "an .npz with arrays x, y (user data), a token file (its sha256 is checked), or "
         "module:callable for a proof made on a torch Dataset (or a Hugging Face dataset; its "
         "save_to_disk directory works too). Built-in datasets take "
         "none.") -> Decorator:
    return click.option("--data", "data", help=help)


def parents() -> Decorator:
    return click.option(
        "--parent", "parents", multiple=True, type=click.Path(),
        help="For a warm-started proof (pol train --init-from): the parent proof's directory "
        "(the proof directory itself, not a folder of proofs). Used when its root digest is the "
        "one the proof names, and verified as well. Repeatable: one per generation of a chain.")


def registry() -> Decorator:
    return click.option("--registry", type=click.Path(dir_okay=False),
                        help="Ledger DB of previously verified proofs (verdict entries).")


# ------------------------------------------------------------------- the training spec (train)

def training_spec() -> Decorator:
    """The options that build a task's TrainingSpec: `pol train` and `pol commit` (which must
    commit to the spec `pol train` builds with the same options)."""
    from pol.prover.trainer import train_task as t
    return compose(
        click.option("--task", default="digits-mlp", show_default=True,
                     help="Built-in task (pol tasks)."),
        click.option("--epochs", type=click.IntRange(1), help="Epochs (default: the task's)."),
        click.option("--k", type=click.IntRange(1), help="Checkpoint interval in steps."),
        click.option("--seed", type=SEED, default=default_of(t, "seed"), show_default=True),
        click.option("--lr", type=click.FloatRange(0, 1000, min_open=True),
                     help="Base learning rate."),
        click.option("--batch-size", type=click.IntRange(1), help="Batch size."),
        click.option("--precision", type=click.Choice(["fp32", "fp16"]),
                     default=default_of(t, "precision"), show_default=True,
                     help="Storage precision of checkpoints."),
        device(default_of(t, "device"), "cpu, cuda or auto (part of the spec)."),
        click.option("--deterministic/--no-deterministic", default=None,
                     help="torch.use_deterministic_algorithms: bitwise replay on the same kind "
                     "of GPU (exact mode). Default: on for a GPU (about 12% slower on an H100), "
                     "off on a CPU (already deterministic)."),
        click.option("--tf32", is_flag=True, help="GPU: allow TF32 (faster convolutions and "
                     "matmuls; recorded in the spec, but replays on other hardware drift "
                     "further)."),
        click.option("--warmup", type=click.IntRange(0), default=default_of(t, "warmup"),
                     show_default=True, help="Linear lr warm-up over this many steps (part of "
                     "the schedule; damps the early growth that dominates cross-hardware replay "
                     "error)."),
        click.option("--exact/--no-exact", default=None, help="Exact mode: the step computes "
                     "in float64 and rounds to float32 with a log of the values near a rounding "
                     "tie, so the proof replays bitwise on other hardware (a GPU proof on a CPU). "
                     "Refuses dropout, fp16 and layers outside a supported list. Default: on for "
                     "a GPU where the task's model supports it (fp32, no TF32), off on a CPU "
                     "(a CPU proof replays bitwise on other CPUs already)."),
        click.option("--data", "data_dir", type=click.Path(),
                     help="Local dataset directory (CIFAR)."),
    )


# ---------------------------------------------------------------------- the verifier's budget

def limits() -> Decorator:
    """The reader's limits and the verifier's budget (pol.proof.format.Limits); `to_limits`
    turns the values back into a Limits."""
    from pol.proof.format import Limits as L
    return compose(
        click.option("--max-proof-gb", type=click.FloatRange(0, min_open=True),
                     default=default_of(L, "max_total_bytes") / GIB, show_default=True,
                     help="Refuse proofs larger than this."),
        click.option("--max-checkpoints", type=click.IntRange(1),
                     default=default_of(L, "max_checkpoints"), show_default=True,
                     help="Verifier budget: refuse proofs with more checkpoints."),
        click.option("--max-checkpoint-gb", type=click.FloatRange(0, min_open=True),
                     default=default_of(L, "max_checkpoint_bytes") / GIB, show_default=True,
                     help="Verifier budget: refuse a checkpoint larger than this (decoded, for "
                     "a compressed proof)."),
        click.option("--max-replay-steps", type=click.IntRange(1),
                     default=default_of(L, "max_replay_steps"), show_default=True,
                     help="Verifier budget: refuse to replay more steps."),
        click.option("--max-dataset-gb", type=click.FloatRange(0, min_open=True),
                     default=default_of(L, "max_dataset_bytes") / GIB, show_default=True,
                     help="Verifier budget: refuse to generate a dataset (synthetic-*) from the "
                     "proof's parameters that needs more memory."),
    )


def to_limits(max_proof_gb: float, max_checkpoints: int, max_checkpoint_gb: float,
              max_replay_steps: int, max_dataset_gb: float) -> Any:
    """The Limits the `limits()` options ask for (--max-proof-gb bounds the proof and any file)."""
    from pol.proof.format import Limits
    whole = int(max_proof_gb * GIB)
    return Limits(max_total_bytes=whole, max_file_bytes=whole, max_checkpoints=max_checkpoints,
                  max_checkpoint_bytes=int(max_checkpoint_gb * GIB),
                  max_replay_steps=max_replay_steps,
                  max_dataset_bytes=int(max_dataset_gb * GIB))


# ------------------------------------------------------------------------- value parsers

def parse_deltas(values: tuple[str, ...], metrics: list[str]) -> str | dict[str, float]:
    """--delta values: "auto", a number (for the first compared metric) or METRIC=NUMBER."""
    if not values or values == ("auto",):
        return "auto"
    out = {}
    for v in values:
        if v == "auto":
            continue
        if "=" in v:
            m, _, num = v.partition("=")
        else:
            m, num = metrics[0], v
        if m not in metrics:
            raise click.BadParameter(f"{v!r}: metric {m!r} is not compared (compared: "
                                     f"{', '.join(metrics)}; add --metric {m})",
                                     param_hint="--delta")
        try:
            x = float(num)
        except ValueError:
            raise click.BadParameter(f"{v!r}: expected auto, a number, or METRIC=NUMBER",
                                     param_hint="--delta") from None
        if not x >= 0:
            raise click.BadParameter("δ must be a non-negative number", param_hint="--delta")
        out[m] = x
    return out


def given(**values: Any) -> dict[str, Any]:
    """The options the user gave (not None), as keyword arguments for a library call."""
    return {k: v for k, v in values.items() if v is not None}


def parse_settings(items: tuple[str, ...], flag: str = "--set") -> dict[str, Any]:
    """`flag` KEY=VALUE items: VALUE read as JSON where it parses, else a string."""
    from pol.errors import ConfigError
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key.isidentifier():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def parse_anchors(items: tuple[str, ...]) -> list[tuple[int, str]]:
    """--anchor SEQ:HASH items (as printed by `pol ledger head`)."""
    from pol.errors import ConfigError
    out = []
    for text in items:
        seq, sep, digest = text.partition(":")
        if not sep or not seq.isdigit() or len(digest) != 64:
            raise ConfigError(f"bad --anchor {text!r}; expected SEQ:HASH as printed by "
                              "`ledger head`")
        out.append((int(seq), digest.lower()))
    return out
