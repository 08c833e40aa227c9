"""Initialization strategies, applied and checked from ONE table.

The prover draws W_0 with `apply_init`; the verifier KS-tests the recorded W_0 against
`expected_distributions`. Both walk the model through the same `_plan` function, which maps every
parameter to an `InitDist`; `apply_init` merely samples those distributions. So the two sides can
never disagree about what a parameter's initial distribution should be.

W_0 from a run's seed is drawn in one place, `draw_init` (the step context, the Recorder's
`init="from-seed"` and the verifier's init regeneration all go through it), and `seeded_init_mismatch`
says whether a model holds exactly that W_0 (the Recorder's check before it records a model's own
weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pol.errors import ConfigError
from pol.spec import ModelSpec
from pol.step.randomness import init_generator

__all__ = ["INIT_STRATEGIES", "InitDist", "apply_init", "expected_distributions", "draw_init",
           "seeded_init_mismatch"]

INIT_STRATEGIES = ("torch-default", "kaiming-uniform", "kaiming-normal", "xavier-uniform",
                   "xavier-normal", "gpt2-normal")
GPT2_STD = 0.02  # GPT-2 / nanoGPT: every Linear and Embedding weight ~ N(0, 0.02), biases 0

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
_RELU_GAIN = math.sqrt(2.0)


@dataclass(frozen=True)
class InitDist:
    """Distribution of one parameter's initial values.

    uniform: U[a, b]; normal: N(mean=a, std=b); const: every element equals a (b unused, 0).
    """

    kind: Literal["uniform", "normal", "const"]
    a: float
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "normal", "const"):
            raise ValueError(f"unknown distribution kind {self.kind!r}")
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError("distribution parameters must be finite")
        if self.kind == "uniform" and not self.a < self.b:
            raise ValueError(f"uniform needs a < b, got [{self.a}, {self.b}]")
        if self.kind == "normal" and not self.b > 0:
            raise ValueError(f"normal needs std > 0, got {self.b}")

    def cdf(self):  # -> scipy.stats frozen distribution | None
        """Frozen scipy distribution for `scipy.stats.kstest`; None for const (check exactly)."""
        from scipy import stats  # imported lazily: only the verifier's KS check needs scipy

        if self.kind == "uniform":
            return stats.uniform(loc=self.a, scale=self.b - self.a)
        if self.kind == "normal":
            return stats.norm(loc=self.a, scale=self.b)
        return None

    def sample_(self, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Overwrite `tensor` in place with draws from this distribution.

        Values are drawn on the generator's device in the tensor's dtype and then copied, so a
        CPU generator yields the same W_0 whatever device the model lives on.
        """
        with torch.no_grad():
            if self.kind == "const":
                tensor.fill_(self.a)
                return
            buf = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
            if self.kind == "uniform":
                buf.uniform_(self.a, self.b, generator=generator)
            else:
                buf.normal_(self.a, self.b, generator=generator)
            tensor.copy_(buf)


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    """fan_in / fan_out exactly as torch.nn.init computes them ([out, in, *kernel])."""
    if weight.dim() < 2:
        raise ValueError("fan in/out need a weight with at least 2 dimensions")
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _sym_uniform(bound: float) -> InitDist:
    # A zero bound (empty fan) degenerates to the constant 0, as torch's own init does.
    return InitDist("uniform", -bound, bound) if bound > 0 else InitDist("const", 0.0)


def _normal(std: float) -> InitDist:
    return InitDist("normal", 0.0, std) if std > 0 else InitDist("const", 0.0)


def _weight_dist(weight: torch.Tensor, strategy: str) -> InitDist:
    # Bounds are computed with the very expressions torch.nn.init uses, so on CPU the draws are
    # bitwise identical to torch's own initializers fed the same generator.
    fan_in, fan_out = _fans(weight)
    if strategy == "gpt2-normal":
        return _normal(GPT2_STD)
    if strategy in ("torch-default", "kaiming-uniform"):
        # torch-default is kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3), bound 1/sqrt(fan_in)
        gain = math.sqrt(2.0 / (1 + 5)) if strategy == "torch-default" else _RELU_GAIN
        return _sym_uniform(math.sqrt(3.0) * (gain / math.sqrt(fan_in)) if fan_in > 0 else 0.0)
    if strategy == "kaiming-normal":
        return _normal(_RELU_GAIN / math.sqrt(fan_out) if fan_out > 0 else 0.0)
    total = fan_in + fan_out
    std = 1.0 * math.sqrt(2.0 / float(total)) if total > 0 else 0.0
    if strategy == "xavier-uniform":
        return _sym_uniform(math.sqrt(3.0) * std)
    if strategy == "xavier-normal":
        return _normal(std)
    raise AssertionError(strategy)  # strategies are validated before we get here


