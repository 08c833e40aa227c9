"""The one training step, shared by the prover and the verifier's replay.

Everything that changes a step is an input here or in the recorded state: the batch (raw samples
gathered by index), the learning rate of every parameter group, the step's random seed (dropout and
augmentation), the model and optimizer state. The verifier never re-implements training; it calls
`update()` with what the proof recorded.

Randomness: every step draws its randomness from a seed derived from the run's seed and the global
step number (`step_seed`). So the RNG state at any checkpoint is a function of (seed, t), replay can
start at any checkpoint, and a prover cannot pick favourable randomness after the fact once the seed
is committed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from pol.errors import ProofFormatError
from pol.spec import OptimizerSpec, TrainingSpec

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."

# Optimizer state keys per optimizer (anything else in a proof is rejected).
_OPTIM_KEYS = {"sgd": ("momentum_buffer",), "adam": ("step", "exp_avg", "exp_avg_sq"),
               "adamw": ("step", "exp_avg", "exp_avg_sq")}


def derive_seed(seed: int, purpose: str, t: int = 0) -> int:
    """A 63-bit seed for `purpose` at step `t`, derived from the run seed by SHA-256."""
    h = hashlib.sha256(f"pol.seed.v1|{seed}|{purpose}|{t}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def epoch_order(seed: int, epoch: int, n: int) -> "np.ndarray":
    """The data order of an epoch, derived from the committed seed (a verifier can re-derive it)."""
    import numpy as np
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "order", epoch)))
    return rng.permutation(n)


def make_optimizer(spec: OptimizerSpec, params) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


def optimizer_spec_of(opt: torch.optim.Optimizer) -> OptimizerSpec:
    """Describe a user's optimizer so that the verifier can rebuild it; refuse what replay can't."""
    g = opt.param_groups[0]
    for other in opt.param_groups[1:]:
        for key in ("momentum", "weight_decay", "betas", "eps", "nesterov"):
            if other.get(key) != g.get(key):
                raise ValueError(f"parameter groups differ in {key!r}; pol supports per-group lr only")
    if type(opt) is torch.optim.SGD:
        if g.get("dampening", 0) != 0 or g.get("maximize") or g.get("nesterov") and not g["momentum"]:
            raise ValueError("SGD with dampening or maximize is not supported")
        return OptimizerSpec(name="sgd", lr=g["lr"], momentum=g["momentum"],
                             nesterov=bool(g["nesterov"]), weight_decay=g["weight_decay"])
    if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
        if g.get("amsgrad") or g.get("maximize"):
            raise ValueError("Adam with amsgrad or maximize is not supported")
        name = "adam" if type(opt) is torch.optim.Adam else "adamw"
        return OptimizerSpec(name=name, lr=g["lr"], betas=tuple(g["betas"]), eps=g["eps"],
                             weight_decay=g["weight_decay"])
    raise ValueError(f"optimizer {type(opt).__name__} is not supported (SGD, Adam, AdamW)")


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "cross_entropy":
        return nn.functional.cross_entropy
    if name == "mse":
        return nn.functional.mse_loss
    if name == "lm_cross_entropy":  # next-token loss: logits [B, T, V], targets [B, T]
        return lambda logits, y: nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    raise ValueError(f"unknown loss {name!r}")


@dataclass
class StepContext:
    """A model with its optimizer and the fixed parts of a step (loss, data preparation)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    prepare: Callable[[torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None
    seed: int
    device: torch.device
    # where augmentation draws its random numbers: CUDA's Philox and the CPU's Mersenne Twister
    # give different numbers for one seed, so a GPU proof replayed on a CPU would augment
    # differently. New proofs draw on the CPU everywhere (a few integers a step); None = on
    # `device` (proofs made before spec.augment_rng existed)
    rng_device: torch.device | None = None

    def generator(self, t: int) -> torch.Generator:
        g = torch.Generator(device=self.rng_device or self.device)
        g.manual_seed(derive_seed(self.seed, "augment", t))
        return g


def seed_step(seed: int, t: int) -> None:
    """Seed the global RNGs (dropout) for step t. Used by `update()` and by the Recorder for loops
    that run their own forward pass, so both draw identical dropout masks."""
    s = derive_seed(seed, "step", t)
    # torch.manual_seed also records a stack trace for lazy CUDA seeding (about 1 ms a call);
    # seeding the generators directly is what it does, minus that.
    torch.default_generator.manual_seed(s)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(s)


def update(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, lrs: Sequence[float],
           t: int) -> torch.Tensor:
    """One SGD-family step at global step `t` on the raw batch (x, y). Returns the loss (detached,
    on device, not synchronized)."""
    for group, lr in zip(ctx.optimizer.param_groups, lrs):
        group["lr"] = float(lr)
    seed_step(ctx.seed, t)
    inputs = ctx.prepare(x.to(ctx.device, non_blocking=True))
    if ctx.augment is not None:
        inputs = ctx.augment(inputs, ctx.generator(t))
    targets = y.to(ctx.device, non_blocking=True)
    ctx.model.train()
    ctx.optimizer.zero_grad(set_to_none=True)
    loss = ctx.loss_fn(ctx.model(inputs), targets)
    loss.backward()
    ctx.optimizer.step()
    return loss.detach()


# ----- state <-> flat tensor dict (what a checkpoint stores) -----

def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The full replay state as a flat name -> tensor dict (no copies made here)."""
    out = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    i = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, val in optimizer.state.get(p, {}).items():
                if isinstance(val, torch.Tensor):
                    out[f"{OPTIM_PREFIX}{i}.{key}"] = val
            i += 1
    return out


def expected_state_shapes(model: nn.Module, optimizer: torch.optim.Optimizer,
                          opt_name: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple]]:
    """(required model entries, optional optimizer entries) with their shapes."""
    model_shapes = {MODEL_PREFIX + k: tuple(v.shape) for k, v in model.state_dict().items()}
    opt_shapes: dict[str, tuple] = {}
    i = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key in _OPTIM_KEYS[opt_name]:
                opt_shapes[f"{OPTIM_PREFIX}{i}.{key}"] = () if key == "step" else tuple(p.shape)
            i += 1
    return model_shapes, opt_shapes


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, opt_name: str,
               tensors: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's tensors after checking names and shapes exactly; optimizer state must be
    either complete (every parameter, every key) or absent (before the first step)."""
    model_shapes, opt_shapes = expected_state_shapes(model, optimizer, opt_name)
    missing = [k for k in model_shapes if k not in tensors]
    extra = [k for k in tensors if k not in model_shapes and k not in opt_shapes]
    if missing or extra:
        raise ProofFormatError(f"checkpoint does not fit the model: missing {missing[:3]}, "
                               f"unexpected {extra[:3]}")
    for k, shape in {**model_shapes, **opt_shapes}.items():
        if k in tensors and tuple(tensors[k].shape) != shape:
            raise ProofFormatError(f"checkpoint entry {k} has shape {tuple(tensors[k].shape)}, "
                                   f"model needs {shape}")
    present = [k for k in opt_shapes if k in tensors]
    # SGD without momentum keeps no state at all.
    if present and len(present) != len(opt_shapes):
        raise ProofFormatError("checkpoint has partial optimizer state")
    sd = model.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            src = tensors[MODEL_PREFIX + k]
            if src.is_floating_point() and not torch.isfinite(src).all():
                raise ProofFormatError(f"checkpoint entry {MODEL_PREFIX + k} has NaN/Inf values")
            v.copy_(src.to(v.dtype))
    optimizer.state.clear()
    if present:
        i = 0
        for group in optimizer.param_groups:
            for p in group["params"]:
                st = {}
                for key in _OPTIM_KEYS[opt_name]:
                    src = tensors[f"{OPTIM_PREFIX}{i}.{key}"]
                    if not torch.isfinite(src.float()).all():
                        raise ProofFormatError(f"optimizer state {i}.{key} has NaN/Inf values")
                    if key == "step":
                        st[key] = src.to(torch.float32).clone()  # Adam keeps step on CPU
                    else:
                        st[key] = src.to(device=p.device, dtype=p.dtype).clone()
                optimizer.state[p] = st
                i += 1


def spec_device(spec: TrainingSpec) -> torch.device:
    return torch.device(spec.device)
