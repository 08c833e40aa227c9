"""pol — proof-of-learning for PyTorch.

Public API (everything else is internal and may move):

- `TrainingSpec` and its parts: the self-describing training description stored in a proof.
- `Recorder`: records a proof around any training loop (`record_batch` + `step`).
- `attach`: wrap an existing loop's optimizer and data (clipping, accumulation, schedulers), one or
  two lines changed.
- `fit`: the common loop (data, optimizer, epochs) with a proof, in one call.
- `train_task`: train a built-in task with a proof.
- `verify` (with `VerifyOptions`, `Policy`, `HARDENED`, `PAPER`): Algorithm 2 and pol's
  defences; returns a structured `Report`.
- `inspect`: what a proof holds, as a `ProofInfo` (`inspect_proof`: the same as a dict).
- `dispute`: who trained a model first, as a `DisputeResult`.
- the errors: `PolError` and its two branches, `UnusableInputError` (exit 2) and
  `VerificationError` (exit 1).

`import pol` loads no torch: the names that need it load on first use.
"""

from pol._version import __version__
from pol.errors import (ConfigError, IncompleteProofError, IntegrityError, PolError,
                        ProofFormatError, ProofWriteError, UnusableInputError, VerificationError)
from pol.spec import DataSpec, ModelSpec, OptimizerSpec, ScheduleSpec, TrainingSpec

__all__ = [
    "ConfigError", "DataSpec", "DisputeResult", "HARDENED", "IncompleteProofError",
    "IntegrityError", "ModelSpec", "OptimizerSpec", "PAPER", "Policy", "PolError", "ProofFormatError",
    "ProofInfo", "ProofWriteError", "Recorder", "Report", "ScheduleSpec", "StepSpec",
    "TrainingSpec", "UnusableInputError", "VerificationError", "VerifyOptions", "__version__",
    "attach", "dispute", "fit", "inspect", "inspect_proof", "train_task", "verify",
]

_LAZY = {
    "Recorder": "pol.prover.recorder", "fit": "pol.prover.recorder",
    "attach": "pol.prover.attach", "StepSpec": "pol.spec",
    "train_task": "pol.prover.trainer",
    "verify": "pol.verifier", "VerifyOptions": "pol.verifier", "Report": "pol.verifier",
    "Policy": "pol.verifier", "HARDENED": "pol.verifier", "PAPER": "pol.verifier",
    "inspect": "pol.proof.reader", "inspect_proof": "pol.proof.reader",
    "ProofInfo": "pol.proof.reader",
    "dispute": "pol.verifier.dispute", "DisputeResult": "pol.verifier.dispute",
}


def __getattr__(name: str):  # lazy: keep `import pol` cheap for the CLI's --help
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pol' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(mod), name)