def _module_rules(module: nn.Module, strategy: str) -> dict[str, InitDist] | None:
    """THE table: initial distribution of each direct parameter of a supported module type, or
    None if the module type is not covered."""
    if isinstance(module, (nn.Linear, *_CONV)):
        w_dist = _weight_dist(module.weight, strategy)
        if strategy == "torch-default":
            fan_in, _ = _fans(module.weight)
            b_dist = _sym_uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
        else:
            b_dist = InitDist("const", 0.0)
        return {"weight": w_dist, "bias": b_dist}
    if isinstance(module, _NORM):
        return {"weight": InitDist("const", 1.0), "bias": InitDist("const", 0.0)}
    if isinstance(module, nn.Embedding):  # torch's default is N(0, 1)
        return {"weight": _normal(GPT2_STD if strategy == "gpt2-normal" else 1.0)}
    return None


def _plan(model: nn.Module, strategy: str) -> list[tuple[str, nn.Module, nn.Parameter, InitDist]]:
    """(name, module, parameter, distribution) for every parameter, in `named_parameters` order
    and with the same names (shared parameters appear once, under their first name)."""
    if strategy not in INIT_STRATEGIES:
        raise ValueError(f"unknown init strategy {strategy!r}; known: {', '.join(INIT_STRATEGIES)}")
    plan: list[tuple[str, nn.Module, nn.Parameter, InitDist]] = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        direct = [(n, p) for n, p in module.named_parameters(recurse=False) if p is not None]
        if not direct:
            continue  # containers and parameter-free layers need no rule
        rules = _module_rules(module, strategy)
        if rules is None:
            raise ValueError(
                f"init strategy {strategy!r} does not cover module {mod_name or '<root>'!r} of "
                f"type {type(module).__module__}.{type(module).__qualname__}, which has "
                f"parameters {', '.join(n for n, _ in direct)}"
            )
        for pname, param in direct:
            if pname not in rules:
                raise ValueError(
                    f"init strategy {strategy!r} has no rule for parameter {pname!r} of module "
                    f"{mod_name or '<root>'!r} ({type(module).__qualname__})"
                )
            if id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{mod_name}.{pname}" if mod_name else pname
            plan.append((full, module, param, rules[pname]))
    return plan


def expected_distributions(model: nn.Module, strategy: str) -> dict[str, InitDist]:
    """Initial distribution of every parameter, keyed by its `model.named_parameters()` name."""
    dists = {name: dist for name, _, _, dist in _plan(model, strategy)}
    missing = [n for n, _ in model.named_parameters() if n not in dists]
    if missing:  # cannot happen with the walk above; guards the key contract for the verifier
        raise ValueError(f"no initial distribution for parameters {', '.join(missing)}")
    return dists


def apply_init(model: nn.Module, strategy: str, generator: torch.Generator) -> None:
    """Re-initialize every parameter from the table, all randomness from `generator`.

    The whole plan is built (and validated) before anything is drawn, so an unsupported model is
    rejected without being half-initialized. BatchNorm running statistics are reset too, so W_0
    (including buffers) is a pure function of (architecture, strategy, generator state).
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError("apply_init needs a torch.Generator (never the global RNG)")
    plan = _plan(model, strategy)
    for _, _, param, dist in plan:
        dist.sample_(param, generator)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.reset_running_stats()


def draw_init(model: nn.Module, ms: ModelSpec, seed: int) -> None:
    """Draw W_0 from the run's seed with the spec's strategy, in place (the one place pol does):
    a pure function of (architecture, strategy, seed), the same on every device. A model of
    strategy "none" keeps its constructor's weights. ConfigError if the strategy does not cover the
    model."""
    if ms.init == "none":
        return
    try:
        apply_init(model, ms.init, init_generator(seed))
    except ValueError as e:
        raise ConfigError(f"cannot initialize the model with {ms.init!r}: {e}") from None


def seeded_init_mismatch(model: nn.Module, reference: nn.Module, ms: ModelSpec,
                         seed: int) -> str | None:
    """The name of the first parameter of `model` that is not bitwise the W_0 `draw_init` gives
    (drawn into `reference`, a freshly built model of the same architecture, which this changes),
    or None when `model` holds exactly the seeded init. The parameters are compared, as the
    verifier's init regeneration compares them."""
    draw_init(reference, ms, seed)
    mine = dict(reference.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            q = mine.get(name)
            if q is None or q.shape != p.shape or not torch.equal(p.detach().cpu(), q.to(p.dtype)):
                return name
    return None
