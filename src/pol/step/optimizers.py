"""The optimizers pol can replay: ONE table row per optimizer.

Each row says everything pol knows about an optimizer: the torch class it builds, the spec fields it
reads, the state entries a checkpoint holds for each parameter (with their shape and the dtype they
are stored in by an fp16 proof), and how a user's torch optimizer is described as an
`OptimizerSpec` (refusing what replay cannot reproduce). Nothing else in pol lists optimizer names or
state keys: `make_optimizer`, `optimizer_spec_of`, the checkpoint state checks, the proof format's
storage dtypes and the verifier's dtype table all read these rows.

This module imports no torch at import time (`pol.proof.format` reads the storage dtypes as plain
strings): `make_optimizer` imports `torch.optim` when it is called, i.e. when the caller already has
torch tensors in hand.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pol.spec import OptimizerSpec

__all__ = ["MODEL_PREFIX", "OPTIM_PREFIX", "OPTIMIZERS", "OptimizerRow", "StateEntry",
           "FP16_STATE_STORAGE", "SCALER_PREFIX", "clear_fresh_state", "make_optimizer",
           "optimizer_spec_of", "optimizer_row", "state_keys", "storage_dtype_name"]

# checkpoint entry names: MODEL_PREFIX + a state_dict key; OPTIM_PREFIX + "<i>.<key>" for parameter i
# (in param_groups order) and one of its optimizer's state keys
MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."


@dataclass(frozen=True)
class StateEntry:
    """One per-parameter optimizer state entry.

    shape: "param" (the parameter's shape) or "scalar" (shape ());
    fp16_storage: the dtype an fp16 proof stores it in, or "" to keep its own dtype (a counter)."""

    shape: str
    fp16_storage: str


@dataclass(frozen=True)
class OptimizerRow:
    name: str  # the spec's name
    torch_class: str  # the class in torch.optim
    state: Mapping[str, StateEntry]  # per-parameter state entries, in the optimizer's own order
    kwargs: Callable[[OptimizerSpec], dict[str, Any]]  # torch constructor arguments from the spec
    describe: Callable[[dict[str, Any]], OptimizerSpec]  # spec from a (checked) param group
    # entries that keep torch's own device and dtype rules (Adam keeps `step` on the CPU, fp32)
    cpu_fp32: frozenset[str] = field(default_factory=frozenset)
    # the state keys a param group's settings make (None: all of `state`), e.g. RMSprop's
    # momentum_buffer only with momentum > 0, Adam's max_exp_avg_sq only with amsgrad
    active: Callable[[dict[str, Any]], tuple[str, ...]] | None = None

    def keys_for(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-parameter state keys of an optimizer with this param group's settings."""
        return tuple(self.state) if self.active is None else self.active(group)

    @property
    def moments(self) -> int:
        """Parameter-sized state tensors per parameter with the optimizer's default settings
        (what a snapshot buffer must hold; amsgrad, RMSprop's momentum or centering add one)."""
        return sum(self.state[k].shape == "param" for k in self.keys_for({}))


def _sgd_kwargs(s: OptimizerSpec) -> dict[str, Any]:
    return dict(lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay)


def _sgd_describe(g: dict[str, Any]) -> OptimizerSpec:
    if g.get("dampening", 0) != 0 or g.get("maximize") or g.get("nesterov") and not g["momentum"]:
        raise ValueError("SGD with dampening or maximize is not supported")
    return OptimizerSpec(name="sgd", lr=g["lr"], momentum=g["momentum"],
                         nesterov=bool(g["nesterov"]), weight_decay=g["weight_decay"])


def _adam_kwargs(s: OptimizerSpec) -> dict[str, Any]:
    return dict(lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay,
                amsgrad=s.amsgrad)


def _adam_describer(name: str) -> Callable[[dict[str, Any]], OptimizerSpec]:
    def describe(g: dict[str, Any]) -> OptimizerSpec:
        if g.get("maximize"):
            raise ValueError(f"{name} with maximize=True is not supported")
        if name == "adam" and g.get("decoupled_weight_decay"):
            raise ValueError("Adam with decoupled_weight_decay=True is not supported: use "
                             "torch.optim.AdamW")
        return OptimizerSpec(name=name, lr=g["lr"], betas=tuple(g["betas"]), eps=g["eps"],
                             weight_decay=g["weight_decay"], amsgrad=bool(g.get("amsgrad")))
    return describe


def _adam_active(g: dict[str, Any]) -> tuple[str, ...]:
    return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if g.get("amsgrad") else ())


def _rmsprop_kwargs(s: OptimizerSpec) -> dict[str, Any]:
    return dict(lr=s.lr, alpha=s.alpha, eps=s.eps, weight_decay=s.weight_decay,
                momentum=s.momentum, centered=s.centered)


