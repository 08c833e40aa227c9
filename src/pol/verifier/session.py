"""What one verification works on: the opened proof, the verifier's data, the step context the
proof describes, and a checkpoint store that checks every checkpoint it hands out.

The session is built once, in order of cost: the proof (digests), the data (its commitment is a
check of `pol.verifier.checks.inputs`), the model and optimizer (`pol.step.build_context`, the
same constructor the prover used). Checkpoints are read through `CheckpointStore.load`: digest,
names, shapes, dtypes and finite weights checked, the last two kept in memory.
"""

from __future__ import annotations

import torch

from pol.datasets import load_training_set as load_verifier_data  # noqa: F401 - re-export
from pol.errors import ConfigError, ProofFormatError
from pol.proof import format as fmt
from pol.step import MODEL_PREFIX, expected_state_shapes, storage_dtypes


def param_names(model: torch.nn.Module) -> list[str]:
    """The checkpoint names of the model's parameters (buffers excluded), in parameter order."""
    return [MODEL_PREFIX + n for n, _ in model.named_parameters()]


def check_model_size(spec, m: fmt.Manifest, trusted: tuple[str, ...]) -> None:
    """Build the spec's model on the meta device (no memory) and refuse one whose parameters need
    far more bytes than the proof's first checkpoint holds, before allocating it for real."""
    from pol.step import build_model
    try:
        with torch.device("meta"):
            model = build_model(spec.model, trusted)
    except (RuntimeError, MemoryError, TypeError, ValueError) as e:
        raise ProofFormatError(f"the proof's model cannot be built: {e}") from None
    need = sum(p.numel() for p in model.parameters()) * (2 if spec.precision == "fp16" else 4)
    have = m.files[fmt.checkpoint_name(0)][1]
    if need > have:
        raise ProofFormatError(f"the spec describes a model of {need} parameter bytes, but the "
                               f"first checkpoint holds only {have} bytes")


def build_step_context(spec, manifest: fmt.Manifest, device: torch.device,
                       trusted: tuple[str, ...]):
    """The step context the proof describes (unusable input if it cannot be built)."""
    from pol.step import build_context
    check_model_size(spec, manifest, trusted)
    try:
        return build_context(spec, device, trusted)
    except ConfigError as e:
        raise ProofFormatError(f"the proof's spec cannot be rebuilt: {e}") from None
    except (RuntimeError, MemoryError, TypeError, ValueError) as e:
        raise ProofFormatError(f"the proof's model cannot be built: {e}") from None


class CheckpointStore:
    """Checkpoints of one proof, each checked against the model before use: names, shapes, storage
    dtypes, finite weights (the digest is checked by the reader). The last two stay in memory
    (never altered: `load_state` copies them), so a replay of consecutive segments, or of the last
    one after the checkpoint pass, does not read and check the same file again."""

    def __init__(self, proof, ctx) -> None:
        self.proof = proof
        spec = proof.manifest.spec
        self.precision = spec.precision
        self.names = param_names(ctx.model)
        self.model_shapes, self.opt_shapes = expected_state_shapes(ctx.model, ctx.optimizer,
                                                                   spec.optimizer.name)
        self.dtypes = storage_dtypes(ctx.model, ctx.optimizer, spec.optimizer.name,
                                     spec.precision)
        self._recent: dict[int, dict[str, torch.Tensor]] = {}

    def load(self, t: int) -> dict[str, torch.Tensor]:
        hit = self._recent.get(t)
        if hit is not None:
            return hit
        tensors = self._load_checked(t)
        self._recent[t] = tensors
        while len(self._recent) > 2:
            self._recent.pop(next(iter(self._recent)))
        return tensors

    def _load_checked(self, t: int) -> dict[str, torch.Tensor]:
        tensors = self.proof.load_checkpoint(t)
        for k, v in tensors.items():
            want = self.model_shapes.get(k, self.opt_shapes.get(k))
            if want is None or tuple(v.shape) != want:
                raise ProofFormatError(f"checkpoint at step {t}: entry {k} does not fit the model")
            if v.dtype != self.dtypes.get(k, v.dtype):
                raise ProofFormatError(f"checkpoint at step {t}: entry {k} is {v.dtype}, a "
                                       f"{self.precision} proof stores {self.dtypes[k]}")
        missing = [k for k in self.model_shapes if k not in tensors]
        if missing:
            raise ProofFormatError(f"checkpoint at step {t}: missing {missing[:3]}")
        for n in self.names:
            if not torch.isfinite(tensors[n]).all():
                raise ProofFormatError(f"checkpoint at step {t}: {n} has NaN/Inf values")
        return tensors


def model_source_matches(spec) -> tuple[bool, str, str] | None:
    """(matches, proof digest, installed digest) for a user factory whose source the proof pins."""
    if not spec.model.source_sha256:
        return None
    from pol.registry import module_source_digest
    installed = module_source_digest(spec.model.arch.split(":")[0])
    return installed == spec.model.source_sha256, spec.model.source_sha256, installed

