"""TrainingSpec: everything a verifier needs to re-execute a training step.

The spec travels inside the proof (manifest.json), so the verifier never takes a hyperparameter from
its own command line (the reference code did, and Fang et al. exploit exactly that). It is a tree of
frozen dataclasses with a strict JSON round-trip: `from_json` validates every field's type and range,
because a spec read from a proof comes from a possibly hostile party.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pol.errors import ProofFormatError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
AUTOCAST = ("", "bf16", "fp16")  # StepSpec.autocast: "" = off
TF32_MODES = ("", "off", "conv", "matmul", "on")
SCHEDULES = ("constant", "multistep", "cosine", "recorded")  # recorded: no declared schedule
LOSSES = ("cross_entropy", "mse", "lm_cross_entropy", "causal_lm_cross_entropy")
PRECISIONS = ("fp32", "fp16")
# exact mode's rounding-log window (StepSpec.exact_window), in float32 ulps: the default and bounds
EXACT_WINDOW = 2.0 ** -12
EXACT_WINDOW_MIN, EXACT_WINDOW_MAX = 2.0 ** -24, 2.0 ** -4
# ... and its gradient noise bound (StepSpec.exact_noise), a fraction of each gradient tensor's
# largest value: the default of new proofs, and the range (0: none, proofs made before it existed)
EXACT_NOISE = 2.0 ** -40
EXACT_NOISE_MIN, EXACT_NOISE_MAX = 2.0 ** -52, 2.0 ** -24
# ... and its round-to-even zone (StepSpec.exact_zone), in float32 ulps from a tie: the default of
# new proofs and the bounds of a power of two (0: none, proofs made before it existed)
EXACT_ZONE = 2.0 ** -8
EXACT_ZONE_MIN, EXACT_ZONE_MAX = 2.0 ** -16, 2.0 ** -3
# ... and its gradient grid (StepSpec.exact_grid), log2 of the grid spacing's ratio to the noise
# bound: the default of new proofs, the value of proofs made before it existed (never written),
# and the bounds
EXACT_GRID = 8
EXACT_GRID_LEGACY = 4
EXACT_GRID_MIN, EXACT_GRID_MAX = 2, 12

# JSON scalars that may appear in factory keyword arguments (nested lists/dicts of these too).
_JSON_SCALARS = (str, int, float, bool, type(None))


def _check_json_value(value: Any, where: str, depth: int = 0) -> None:
    if depth > 8:
        raise ProofFormatError(f"{where}: nesting too deep")
    if isinstance(value, _JSON_SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise ProofFormatError(f"{where}: non-finite number")
        if isinstance(value, str) and len(value) > 4096:
            raise ProofFormatError(f"{where}: string too long")
        return
    if isinstance(value, list):
        if len(value) > 4096:
            raise ProofFormatError(f"{where}: list too long")
        for i, v in enumerate(value):
            _check_json_value(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > 256:
            raise ProofFormatError(f"{where}: too many keys")
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProofFormatError(f"{where}: non-string key")
            _check_json_value(v, f"{where}.{k}", depth + 1)
        return
    raise ProofFormatError(f"{where}: unsupported value of type {type(value).__name__}")


def _num(d: dict, key: str, where: str, *, lo: float | None = None, hi: float | None = None,
         integer: bool = False, optional: bool = False, default: Any = None) -> Any:
    if key not in d:
        if optional:
            return default
        raise ProofFormatError(f"{where}: missing field {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProofFormatError(f"{where}.{key}: expected a number, got {type(v).__name__}")
    if integer and not isinstance(v, int):
        raise ProofFormatError(f"{where}.{key}: expected an integer")
    if not math.isfinite(v):
        raise ProofFormatError(f"{where}.{key}: not finite")
    if lo is not None and v < lo:
        raise ProofFormatError(f"{where}.{key}: {v} below minimum {lo}")
    if hi is not None and v > hi:
        raise ProofFormatError(f"{where}.{key}: {v} above maximum {hi}")
    return v


def _str(d: dict, key: str, where: str, *, choices: tuple[str, ...] | None = None,
         optional: bool = False, default: str | None = None, maxlen: int = 256) -> Any:
    if key not in d:
        if optional:
            return default
        raise ProofFormatError(f"{where}: missing field {key!r}")
    v = d[key]
    if v is None and optional:
        return default
    if not isinstance(v, str) or len(v) > maxlen:
        raise ProofFormatError(f"{where}.{key}: expected a string")
    if choices is not None and v not in choices:
        raise ProofFormatError(f"{where}.{key}: {v!r} is not one of {', '.join(choices)}")
    return v


def _bool(d: dict, key: str, where: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ProofFormatError(f"{where}.{key}: expected true/false")
    return v


def _list(d: dict, key: str, where: str, maxlen: int = 4096) -> list:
    v = d.get(key, [])
    if not isinstance(v, list) or len(v) > maxlen:
        raise ProofFormatError(f"{where}.{key}: expected a list of at most {maxlen} entries")
    return v


def _int_list(d: dict, key: str, where: str) -> tuple[int, ...]:
    v = _list(d, key, where)
    if not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 2**31 for x in v):
        raise ProofFormatError(f"{where}.{key}: expected positive integers")
    return tuple(v)


def _obj(d: Any, where: str) -> dict:
    if not isinstance(d, dict):
        raise ProofFormatError(f"{where}: expected an object")
    return d


def _kwargs(d: dict, key: str, where: str) -> dict:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise ProofFormatError(f"{where}.{key}: expected an object")
    _check_json_value(v, f"{where}.{key}")
    return v


def _no_extra(d: dict, cls: type, where: str) -> None:
    allowed = {f.name for f in fields(cls)}
    extra = set(d) - allowed
    if extra:
        raise ProofFormatError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture by registry name (or `module:callable` factory) plus JSON keyword arguments."""

    arch: str
    kwargs: dict = field(default_factory=dict)
    init: str = "torch-default"
    source_sha256: str = ""  # digest of a factory's module source (user models only)

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec.model") -> "ModelSpec":
        d = _obj(d, where)
        _no_extra(d, cls, where)
        return cls(arch=_str(d, "arch", where), kwargs=_kwargs(d, "kwargs", where),
                   init=_str(d, "init", where, optional=True, default="torch-default"),
                   source_sha256=_str(d, "source_sha256", where, optional=True, default=""))


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # several parameter groups that differ only in lr: the i-th group holds the next
    # group_sizes[i] parameters in model.parameters() order, with base lr group_lrs[i] (empty:
    # one group, base lr `lr`)
    group_sizes: tuple[int, ...] = ()
    group_lrs: tuple[float, ...] = ()
    # groups that also differ in weight decay (no decay on biases and norms): the i-th group's
    # weight_decay (empty: every group has `weight_decay`)
    group_weight_decays: tuple[float, ...] = ()
    # Adam/AdamW's amsgrad; RMSprop's alpha (smoothing of the squared gradients) and centered;
    # Adagrad's lr_decay and initial_accumulator_value. Each is written to the JSON only when it
    # differs from its default (proofs made before they existed keep their bytes), and only for
    # the optimizer that reads it
    amsgrad: bool = False
    alpha: float = 0.99
    centered: bool = False
    lr_decay: float = 0.0
    initial_accumulator_value: float = 0.0

    def __post_init__(self) -> None:
        if len(self.group_sizes) != len(self.group_lrs) or len(self.group_sizes) == 1:
            raise ValueError("group_sizes and group_lrs: one entry per group, two groups or more")
        if any(n < 1 for n in self.group_sizes) or any(not 0 < x < 1e3 for x in self.group_lrs):
            raise ValueError("group_sizes must be positive and group_lrs in (0, 1000)")
        if self.group_weight_decays and (len(self.group_weight_decays) != len(self.group_sizes)
                                         or any(not 0 <= x <= 10
                                                for x in self.group_weight_decays)):
            raise ValueError("group_weight_decays: one entry in [0, 10] per group")
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")
        for key, users in _OPTIONAL_OPTIMIZER_FIELDS.items():
            if getattr(self, key) != _OPTIMIZER_DEFAULTS[key] and self.name not in users:
                raise ValueError(f"{key} is an option of {' and '.join(users)}, not of "
                                 f"{self.name}")
        if not 0 <= self.alpha < 1 or self.lr_decay < 0 or self.initial_accumulator_value < 0:
            raise ValueError("alpha must be in [0, 1), lr_decay and initial_accumulator_value "
                             "non-negative")
        if self.name == "rmsprop" and not (0 <= self.momentum <= 1):
            raise ValueError("RMSprop momentum must be in [0, 1]")
        if self.nesterov and (self.momentum <= 0 or self.name != "sgd"):
            raise ValueError("nesterov needs SGD with momentum > 0")
        if not (0 < self.lr < 1e3):
            raise ValueError(f"learning rate {self.lr} out of range (0, 1000)")

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec.optimizer") -> "OptimizerSpec":
        d = _obj(d, where)
        _no_extra(d, cls, where)
        betas = d.get("betas", [0.9, 0.999])
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                           for b in betas)):
            raise ProofFormatError(f"{where}.betas: expected two numbers in [0, 1)")
        try:
            spec = cls(name=_str(d, "name", where, choices=OPTIMIZERS),
                       lr=_num(d, "lr", where, lo=0, hi=1e3),
                       momentum=_num(d, "momentum", where, lo=0, hi=1, optional=True, default=0.0),
                       nesterov=_bool(d, "nesterov", where, False),
                       weight_decay=_num(d, "weight_decay", where, lo=0, hi=10, optional=True,
                                         default=0.0),
                       betas=(float(betas[0]), float(betas[1])),
                       eps=_num(d, "eps", where, lo=0, hi=1, optional=True, default=1e-8),
                       group_sizes=_int_list(d, "group_sizes", where),
                       group_lrs=tuple(float(_num({"v": v}, "v", f"{where}.group_lrs", lo=0,
                                                  hi=1e3)) for v in _list(d, "group_lrs", where)),
                       group_weight_decays=tuple(
                           float(_num({"v": v}, "v", f"{where}.group_weight_decays", lo=0,
                                      hi=10)) for v in _list(d, "group_weight_decays", where)),
                       amsgrad=_bool(d, "amsgrad", where, False),
                       alpha=_num(d, "alpha", where, lo=0, hi=1, optional=True, default=0.99),
                       centered=_bool(d, "centered", where, False),
                       lr_decay=_num(d, "lr_decay", where, lo=0, hi=1e3, optional=True,
                                     default=0.0),
                       initial_accumulator_value=_num(d, "initial_accumulator_value", where,
                                                      lo=0, hi=1e6, optional=True, default=0.0))
        except ValueError as e:
            raise ProofFormatError(f"{where}: {e}") from None
        for key, default in _OPTIMIZER_DEFAULTS.items():  # one spelling: defaults left out
            if key in d and d[key] == default:
                raise ProofFormatError(f"{where}.{key}: holds its default (leave it out)")
        return spec

    def to_dict(self) -> dict:
        """As the JSON holds it: the optional fields only where they differ from the defaults."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        for key in ("group_sizes", "group_lrs", "group_weight_decays"):
            if d[key]:
                d[key] = list(d[key])
            else:  # one group: as in proofs made before groups were recorded
                del d[key]
        for key, default in _OPTIMIZER_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        return d


# optimizer fields written only when they differ from their defaults, and who reads each
_OPTIONAL_OPTIMIZER_FIELDS = {"amsgrad": ("adam", "adamw"), "alpha": ("rmsprop",),
                              "centered": ("rmsprop",), "lr_decay": ("adagrad",),
                              "initial_accumulator_value": ("adagrad",)}
_OPTIMIZER_DEFAULTS = {f.name: f.default for f in fields(OptimizerSpec)
                       if f.name in _OPTIONAL_OPTIMIZER_FIELDS}


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule over global steps. The lr of every step is also recorded in the proof;
    the schedule lets a verifier check those recorded values for plausibility."""

    name: str = "constant"
    milestones: tuple[int, ...] = ()  # steps at which lr is multiplied by gamma (multistep)
    gamma: float = 0.1
    total_steps: int = 0  # cosine: decay horizon (0 = training length)
    min_lr: float = 0.0
    # linear warm-up: step t's lr is scaled by (t + 1) / warmup_steps while t < warmup_steps. It
    # damps the growth of tiny differences in the first steps (a 1e-6 perturbation of W_0 grows
    # 88,000× in 10 steps at lr 0.1, 5,200× with warm-up), which sets cross-hardware replay error
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; known: {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be non-negative")

    def lr_at(self, base_lr: float, step: int, total_steps: int) -> float:
        lr = self._lr_at(base_lr, step, total_steps)
        if self.warmup_steps and step < self.warmup_steps and self.name != "recorded":
            lr *= (step + 1) / self.warmup_steps
        return lr

    def _lr_at(self, base_lr: float, step: int, total_steps: int) -> float:
        if self.name in ("constant", "recorded"):
            return base_lr
        if self.name == "multistep":
            n = sum(1 for m in self.milestones if step >= m)
            return base_lr * (self.gamma ** n)
        horizon = self.total_steps or total_steps
        frac = min(step, horizon) / max(horizon, 1)
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec.schedule") -> "ScheduleSpec":
        d = _obj(d, where)
        _no_extra(d, cls, where)
        ms = d.get("milestones", [])
        if (not isinstance(ms, list) or len(ms) > 1000
                or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in ms)):
            raise ProofFormatError(f"{where}.milestones: expected a list of non-negative integers")
        return cls(name=_str(d, "name", where, choices=SCHEDULES), milestones=tuple(ms),
                   gamma=_num(d, "gamma", where, lo=0, hi=10, optional=True, default=0.1),
                   total_steps=_num(d, "total_steps", where, lo=0, hi=2**40, integer=True,
                                    optional=True, default=0),
                   min_lr=_num(d, "min_lr", where, lo=0, hi=1e3, optional=True, default=0.0),
                   warmup_steps=_num(d, "warmup_steps", where, lo=0, hi=2**40, integer=True,
                                     optional=True, default=0))


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, how a raw batch becomes model input, and the augmentation (drawn from a
    recorded generator). `root` is the Merkle root over per-sample hashes: the commitment that binds
    whatever data the verifier is given to the data the prover trained on."""

    name: str
    params: dict = field(default_factory=dict)
    size: int = 0
    root: str = ""
    prepare: str = "float"
    augment: str = "none"
    # "seed": every epoch's batch order is `pol.step.epoch_order(seed, epoch, size)` (pol's own
    # loop), which the verifier then checks exactly; "" = the prover's own order (a permutation)
    order: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec.data") -> "DataSpec":
        d = _obj(d, where)
        _no_extra(d, cls, where)
        root = _str(d, "root", where)
        if len(root) != 64 or any(c not in "0123456789abcdef" for c in root):
            raise ProofFormatError(f"{where}.root: expected 64 lowercase hex characters")
        return cls(name=_str(d, "name", where), params=_kwargs(d, "params", where),
                   size=_num(d, "size", where, lo=1, hi=2**40, integer=True), root=root,
                   prepare=_str(d, "prepare", where), augment=_str(d, "augment", where),
                   order=_str(d, "order", where, optional=True, default="",
                              choices=("", "seed")))


@dataclass(frozen=True)
class StepSpec:
    """What a step does besides forward, loss, backward and the optimizer's step: gradient clipping,
    gradient accumulation, label smoothing. All off by default; a spec whose step is the default
    has no `step` field at all (proofs made before it existed read, and hash, as before).

    - `accumulation` = N: every optimizer step runs N micro-batches of `batch_size / N` samples
      (the step's batch row holds all N·(batch_size / N) indices, in micro-batch order), each
      micro-batch's loss divided by N before its backward (the `loss / N` users write); the last
      step of an epoch without drop_last may hold fewer, its last micro-batch short.
    - `clip_grad_norm` > 0: `torch.nn.utils.clip_grad_norm_(params, clip_grad_norm,
      norm_type=clip_norm_type)` after the backward passes, before the optimizer's step;
      `clip_grad_value` > 0: `torch.nn.utils.clip_grad_value_(params, clip_grad_value)` (not both).
    - `label_smoothing`: cross-entropy's `label_smoothing` (the cross-entropy losses).
    - `autocast` "bf16" / "fp16": every micro-batch's forward pass and loss run under
      `torch.autocast(device_type, dtype=bfloat16 / float16)` (the backward pass outside it).
      "fp16" steps through a `torch.amp.GradScaler(init_scale=scaler_init_scale,
      growth_factor=scaler_growth_factor, backoff_factor=scaler_backoff_factor,
      growth_interval=scaler_growth_interval)`: `scaler.scale(loss).backward()` per
      micro-batch, then `scaler.unscale_` (only when clipping), the clipping, `scaler.step`
      (skipped when a gradient is inf/NaN: replayed as skipped) and `scaler.update()`; its state
      (scale, growth tracker) is in every checkpoint (`scaler.scale`, `scaler.growth_tracker`).
    - `exact`: the step computes in float64 and rounds to float32 values at its boundaries (the
      gradients after the backward passes; after the optimizer's step every parameter, optimizer
      state tensor and floating buffer; the loss), logging the direction of every value within
      `exact_window` float32 ulps of a rounding tie (`pol.step.exact`): the proof replays bitwise
      on other hardware. Gradient values below 2^-30 of the step's largest are taken as zero, and
      the input is prepared on the CPU. `exact_window` is written whenever `exact` is (no
      autocast with it).
    - `exact_noise`: the float64 noise between devices that exact mode's gradient rounding
      absorbs, as a fraction ν of each gradient tensor's largest value M (a power of two): a
      gradient value is logged wherever ν·M could decide its rounding, and no value rounds finer
      than 2^exact_grid·ν·M (`pol.step.exact.Grid`). A reduction's float64 error scales with
      its largest terms, not with its result: measured between an H200 and a CPU on ResNet-20,
      up to ~2^-43·M. Written whenever `exact` is; absent (0: float32 rounding only, the window
      relative to each value) in proofs made before it existed.
    - `exact_zone`: values (other than the gradients on their grid) within this many float32
      ulps of a rounding tie round to the even neighbour, on every device; the log holds the
      values within `exact_window` of the zone's edge instead of those near the tie. Optimizer
      updates put values exactly on ties far more often than chance (Adam's first moment
      m + 0.1·(g − m) lands on one for ~2% of values: its low bits are a multiple of 1/10's
      binary expansion), and a device whose float64 kernels differ by an ulp (a fused
      multiply-add) would round those either way: a zone decides them without a log entry.
      Written whenever `exact` is; absent (0: the window around the tie) in proofs made before
      it existed.
    - `exact_grid`: the gradient grid's coarseness G, an integer: no gradient value rounds finer
      than 2^G·ν·M, so that of the values on that grid a fraction 2^(1−G) lies within ν·M of a
      tie and is logged. Proofs made before it existed had G = 4 (1 in 8 logged: a 114M GPT's
      gradients gave 2.9 M entries per step, and writing them bounded its training); new
      proofs take 8 (1 in 128), the spacing 2^-32·M at pol's ν, still far finer than float32
      training computes such values (its reductions' error is ~2^-24·M). Written whenever
      `exact` is and G is not 4; absent: 4.
    """

    clip_grad_norm: float = 0.0  # 0 = off
    clip_norm_type: float = 2.0
    clip_grad_value: float = 0.0  # 0 = off
    accumulation: int = 1
    label_smoothing: float = 0.0
    autocast: str = ""  # "" = off, "bf16", "fp16" (with a GradScaler)
    scaler_init_scale: float = 65536.0
    scaler_growth_factor: float = 2.0
    scaler_backoff_factor: float = 0.5
    scaler_growth_interval: int = 2000
    exact: bool = False  # float64 step, rounded to float32 at its boundaries, with a rounding log
    exact_window: float = EXACT_WINDOW  # logged: within this many float32 ulps of a tie
    exact_noise: float = EXACT_NOISE  # ... or where ν × the gradient tensor's largest may decide
    exact_zone: float = EXACT_ZONE  # to even within this many float32 ulps of a tie
    exact_grid: int = EXACT_GRID  # no gradient rounds finer than 2^exact_grid · ν · M

    def __post_init__(self) -> None:
        if self.clip_grad_norm < 0 or self.clip_grad_value < 0:
            raise ValueError("clipping thresholds must be positive (0 = off)")
        if self.clip_grad_norm and self.clip_grad_value:
            raise ValueError("clip by norm or by value, not both")
        if not (isinstance(self.clip_norm_type, (int, float)) and 0 < self.clip_norm_type <= 1e3
                and math.isfinite(self.clip_norm_type)):
            raise ValueError("clip_norm_type must be a finite number > 0 (the inf norm is not "
                             "supported)")
        if isinstance(self.accumulation, bool) or not isinstance(self.accumulation, int) \
                or not 1 <= self.accumulation <= 2**16:
            raise ValueError("accumulation must be an integer in 1..65536")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {', '.join(a for a in AUTOCAST if a)} "
                             "(or off)")
        scaler = (self.scaler_init_scale, self.scaler_growth_factor, self.scaler_backoff_factor,
                  self.scaler_growth_interval)
        if self.autocast != "fp16" and scaler != (65536.0, 2.0, 0.5, 2000):
            raise ValueError("GradScaler settings need autocast='fp16'")
        if not (0 < self.scaler_init_scale <= 2.0**64 and 1 < self.scaler_growth_factor <= 2**16
                and 0 < self.scaler_backoff_factor < 1):
            raise ValueError("GradScaler: init_scale in (0, 2^64], growth_factor > 1, "
                             "backoff_factor in (0, 1)")
        if isinstance(self.scaler_growth_interval, bool) \
                or not isinstance(self.scaler_growth_interval, int) \
                or not 1 <= self.scaler_growth_interval <= 2**31 - 1:
            raise ValueError("GradScaler growth_interval must be an integer >= 1")
        if not isinstance(self.exact, bool):
            raise ValueError("exact must be true or false")
        if (isinstance(self.exact_window, bool) or not isinstance(self.exact_window, (int, float))
                or not EXACT_WINDOW_MIN <= self.exact_window <= EXACT_WINDOW_MAX):
            raise ValueError(f"exact_window must be in [2^-24, 2^-4], got {self.exact_window!r}")
        if self.exact_window != EXACT_WINDOW and not self.exact:
            raise ValueError("exact_window needs exact=True")
        nu = self.exact_noise
        if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not (
                nu == 0 or (EXACT_NOISE_MIN <= nu <= EXACT_NOISE_MAX
                            and math.frexp(nu)[0] == 0.5)):
            raise ValueError(f"exact_noise must be 0 or a power of two in [2^-52, 2^-24], got "
                             f"{nu!r}")
        if nu != EXACT_NOISE and not self.exact:
            raise ValueError("exact_noise needs exact=True")
        z = self.exact_zone
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not (
                z == 0 or (EXACT_ZONE_MIN <= z <= EXACT_ZONE_MAX and math.frexp(z)[0] == 0.5)):
            raise ValueError(f"exact_zone must be 0 or a power of two in [2^-16, 2^-3], got "
                             f"{z!r}")
        if z != EXACT_ZONE and not self.exact:
            raise ValueError("exact_zone needs exact=True")
        g = self.exact_grid
        if isinstance(g, bool) or not isinstance(g, int) or not EXACT_GRID_MIN <= g <= EXACT_GRID_MAX:
            raise ValueError(f"exact_grid must be an integer in [{EXACT_GRID_MIN}, "
                             f"{EXACT_GRID_MAX}], got {g!r}")
        if g != EXACT_GRID and not self.exact:
            raise ValueError("exact_grid needs exact=True")
        if self.exact and self.autocast:
            raise ValueError("exact mode computes the step in float64: no autocast with it")

    @property
    def is_default(self) -> bool:
        return self == StepSpec()

    def to_dict(self) -> dict:
        """Only the fields that differ from their defaults (and the window, noise bound, zone and
        grid with exact mode; a noise bound or zone of 0 and a grid of 4, an older proof's, are
        never written)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if getattr(self, f.name) != f.default
               or (f.name in ("exact_window", "exact_noise", "exact_zone", "exact_grid")
                   and self.exact)}
        for name, legacy in (("exact_noise", 0), ("exact_zone", 0),
                             ("exact_grid", EXACT_GRID_LEGACY)):
            if name in out and out[name] == legacy:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec.step") -> "StepSpec":
        d = _obj(d, where)
        _no_extra(d, cls, where)
        try:
            step = cls(clip_grad_norm=_num(d, "clip_grad_norm", where, lo=0, hi=1e9, optional=True,
                                           default=0.0),
                       clip_norm_type=_num(d, "clip_norm_type", where, lo=0, hi=1e3,
                                           optional=True, default=2.0),
                       clip_grad_value=_num(d, "clip_grad_value", where, lo=0, hi=1e9,
                                            optional=True, default=0.0),
                       accumulation=_num(d, "accumulation", where, lo=1, hi=2**16, integer=True,
                                         optional=True, default=1),
                       label_smoothing=_num(d, "label_smoothing", where, lo=0, hi=1,
                                            optional=True, default=0.0),
                       autocast=_str(d, "autocast", where, optional=True, default="",
                                     choices=AUTOCAST),
                       scaler_init_scale=_num(d, "scaler_init_scale", where, lo=0, hi=2.0**64,
                                              optional=True, default=65536.0),
                       scaler_growth_factor=_num(d, "scaler_growth_factor", where, lo=1,
                                                 hi=2**16, optional=True, default=2.0),
                       scaler_backoff_factor=_num(d, "scaler_backoff_factor", where, lo=0, hi=1,
                                                  optional=True, default=0.5),
                       scaler_growth_interval=_num(d, "scaler_growth_interval", where, lo=1,
                                                   hi=2**31 - 1, integer=True, optional=True,
                                                   default=2000),
                       exact=_bool(d, "exact", where, False),
                       exact_window=float(_num(d, "exact_window", where, lo=EXACT_WINDOW_MIN,
                                               hi=EXACT_WINDOW_MAX, optional=True,
                                               default=EXACT_WINDOW)),
                       exact_noise=float(_num(d, "exact_noise", where, lo=EXACT_NOISE_MIN,
                                              hi=EXACT_NOISE_MAX, optional=True,
                                              default=0.0 if d.get("exact") is True
                                              else EXACT_NOISE)),
                       exact_zone=float(_num(d, "exact_zone", where, lo=EXACT_ZONE_MIN,
                                             hi=EXACT_ZONE_MAX, optional=True,
                                             default=0.0 if d.get("exact") is True
                                             else EXACT_ZONE)),
                       exact_grid=_num(d, "exact_grid", where, lo=EXACT_GRID_MIN,
                                       hi=EXACT_GRID_MAX, integer=True, optional=True,
                                       default=EXACT_GRID_LEGACY if d.get("exact") is True
                                       else EXACT_GRID))
        except ValueError as e:
            raise ProofFormatError(f"{where}: {e}") from None
        # one spelling: defaults are left out, and the whole step when all are
        if step.is_default or step.to_dict() != d:
            raise ProofFormatError(f"{where}: holds default values (write only what differs "
                                   "from the defaults; leave out a default step)")
        return step


@dataclass(frozen=True)
class TrainingSpec:
    """The complete, self-describing description of a training run."""

    model: ModelSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    data: DataSpec
    loss: str = "cross_entropy"
    batch_size: int = 64
    epochs: int = 1
    k: int = 10
    drop_last: bool = False
    precision: str = "fp32"  # storage precision of checkpoints
    seed: int = 0  # drives data order, init, dropout and augmentation (per step, derived)
    task: str = ""  # informational: built-in task name, if any
    device: str = "cpu"  # device type the proof was made on
    deterministic: bool = False  # torch.use_deterministic_algorithms during training
    torch_version: str = ""
    # CPU kernel family (torch.backends.cpu.get_cpu_capability()); exact replay on a CPU is only
    # expected where it matches, since kernels differ between AVX2 and AVX-512 builds
    cpu_capability: str = ""
    # torch intra-op threads on a CPU: reductions split by thread, so replay is only bitwise equal
    # with the same count (the verifier replays with it); 0 = unknown (older proofs)
    cpu_threads: int = 0
    # the GPU model (torch.cuda.get_device_name) of a GPU proof: its float32 kernels, even the
    # deterministic ones, differ between models, so bitwise replay is only expected on the same
    # one; "" = not recorded (a CPU proof, or an older proof)
    gpu_name: str = ""
    # TF32 on a GPU (cudnn convolutions / matmuls): "off", "conv", "matmul" or "on"; "" = not
    # recorded (a CPU proof, or an older proof: torch's defaults). TF32 rounds inputs to 10
    # mantissa bits, which dominates the GPU-vs-CPU replay error, so pol trains fp32 with it off
    tf32: str = ""
    # where augmentation's random numbers are drawn: "cpu" (pol's proofs: identical on every
    # device) or "" = on the training device (proofs made before this field existed)
    augment_rng: str = "cpu"
    # clipping, accumulation, label smoothing (`StepSpec`); absent from the JSON when all are off
    step: StepSpec = field(default_factory=StepSpec)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.batch_size < 1 or self.epochs < 1 or self.k < 1:
            raise ValueError("batch size, epochs and k must be positive")
        if self.tf32 not in TF32_MODES:
            raise ValueError(f"tf32 must be one of {', '.join(m for m in TF32_MODES if m)}")
        if self.batch_size % self.step.accumulation:
            raise ValueError(f"batch size {self.batch_size} is not a multiple of accumulation "
                             f"{self.step.accumulation} (batch_size = micro-batch size × "
                             "accumulation)")
        if self.step.autocast and self.device not in ("cpu", "cuda"):
            raise ValueError(f"autocast on {self.device} is not supported (cpu, cuda)")
        if self.step.exact and self.precision != "fp32":
            raise ValueError("exact mode stores float32 checkpoints: precision must be fp32")
        if self.step.label_smoothing and self.loss == "mse":
            raise ValueError(f"label smoothing needs a cross-entropy loss, not {self.loss!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.tf32:  # absent in proofs made before the field existed: same bytes, digests
            del d["tf32"]
        if not self.gpu_name:
            del d["gpu_name"]
        if not self.augment_rng:
            del d["augment_rng"]
        if self.step.is_default:  # as in proofs made before step features existed
            del d["step"]
        else:
            d["step"] = self.step.to_dict()
        if not self.data.order:  # as in proofs made before the field existed
            del d["data"]["order"]
        if not self.schedule.warmup_steps:  # as in proofs made before warm-up existed
            del d["schedule"]["warmup_steps"]
        d["optimizer"] = self.optimizer.to_dict()
        d["schedule"]["milestones"] = list(self.schedule.milestones)
        return d

    def with_(self, **changes: Any) -> "TrainingSpec":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec") -> "TrainingSpec":
        d = _obj(d, where)
        _no_extra(d, cls, where)
        try:
            return cls(
                model=ModelSpec.from_dict(d.get("model"), f"{where}.model"),
                optimizer=OptimizerSpec.from_dict(d.get("optimizer"), f"{where}.optimizer"),
                schedule=ScheduleSpec.from_dict(d.get("schedule"), f"{where}.schedule"),
                data=DataSpec.from_dict(d.get("data"), f"{where}.data"),
                loss=_str(d, "loss", where, choices=LOSSES),
                batch_size=_num(d, "batch_size", where, lo=1, hi=2**20, integer=True),
                epochs=_num(d, "epochs", where, lo=1, hi=10**6, integer=True),
                k=_num(d, "k", where, lo=1, hi=2**40, integer=True),
                drop_last=_bool(d, "drop_last", where, False),
                precision=_str(d, "precision", where, choices=PRECISIONS),
                seed=_num(d, "seed", where, lo=0, hi=2**63 - 1, integer=True),
                task=_str(d, "task", where, optional=True, default=""),
                device=_str(d, "device", where, choices=("cpu", "cuda", "mps", "xpu")),
                deterministic=_bool(d, "deterministic", where, False),
                torch_version=_str(d, "torch_version", where, optional=True, default=""),
                cpu_capability=_str(d, "cpu_capability", where, optional=True, default=""),
                cpu_threads=_num(d, "cpu_threads", where, lo=0, hi=4096, integer=True,
                                 optional=True, default=0),
                gpu_name=_str(d, "gpu_name", where, optional=True, default=""),
                tf32=_str(d, "tf32", where, optional=True, default="",
                          choices=TF32_MODES),
                augment_rng=_str(d, "augment_rng", where, optional=True, default="",
                                 choices=("", "cpu")),
                step=(StepSpec.from_dict(d["step"], f"{where}.step") if "step" in d
                      else StepSpec()),
            )
        except ValueError as e:
            raise ProofFormatError(f"{where}: {e}") from None


def current_tf32() -> str:
    """This process's TF32 settings, as the spec's `tf32` field names them."""
    import torch
    conv, mm = bool(torch.backends.cudnn.allow_tf32), bool(torch.backends.cuda.matmul.allow_tf32)
    return {(False, False): "off", (True, False): "conv", (False, True): "matmul",
            (True, True): "on"}[(conv, mm)]


def set_tf32(mode: str) -> str:
    """Switch TF32 as `mode` says ("" leaves torch's settings alone); returns the previous mode
    so that the caller can restore it."""
    import torch
    prev = current_tf32()
    if mode:
        torch.backends.cudnn.allow_tf32 = mode in ("conv", "on")
        torch.backends.cuda.matmul.allow_tf32 = mode in ("matmul", "on")
    return prev


def current_gpu_name(device: Any = "cuda") -> str:
    """The GPU model of `device` (a CUDA device; "cuda": the current one); "" for any other
    device, and without CUDA."""
    try:
        import torch
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            return ""
        return str(torch.cuda.get_device_name(device))
    except Exception:  # noqa: BLE001 - no driver, a device string torch does not know
        return ""


def current_cpu_capability() -> str:
    try:
        import torch
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older torch
        return ""