def _rmsprop_describe(g: dict[str, Any]) -> OptimizerSpec:
    if g.get("maximize"):
        raise ValueError("RMSprop with maximize=True is not supported")
    return OptimizerSpec(name="rmsprop", lr=g["lr"], alpha=g["alpha"], eps=g["eps"],
                         weight_decay=g["weight_decay"], momentum=g["momentum"],
                         centered=bool(g["centered"]))


def _rmsprop_active(g: dict[str, Any]) -> tuple[str, ...]:
    return (("step", "square_avg") + (("momentum_buffer",) if g.get("momentum", 0) > 0 else ())
            + (("grad_avg",) if g.get("centered") else ()))


def _adagrad_kwargs(s: OptimizerSpec) -> dict[str, Any]:
    return dict(lr=s.lr, lr_decay=s.lr_decay, weight_decay=s.weight_decay,
                initial_accumulator_value=s.initial_accumulator_value, eps=s.eps)


def _adagrad_describe(g: dict[str, Any]) -> OptimizerSpec:
    if g.get("maximize"):
        raise ValueError("Adagrad with maximize=True is not supported")
    return OptimizerSpec(name="adagrad", lr=g["lr"], lr_decay=g["lr_decay"], eps=g["eps"],
                         weight_decay=g["weight_decay"],
                         initial_accumulator_value=g["initial_accumulator_value"])


# Adam's moments are stored in bfloat16 by an fp16 proof: the second moment (~grad², often < 1e-8)
# underflows in fp16, and a zeroed moment changes the replayed update completely (measured: an Adam
# proof stored in fp16 failed its own verification; in bf16 it passes).
# (the same holds for every average of squared gradients below: RMSprop's, Adagrad's sum)
_ADAM_STATE = {"step": StateEntry("scalar", ""), "exp_avg": StateEntry("param", "bfloat16"),
               "exp_avg_sq": StateEntry("param", "bfloat16"),
               "max_exp_avg_sq": StateEntry("param", "bfloat16")}  # amsgrad only
_CPU_STEP = frozenset({"step"})

OPTIMIZERS: dict[str, OptimizerRow] = {
    "sgd": OptimizerRow("sgd", "SGD", {"momentum_buffer": StateEntry("param", "float16")},
                        _sgd_kwargs, _sgd_describe),
    "adam": OptimizerRow("adam", "Adam", _ADAM_STATE, _adam_kwargs, _adam_describer("adam"),
                         cpu_fp32=_CPU_STEP, active=_adam_active),
    "adamw": OptimizerRow("adamw", "AdamW", _ADAM_STATE, _adam_kwargs, _adam_describer("adamw"),
                          cpu_fp32=_CPU_STEP, active=_adam_active),
    "rmsprop": OptimizerRow("rmsprop", "RMSprop",
                            {"step": StateEntry("scalar", ""),
                             "square_avg": StateEntry("param", "bfloat16"),
                             "momentum_buffer": StateEntry("param", "float16"),  # momentum > 0
                             "grad_avg": StateEntry("param", "bfloat16")},  # centered
                            _rmsprop_kwargs, _rmsprop_describe, cpu_fp32=_CPU_STEP,
                            active=_rmsprop_active),
    # torch's Adagrad fills its state when it is built (step 0, sum = initial_accumulator_value)
    # and again, identically, at its first step when the state is empty: pol's proofs start
    # from the empty state (`make_optimizer` and `pol.attach` clear the fresh state)
    "adagrad": OptimizerRow("adagrad", "Adagrad", {"step": StateEntry("scalar", ""),
                                                   "sum": StateEntry("param", "bfloat16")},
                            _adagrad_kwargs, _adagrad_describe, cpu_fp32=_CPU_STEP),
}

# fp16 storage of every optimizer state key any row knows ("" = kept as it is), by key name: a
# checkpoint entry is named `optim.<i>.<key>`, so the storage dtype follows from the name alone
# (a key shared by two rows, like momentum_buffer, has one storage dtype: checked below)
FP16_STATE_STORAGE: dict[str, str] = {k: e.fp16_storage for row in OPTIMIZERS.values()
                                      for k, e in row.state.items()}
assert all(FP16_STATE_STORAGE[k] == e.fp16_storage for row in OPTIMIZERS.values()
           for k, e in row.state.items()), "a state key with two fp16 storage dtypes"

# checkpoint entries of the fp16 autocast's GradScaler (`pol.step.state`): stored as they are
SCALER_PREFIX = "scaler."

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


def storage_dtype_name(name: str, dtype: str, precision: str) -> str:
    """The dtype (a torch dtype's name: "float16", "bfloat16", ...) that a proof of `precision`
    stores the checkpoint entry `name` of dtype `dtype` in. fp16 storage rounds float weights and
    moments, never integer counters or Adam's step; torch-free (the proof format reads it)."""
    if precision != "fp16" or dtype not in _FLOATS or name.startswith(SCALER_PREFIX):
        return dtype
    if name.startswith(OPTIM_PREFIX):
        key = name.rsplit(".", 1)[-1]
        return FP16_STATE_STORAGE.get(key, "float16") or dtype
    return "float16"


