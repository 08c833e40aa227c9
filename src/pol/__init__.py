"""pol — proof-of-learning for PyTorch.

Public API (everything else is internal and may move):

- `TrainingSpec` and its parts: the self-describing training description stored in a proof.
- `Recorder`: records a proof around any training loop (`record_batch` + `step`).
- `fit`: the common loop (data, optimizer, epochs) with a proof, in one call.
- `train_task`: train a built-in task with a proof.
- `verify`: Algorithm 2; returns a structured `Report`.
- `inspect_proof`: what a proof holds.
"""

from pol.errors import (ConfigError, IncompleteProofError, PolError, ProofFormatError,
                        ProofWriteError)
from pol.spec import DataSpec, ModelSpec, OptimizerSpec, ScheduleSpec, TrainingSpec

from pol._version import __version__

__all__ = [
    "ConfigError", "DataSpec", "IncompleteProofError", "ModelSpec", "OptimizerSpec", "PolError",
    "ProofFormatError", "ProofWriteError", "Recorder", "Report", "ScheduleSpec", "TrainingSpec",
    "fit", "inspect_proof", "train_task", "verify", "__version__",
]


def __getattr__(name: str):  # lazy: keep `import pol` cheap for the CLI's --help
    if name in ("Recorder", "fit"):
        from pol.prover import recorder
        return getattr(recorder, name)
    if name == "train_task":
        from pol.prover.trainer import train_task
        return train_task
    if name in ("verify", "Report"):
        from pol import verifier
        return getattr(verifier, name)
    if name == "inspect_proof":
        from pol.proof.reader import inspect_proof
        return inspect_proof
    raise AttributeError(name)
