"""Rebuilding a model, its data pipeline and its loss from a spec, without trusting the proof.

A spec names its model either by a built-in architecture name or by a `module:callable` factory.
A proof can never make the verifier import arbitrary code: a factory's module must be in the set the
verifier trusts (`--trust-module`), and its source digest recorded by the prover is compared with
the installed one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from pol.errors import ConfigError, ProofFormatError, UntrustedFactoryError
from pol.spec import ModelSpec, TrainingSpec

if TYPE_CHECKING:  # build_context imports pol.step lazily (an import cycle): annotation only
    from pol.step import StepContext

_FACTORY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _trusted(module: str, trusted: Iterable[str]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in trusted)


def module_source_digest(module_name: str) -> str:
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    with open(spec.origin, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_model(ms: ModelSpec, trusted_modules: Iterable[str] = ()) -> nn.Module:
    """Instantiate the spec's architecture (no init applied beyond the constructor's own)."""
    from pol import models

    if ":" not in ms.arch:
        try:
            return models.build_model(ms.arch, **ms.kwargs)
        except ValueError as e:
            raise ProofFormatError(f"model: {e}") from None
    if not _FACTORY_RE.match(ms.arch):
        raise ProofFormatError(f"model factory {ms.arch!r} is not of the form module:callable")
    module_name, attr = ms.arch.split(":")
    if not _trusted(module_name, trusted_modules):
        raise UntrustedFactoryError(
            f"the proof's model comes from {ms.arch!r}; pol imports user code only when told to: "
            f"pass --trust-module {module_name.split('.')[0]} if you trust it")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ProofFormatError(f"cannot import model factory {ms.arch}: {e}") from None
    try:
        model = fn(**ms.kwargs)
    except TypeError as e:
        raise ProofFormatError(f"model factory {ms.arch} rejected its arguments: {e}") from None
    if not isinstance(model, nn.Module):
        raise ProofFormatError(f"model factory {ms.arch} did not return a torch.nn.Module")
    return model


def model_spec_for(arch: str, kwargs: dict | None = None, init: str = "torch-default") -> ModelSpec:
    """A ModelSpec for a built-in arch or a factory, with the factory's source digest recorded."""
    source = ""
    if ":" in arch:
        if not _FACTORY_RE.match(arch):
            raise ConfigError(f"model factory {arch!r} is not of the form module:callable")
        source = module_source_digest(arch.split(":")[0])
    return ModelSpec(arch=arch, kwargs=dict(kwargs or {}), init=init, source_sha256=source)


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype
                                        for k in sa)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available")
    return dev


def build_context(spec: TrainingSpec, device: torch.device, trusted_modules=()) -> StepContext:
    """Model (initialized from the run's seed), optimizer and step pieces for a spec. Shared by the
    trainer and the verifier, so both build exactly the same objects."""
    from pol.datasets import AUGMENT, PREPARE
    from pol.init import apply_init
    from pol.step import StepContext, derive_seed, make_loss, make_optimizer

    model = build_model(spec.model, trusted_modules)
    if spec.model.init != "none":
        g = torch.Generator()
        g.manual_seed(derive_seed(spec.seed, "init"))
        try:
            apply_init(model, spec.model.init, g)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    model.to(device)
    if spec.data.prepare not in PREPARE:
        raise ConfigError(f"unknown data preparation {spec.data.prepare!r}")
    if spec.data.augment != "none" and spec.data.augment not in AUGMENT:
        raise ConfigError(f"unknown augmentation {spec.data.augment!r}")
    return StepContext(model=model, optimizer=make_optimizer(spec.optimizer, model.parameters()),
                       loss_fn=make_loss(spec.loss), prepare=PREPARE[spec.data.prepare],
                       augment=None if spec.data.augment == "none" else AUGMENT[spec.data.augment],
                       seed=spec.seed, device=device,
                       rng_device=torch.device("cpu") if spec.augment_rng == "cpu" else None)