def optimizer_row(name: str) -> OptimizerRow:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})") from None


def state_keys(name: str) -> tuple[str, ...]:
    """The per-parameter optimizer state keys optimizer `name` may hold (anything else in a proof
    is rejected; which of them a given optimizer holds: `OptimizerRow.keys_for`)."""
    return tuple(optimizer_row(name).state)


def make_optimizer(spec: OptimizerSpec, params):  # -> torch.optim.Optimizer
    import torch.optim  # the caller holds torch tensors already: no import cost here

    row = optimizer_row(spec.name)
    if spec.group_sizes:  # groups that differ in lr (and weight decay), consecutive parameters
        params = list(params)
        if sum(spec.group_sizes) != len(params):
            raise ValueError(f"the spec's parameter groups hold {sum(spec.group_sizes)} "
                             f"parameters, the model has {len(params)}")
        groups, o = [], 0
        for i, (n, lr) in enumerate(zip(spec.group_sizes, spec.group_lrs)):
            groups.append({"params": params[o:o + n], "lr": lr})
            if spec.group_weight_decays:
                groups[-1]["weight_decay"] = spec.group_weight_decays[i]
            o += n
        params = groups
    opt = getattr(torch.optim, row.torch_class)(params, **row.kwargs(spec))
    clear_fresh_state(opt)
    return opt


def clear_fresh_state(opt) -> None:
    """Empty the state an optimizer fills when it is built (Adagrad: step 0 and sum =
    initial_accumulator_value), which it fills again identically at its first step; a proof
    starts from an empty optimizer state. Refuses state that is not that fresh state."""
    import torch

    if type(opt) is not getattr(sys.modules.get("torch.optim"), "Adagrad", None):
        return
    for g in opt.param_groups:
        for p in g["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            if not (set(st) == {"step", "sum"} and float(st["step"]) == 0
                    and bool((st["sum"] == g["initial_accumulator_value"]).all())):
                raise ValueError("the Adagrad optimizer holds state from earlier steps: a proof "
                                 "starts from a fresh optimizer")
    with torch.no_grad():
        opt.state.clear()


# torch optimizer options that change how a step is computed (a fused or foreach kernel, a
# graph-capturable or differentiable step): replay builds the optimizer with torch's defaults, so an
# optimizer that sets one of them is refused rather than replayed with different arithmetic
_KERNEL_OPTIONS = ("fused", "foreach", "capturable", "differentiable")
_GROUP_KEYS = ("momentum", "betas", "eps", "nesterov", "dampening", "amsgrad", "maximize",
               "decoupled_weight_decay", "alpha", "centered", "lr_decay",
               "initial_accumulator_value") + _KERNEL_OPTIONS


def optimizer_spec_of(opt) -> OptimizerSpec:
    """Describe a user's optimizer so that the verifier can rebuild it; refuse what replay can't.
    The spec's lr is the groups' `initial_lr` where an lr scheduler set one (a warm-up may start
    the live lr at 0), else the live lr."""
    g = opt.param_groups[0]
    for other in opt.param_groups[1:]:
        for key in _GROUP_KEYS:
            if other.get(key) != g.get(key):
                raise ValueError(f"parameter groups differ in {key!r}; pol supports per-group "
                                 "lr and weight_decay only")
    for key in _KERNEL_OPTIONS:
        if g.get(key) not in (None, False):
            raise ValueError(f"optimizer option {key}={g[key]!r} is not supported (replay builds "
                             f"the optimizer with torch's default kernels: leave {key} unset)")
    if "initial_lr" in g and not isinstance(g["initial_lr"], bool) and g["initial_lr"] > 0:
        g = {**g, "lr": g["initial_lr"]}
    optim = sys.modules.get("torch.optim")  # loaded: `opt` is a torch optimizer
    for row in OPTIMIZERS.values():  # the exact torch class, not a subclass (it may change step)
        if type(opt) is getattr(optim, row.torch_class, None):
            spec = row.describe(g)
            if len(opt.param_groups) > 1:
                import dataclasses

                def base(grp) -> float:
                    il = grp.get("initial_lr")
                    return float(il if isinstance(il, (int, float)) and il > 0 else grp["lr"])
                wds = tuple(float(grp["weight_decay"]) for grp in opt.param_groups)
                spec = dataclasses.replace(
                    spec, group_sizes=tuple(len(grp["params"]) for grp in opt.param_groups),
                    group_lrs=tuple(base(grp) for grp in opt.param_groups),
                    group_weight_decays=wds if len(set(wds)) > 1 else ())
            return spec
    names = ", ".join(r.torch_class for r in OPTIMIZERS.values())
    raise ValueError(f"optimizer {type(opt).__name__} is not supported ({names})")
