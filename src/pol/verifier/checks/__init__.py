"""The verifier's checks: each a small named function returning `CheckResult`s.

- `inputs`: what the proof claims about its run, before any replay (dataset commitment, learning
  rates, hyperparameters, epoch structure);
- `init`: the start (KS on W_0, init regeneration, init rank correlation, initial optimizer
  state);
- `replay`: the verdict on each replayed segment and the checks over all of them (δ, tolerance,
  relative error, update size, loss replay, optimizer replay, data dependence, data hashes).

Check names are `CheckName` members; the report stores their string values (the JSON schema
`pol-report/1` is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class CheckName(str, Enum):
    INTEGRITY = "integrity"
    EXTRA_FILES = "extra files"
    COMMITMENT = "commitment"
    DATASET_COMMITMENT = "dataset commitment"
    REVEALED_DATA = "revealed data"
    REVEALED_FRACTION = "revealed fraction"
    LEARNING_RATES = "learning rates"
    HYPERPARAMETERS = "hyperparameters"
    EPOCH_STRUCTURE = "epoch structure"
    MODEL_SOURCE = "model source"
    INITIAL_OPTIMIZER_STATE = "initial optimizer state"
    CHECKPOINT_DIGESTS = "checkpoint digests"
    OPTIMIZER_STATE = "optimizer state"
    INITIALIZATION = "initialization"
    INIT_REGENERATION = "init regeneration"
    INIT_RANK_CORRELATION = "init rank correlation"
    PARENT = "parent"
    TOLERANCE = "tolerance"
    LOSS_REPLAY = "loss replay"
    OPTIMIZER_REPLAY = "optimizer replay"
    DATA_DEPENDENCE = "data dependence"
    RELATIVE_ERROR = "relative error"
    UPDATE_SIZE = "update size"
    DATA_HASHES = "data hashes"
    REPLAY = "replay"
    EXACT_REPLAY = "exact replay"
    ROUNDING_LOG = "rounding log"


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"  # reported, does not fail the proof
    SKIP = "skip"  # not applicable or deferred
    # failed where replay on this hardware cannot tell an honest proof from a forged one (a
    # float32 proof replayed on other hardware than the prover's, with the auto δ): not valid,
    # not invalid; verify on the prover's kind of hardware
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class CheckResult:
    name: CheckName
    ok: bool | None  # None: skipped
    reason: str = ""
    value: Any = None
    bound: Any = None
    warn: bool = False  # a failure that is only reported

    def add_to(self, report) -> None:
        report.add(self.name, self.ok, self.reason, value=self.value, bound=self.bound,
                   warn=self.warn)
