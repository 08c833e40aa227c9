"""Exact mode: a training step that replays bitwise on other hardware (`StepSpec.exact`).

The step computes in float64 from float32 values and rounds its results to float32 at its
boundaries only: the gradients after the backward passes (before clipping and the optimizer), and
after the optimizer's step every parameter, every optimizer state tensor (Adam's step counter
aside) and every floating buffer (BatchNorm's running statistics); the loss too. Between steps
the model and optimizer hold float32 tensors, as in a float32 run (the checkpoints are those of an
fp32 proof); during a step they hold float64 copies (`ExactStep`), rounded back into the same
float32 tensors at its end.

Two devices compute a float64 step with different kernels, so their float64 values differ in the
last bits; rounded to float32 they agree, except where a value lies so close to the midpoint
between two float32 neighbours that the difference decides the rounding. The prover logs every
value within `window` float32 ulps of such a tie (`StepSpec.exact_window`, default 2^-12): the step,
the rounding point (`POINTS`: the gradients, the state, the loss, each rounded as one vector), the
index in that vector and the direction it rounded (up or down). The verifier's replay rounds each logged value in the
logged direction, after checking that the value is near a tie in its own computation too (within
`REPLAY_FACTOR` × window: a log entry naming any other value is a forger's handle, and the
segment fails); every other value rounds to nearest. Float64 differences between honest devices
are ~1e-16 relative, far inside the window (2^-12 ulp of float32 is ~3e-11 relative).

Two things the rounding cannot absorb are removed from the step itself. A gradient that is zero in
exact arithmetic (attention's key bias, a bias before BatchNorm) comes out as float64 noise whose
every bit differs between devices, and Adam turns noise into full-size steps: gradient values
below 2^-FLUSH_BITS of the step's largest are set to zero before rounding (`flush_small`). And the
input is prepared on the CPU (`pol.step.core.step_inputs`), whose float32 arithmetic is IEEE on
every machine, where a GPU may round it otherwise (CUDA's division by a scalar multiplies by the
reciprocal).

Which values are near a tie is found without a per-element loop: the low 29 bits of a float64's
significand are what float32 rounding drops, and the value lies exactly on a tie when they are
2^28, so |low - 2^28| ≤ window · 2^29 is the test (float32's normal range; values that round to
float32 subnormals are checked one by one, as are all candidates, with `tie_distance`).

What exact mode cannot replay across devices is refused up front (`check_model`, and the spec's
own validation): dropout with p > 0 (each device draws its own masks), fp16/bf16 autocast and
storage, and layers outside `SUPPORTED_LAYERS`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from pol.errors import ConfigError
from pol.spec import EXACT_GRID_LEGACY
from pol.step import gemm_conv

__all__ = ["RoundingLog", "ExactStep", "check_model", "tie_distance", "round_exact",
           "use_proof_log", "SUPPORTED_LAYERS", "REPLAY_FACTOR", "LOG_COLUMNS", "POINTS"]

REPLAY_FACTOR = 4  # the verifier accepts a logged value within this many windows of a tie
# gradient values below 2^-FLUSH_BITS of the step's largest gradient value are taken as zero
FLUSH_BITS = 30
LOG_COLUMNS = ("step", "point", "index", "up")  # one int64 row per logged value

_LOW29 = (1 << 29) - 1  # the float64 significand bits that float32 rounding drops
_HALF29 = 1 << 28  # ... and their value on a tie
_MAGNITUDE = (1 << 63) - 1  # a float64's bits without the sign
# magnitudes whose float32 rounding is subnormal (or the smallest normal): [2^-151, 2^-126], as
# float64 bit patterns (biased exponents 872 and 897), given by their centre and half-width
_TINY_LO, _TINY_HI = 872 << 52, 897 << 52
_TINY_MID, _TINY_HALF = (_TINY_LO + _TINY_HI) // 2, (_TINY_HI - _TINY_LO) // 2

SUPPORTED_LAYERS: tuple[type, ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
    nn.Embedding, nn.Flatten, nn.Unflatten, nn.Identity, nn.Sequential, nn.ModuleList,
    nn.ModuleDict,
    # activations
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Softmax, nn.LogSoftmax, nn.Tanhshrink, nn.Softsign,
    # pooling
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout)


def _pol_blocks() -> tuple[type, ...]:
    """pol's own architectures and their blocks: made of supported layers and float64-safe tensor
    ops (their attention is `scaled_dot_product_attention`, float64 on every device)."""
    from pol import models
    return (models.LeNet, models.CifarResNet, models._BasicBlock, models._Bottleneck,
            models._ShortcutA, models.GPT, models._Block)


def check_model(model: nn.Module) -> None:
    """ConfigError naming the first layer (or setting) exact mode cannot replay across devices:
    dropout with p > 0, a torch layer outside `SUPPORTED_LAYERS`, a module of the user's own that
    holds parameters or buffers itself (its forward is not known to be float64-safe), or a
    float tensor other than float32. A module of the user's own that only composes others is
    accepted: its own code must compute in the dtype it is given (no `.float()`, `.half()`, no
    functional dropout)."""
    pol_blocks = _pol_blocks()
    for name, m in model.named_modules():
        where = f"layer {name!r} ({type(m).__name__})" if name else f"the model ({type(m).__name__})"
        if isinstance(m, _DROPOUT):
            if m.p > 0:
                raise ConfigError(f"exact mode: {where} has dropout p = {m.p}; CUDA and the CPU "
                                  "draw different dropout masks for one seed, so the step cannot "
                                  "replay on other hardware. Set its p to 0 (or record without "
                                  "exact mode)")
            continue
        if isinstance(m, nn.Embedding) and m.sparse:
            raise ConfigError(f"exact mode: {where} has sparse gradients; use sparse=False")
        if isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            raise ConfigError(f"exact mode: {where} has attention dropout {m.dropout}: set it to "
                              "0 (each device draws its own dropout masks)")
        if isinstance(m, SUPPORTED_LAYERS) or type(m) in pol_blocks:
            continue
        if type(m).__module__.startswith("torch."):
            raise ConfigError(f"exact mode does not support {where}: supported are "
                              f"{_supported_names()}")
        own = [n for n, _ in m.named_parameters(recurse=False)] + \
            [n for n, _ in m.named_buffers(recurse=False)]
        if own:
            raise ConfigError(f"exact mode: {where} holds its own tensors ({', '.join(own[:3])}) "
                              "and computes with them in code pol does not know to be "
                              "float64-safe; build it from supported layers ("
                              f"{_supported_names()})")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ConfigError(f"exact mode: {name} is {t.dtype}; exact mode trains float32 "
                              "values (computed in float64): keep the model in float32")


def _supported_names() -> str:
    return ("Linear, Conv1d/2d, BatchNorm1d/2d, LayerNorm, Embedding, activations, pooling, "
            "Flatten, Dropout with p = 0, and pol's own models")


# ----------------------------------------------------------------------------- rounding


def tie_distance(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """|x − m| ÷ gap for float64 values `x` and their float32 roundings `r` (1-D, same length):
    m the midpoint between the two float32 neighbours of x, gap their distance (exact in float64:
    both neighbours and their mean are float64 values, gap a power of two). 0 on a tie, 0.5 for a
    float32 value; NaN where x is not finite or overflows."""
    rd = r.double()
    d = x - rd  # exact: |d| ≤ gap / 2
    inf = _inf(r.device)
    other = torch.nextafter(r, torch.where(d > 0, inf, -inf))  # the neighbour on x's side
    gap = (other.double() - rd).abs()
    return (d.abs() - gap * 0.5).abs() / gap


def _candidates(x: torch.Tensor, window: float) -> torch.Tensor:
    """Indices of a superset of the values of `x` (flat float64) within `window` float32 ulps of a
    rounding tie: exact in float32's normal range (the dropped significand bits), and every
    value between 2^-151 and 2^-126, where float32 rounds to subnormals (`tie_distance` checks
    them). Smaller magnitudes (zero among them) are at least 2^-151 from the first tie."""
    bits = x.view(torch.int64)
    work = bits & _LOW29
    near = work.sub_(_HALF29).abs_() <= int(window * 2 ** 29)
    torch.bitwise_and(bits, _MAGNITUDE, out=work)
    near |= work.sub_(_TINY_MID).abs_() <= _TINY_HALF
    return near.nonzero().squeeze(1)


def _inf(device: torch.device) -> torch.Tensor:
    """float32 +inf as a 0-d tensor on `device`, written there by a fill kernel: `torch.tensor(x,
    device=...)` would copy it from the host, which waits for the GPU's queued work."""
    return torch.full((), float("inf"), dtype=torch.float32, device=device)


def _tie_units(x: torch.Tensor) -> torch.Tensor:
    """Each value's distance from its float32 rounding tie, in float32 spacings (`tie_distance(x,
    x.float())`: 0 on a tie, 0.5 for a float32 value; NaN and ±inf: 0.5 or more, never near),
    computed on the whole vector without gathering (on a GPU, where `_candidates` would wait
    for the device to count them; on a CPU `_candidates` takes fewer passes). In float32's
    normal range the dropped significand bits tell it: a float64 lies on a tie when its low 29
    bits are 2^28, and |low − 2^28| · 2^-29 is the distance (exact). Below 2^-126 float32
    rounds to multiples of 2^-149: |x| · 2^149 (exact: a power of two) lies on a tie when its
    fraction is 1/2."""
    bits = x.view(torch.int64)
    d = (bits & _LOW29).sub_(_HALF29).abs_().double().mul_(2.0 ** -29)
    a = x.abs()
    tiny = a < 2.0 ** -126
    y = a.mul_(2.0 ** 149)
    sub = y.sub_(torch.floor(y)).sub_(0.5).abs_()  # the fraction, exact
    d = torch.where(tiny, sub, d)
    return d.masked_fill_(torch.isnan(x), 1.0)


def _near_tie(x: torch.Tensor, window: float) -> torch.Tensor:
    """Which values of `x` (flat float64) lie within `window` float32 spacings of a rounding tie
    (`_tie_units`; a bool mask, NaN and ±inf never)."""
    return _tie_units(x) <= window


def _from_edge(d: torch.Tensor, zone: float) -> torch.Tensor:
    """Distances from a tie `d` as distances from where the log's entries lie: the zone's edge
    (`|d − zone|`, written over `d`), or the tie itself without a zone."""
    return (d - zone).abs_() if zone else d


def _in_band(d: torch.Tensor, window: float, zone: float) -> torch.Tensor:
    """`|d − zone| <= window` (d: distances from a tie, `_tie_units`; used up)."""
    return _from_edge(d, zone) <= window


def _to_even(x: torch.Tensor, r: torch.Tensor, zone: torch.Tensor | None = None) -> torch.Tensor:
    """`r` (x's nearest float32 values) with each value that `zone` marks (it lies within the
    round-to-even zone of a tie; None: every value) replaced by the even one of x's two float32
    neighbours, in place: where r is odd, the neighbour on the other side of x."""
    odd = (r.view(torch.int32) & 1).bool()
    if zone is not None:
        odd.logical_and_(zone)
    inf = _inf(r.device)
    other = torch.nextafter(r, torch.where(r.double() < x, inf, -inf))
    return r.copy_(torch.where(odd, other, r))


def _to_even_at(fx: torch.Tensor, fr: torch.Tensor, idx: torch.Tensor, d: torch.Tensor,
                zone: float) -> None:
    """The gathered form of `_to_even` (a CPU's): of the candidates `idx`, at distances `d`
    from a tie, those within the zone rounded to even in `fr`."""
    z = idx[d < zone]
    fr[z] = _to_even(fx[z], fr[z])


def flush_small(g: torch.Tensor) -> torch.Tensor:
    """`g` (the step's gradients as one float64 vector) with every value below 2^-FLUSH_BITS of
    the largest |value| set to zero, in place. A gradient that is zero in exact arithmetic (the
    key bias of attention: softmax ignores a shift of a row's logits; a bias before BatchNorm)
    is computed as float64 rounding noise, ~2^-55 of the gradients around it, which differs
    between devices and which Adam scales up to full-size steps; no real gradient is that small
    next to the step's largest. The threshold is a power of two from the largest value's
    exponent, the same on every device unless that value lies within float64 noise of a power
    of two."""
    a = g.abs()
    _, e = torch.frexp(a.max())
    thr = torch.ldexp(torch.ones((), dtype=g.dtype, device=g.device), e - FLUSH_BITS)
    return g.masked_fill_(a < thr, 0.0)


def _neighbours(x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) float32 neighbours of float64 values `x` whose nearest float32 is `r`."""
    inf = _inf(r.device)
    below = r.double() <= x
    other = torch.nextafter(r, torch.where(below, inf, -inf))
    return torch.where(below, r, other), torch.where(below, other, r)


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k (float64, exact) for integer k in float64's normal range."""
    return ((k.long() + 1023) << 52).view(torch.float64)


_EXPONENT = 0x7FF0000000000000  # a float64's exponent bits: 2^floor(log2|x|) as a float64


class Grid:
    """The rounding grid of a gradient vector with a noise bound (`StepSpec.exact_noise` = ν, a
    power of two): per tensor of `sizes`, with M its largest |value| (M < 2^E), every value
    rounds to float32, except that no grid is finer than q = 2^(E + log2 ν + G) (G: `bits`,
    `StepSpec.exact_grid`): values whose float32 spacing is finer round to multiples of q. A
    value is near a tie when its distance from the tie is within the larger of the log's window
    (in units of its grid spacing g) and ν·2^E (≤ g/2^G): a float64 value whose computation may be off by ν·M between devices
    (reductions whose error scales with the tensor's largest terms, not with the value) is
    logged wherever that noise could decide its rounding. Vectorized over the whole vector:
    the spacing from the float64 exponent bits, the nearest value by `torch.round` (ties to
    even, as float32 rounding), distances in absolute terms (exact: powers of two and
    Sterbenz subtractions)."""

    def __init__(self, fx: torch.Tensor, sizes: list[int], noise: float, window: float,
                 bits: int) -> None:
        n = fx.numel()
        a = fx.abs()
        # each tensor's largest |value| (exact in any order; `segment_reduce` would wait for
        # the GPU to size its output)
        parts = [v for v in fx.split(sizes) if v.numel()]  # an empty tensor has no largest
        big = torch.stack(torch._foreach_norm(parts, float("inf"))) if parts else fx[:0]
        _, e_big = torch.frexp(big)
        ln = int(round(math.log2(noise)))
        e_big = e_big.long()
        q = _spread(_pow2((e_big + ln + bits).clamp_min(-149)), sizes, n)
        nu_m = _spread(_pow2((e_big + ln).clamp_min(-1000)), sizes, n)
        g = (a.view(torch.int64) & _EXPONENT).view(torch.float64).mul_(2.0 ** -23)
        self.x, self.g = fx, torch.maximum(g, q, out=g)
        r = torch.div(fx, g).round_().mul_(g)
        self.r = torch.where(torch.isfinite(fx), r, fx)
        self.tie = torch.sub(g * 0.5, (fx - self.r).abs_())  # ≥ 0: from the tie, absolute
        self.thr = torch.maximum(g * window, nu_m)

    def value(self, up: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The values at `idx` rounded down (up: False) or up (True) on their grid."""
        g = self.g[idx]
        return (torch.floor(self.x[idx] / g) + up.to(g.dtype)) * g


@functools.lru_cache(maxsize=16)
def _starts(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Where each non-empty tensor starts in the flat vector, int64 on `device`, made once per
    model (a tensor made from a list is copied from the host, which waits for the GPU's
    queued work)."""
    keep = [i for i, size in enumerate(sizes) if size]
    return torch.tensor(np.cumsum([0, *sizes])[keep], dtype=torch.int64, device=device)


def _spread(v: torch.Tensor, sizes: list[int], n: int) -> torch.Tensor:
    """`v.repeat_interleave(sizes)` for float64 values `v` (one per non-empty tensor): the
    running sum of their bit patterns' differences, placed where each tensor starts (exact).
    `repeat_interleave`'s kernel gives each tensor to one thread, 0.5 ms for a 25M-value
    vector on an H200."""
    starts = _starts(tuple(sizes), v.device)
    bits = v.view(torch.int64)
    out = torch.zeros(n, dtype=torch.int64, device=v.device)
    out.index_put_((starts,), torch.diff(bits, prepend=bits.new_zeros(1)))
    return out.cumsum_(0).view(torch.float64)


def _round_grid(fx: torch.Tensor, log: "RoundingLog", t: int, point: int,
                sizes: list[int]) -> torch.Tensor:
    grid = Grid(fx, sizes, log.noise, log.window, log.grid)
    r = grid.r
    if log.replaying:
        log.apply_grid(t, point, grid, r)
    else:
        log.record(t, point, grid.tie <= grid.thr, r > fx)
    return r.to(torch.float32)


def round_exact(x: torch.Tensor, log: "RoundingLog", t: int, point: int,
                out: torch.Tensor | None = None,
                sizes: list[int] | None = None) -> torch.Tensor:
    """`x` (float64) rounded to float32 at rounding point `point` of step `t`: to nearest, and in
    the logged direction where the log says (replay); near ties logged (record). Into `out`
    (a float32 tensor of x's shape) when given, else a new tensor. The gradients of a log with a
    noise bound round on their `Grid` (`sizes`: the tensors' lengths in `x`, in order)."""
    x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    if point == GRADIENTS and log.noise > 0:
        r = _round_grid(x.view(-1), log, t, point, sizes or [x.numel()]).view(x.shape)
    else:
        r = _round_float32(x, log, t, point)
    if out is None:
        return r
    out.copy_(r)
    return out


def _round_float32(x: torch.Tensor, log: "RoundingLog", t: int, point: int) -> torch.Tensor:
    """`x` (contiguous float64) to nearest float32, except values within the log's zone of a tie
    (to even) and the logged values (the logged way, replay); values within the window of the
    zone's edge logged (record)."""
    r = x.to(torch.float32)
    fx, fr = x.view(-1), r.view(-1)
    zone = log.zone
    if log.replaying:
        log.apply(t, point, fx, fr)
    elif log.defers(fx.device):  # masks over the whole vector: no wait for the device
        d = _tie_units(fx)
        if zone:
            _to_even(fx, fr, d < zone)
        log.record(t, point, _in_band(d, log.window, zone), fr.double() > fx)
    else:  # the candidates the dropped bits give, then their distance from the tie
        idx = _candidates(fx, zone + log.window)
        d = tie_distance(fx[idx], fr[idx])
        if zone:
            _to_even_at(fx, fr, idx, d, zone)
        idx = idx[_in_band(d, log.window, zone)]
        log.record_at(t, point, idx, fr[idx].double() > fx[idx])
    return r


# a GPU's rounding log in flight (`RoundingLog.record`): at most this many rounding points wait
# for their copy to the host before the next record waits for the oldest (two steps' worth; each
# keeps two bool masks of its vector until then: 2 bytes per value)
_IN_FLIGHT_MAX = 6
_CAP_MIN = 4096  # the smallest compaction buffer of a rounding point


def _rows(t: int, point: int, idx: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Log rows (step, point, index, up) of one rounding point, int64 [n, 4]."""
    out = np.empty((len(idx), len(LOG_COLUMNS)), dtype=np.int64)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = t, point, idx, up
    return out


class _InFlight:
    """One rounding point's log entries on a GPU, on their way to the host without a wait: the
    marked indices compacted on the device into `cap` slots (`nonzero_static`), copied with
    their directions and their count to pinned memory behind an event. The masks stay until
    the count is read: more than `cap` marked values (rare: `cap` follows the counts of earlier
    steps) are then read from them."""

    def __init__(self, t: int, point: int, near: torch.Tensor, up: torch.Tensor,
                 cap: int | None) -> None:
        n = near.numel()
        self.t, self.point, self.near, self.up = t, point, near, up
        self.cap = min(n, cap or max(_CAP_MIN, n >> 5))
        idx = torch.nonzero_static(near, size=self.cap, fill_value=0).squeeze(1)
        cuda = near.device.type == "cuda"
        self.host = [self._to_host(v, cuda) for v in (idx, up[idx], near.sum().reshape(1))]
        self.event = torch.cuda.Event() if cuda else None
        if self.event is not None:
            self.event.record()

    @staticmethod
    def _to_host(v: torch.Tensor, cuda: bool) -> torch.Tensor:
        if not cuda:
            return v
        return torch.empty(v.shape, dtype=v.dtype, pin_memory=True).copy_(v, non_blocking=True)

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def rows(self) -> tuple[np.ndarray, int]:
        """(the log rows, how many values were marked), once the copies are done."""
        if self.event is not None:
            self.event.synchronize()
        idx, up, count = self.host
        n = int(count[0])
        if n <= self.cap:
            return _rows(self.t, self.point, idx[:n].numpy(), up[:n].numpy()), n
        i = self.near.nonzero().squeeze(1)
        return _rows(self.t, self.point, i.cpu().numpy(), self.up[i].cpu().numpy()), n


class _Columns(NamedTuple):
    """A replay's log rows as contiguous columns (`pol.proof.roundlog.Log.columns`: 15 bytes
    a row where int64 rows take 32)."""
    step: np.ndarray
    point: np.ndarray
    index: np.ndarray
    up: np.ndarray

    @classmethod
    def of(cls, entries) -> "_Columns":
        if isinstance(entries, np.ndarray):  # rows, int64 [N, 4]
            e = entries.reshape(-1, len(LOG_COLUMNS))
            return cls(np.ascontiguousarray(e[:, 0]), np.ascontiguousarray(e[:, 1]),
                       np.ascontiguousarray(e[:, 2]), e[:, 3] != 0)
        step, point, index, up = entries
        return cls(step, point, np.ascontiguousarray(index), np.ascontiguousarray(up, bool))


class RoundingLog:
    """The rounding log of exact mode: recorded by the prover's steps (`take` hands the entries
    since the last call to the proof writer), replayed by the verifier's (`replay`). Entries are
    int64 rows (step, point, index, up), sorted, as `roundlog.polr` stores them
    (`pol.proof.roundlog`).

    Neither side waits for a GPU inside a step: recorded entries reach the host behind events
    (`_InFlight`), and a replay's checks of the logged values are read when `problems` is."""

    def __init__(self, window: float, noise: float = 0.0, zone: float = 0.0,
                 grid: int = EXACT_GRID_LEGACY) -> None:
        self.window = float(window)
        self.noise = float(noise)  # StepSpec.exact_noise: 0 = no gradient grid (older proofs)
        self.zone = float(zone)  # StepSpec.exact_zone: 0 = no round-to-even zone (older proofs)
        self.grid = int(grid)  # StepSpec.exact_grid: the gradient grid's coarseness (4: older)
        self._rows: list[np.ndarray] = []  # recording: rows per rounding point, in order
        self.ready = 0  # recording: how many rows `_rows` holds (on the host, not yet taken)
        self._pending: list[_InFlight] = []  # recording on a GPU: not yet on the host
        self._caps: dict[int, int] = {}  # recording on a GPU: compaction size per point
        self._entries: _Columns | None = None  # replaying: the proof's rows, as columns
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # ... their columns
        self._todo: dict[int, tuple[int, int]] = {}  # this step's rows, by point
        self._problems: dict[int, str] = {}  # replaying: step -> what was wrong with its log
        self._checks: list[tuple[int, Any]] = []  # replaying: problems not read yet, in order
        self.deferred: bool | None = None  # recording: None = on a GPU (`defers`)
        self.sizes: dict[int, int] = {}  # replaying: each rounding point's length, last seen

    @property
    def replaying(self) -> bool:
        return self._entries is not None

    # ----- recording

    def defers(self, device: torch.device) -> bool:
        """Whether entries found on `device` are taken as masks and read later (a GPU: no
        wait inside the step) rather than gathered at once (a CPU; `deferred` overrides)."""
        return device.type == "cuda" if self.deferred is None else self.deferred

    def record(self, t: int, point: int, near: torch.Tensor, up: torch.Tensor) -> None:
        """Log the values of step t's rounding point `point` that `near` marks, with the
        direction they rounded (`up`), both bool masks over the point's vector. Deferred
        (`defers`): the entries travel to the host behind an event (`_InFlight`), read later."""
        if not self.defers(near.device):
            idx = near.nonzero().squeeze(1)
            self.record_at(t, point, idx, up[idx])
            return
        self._pending.append(_InFlight(t, point, near, up, self._caps.get(point)))
        self._collect(_IN_FLIGHT_MAX)

    def record_at(self, t: int, point: int, idx: torch.Tensor, up: torch.Tensor) -> None:
        """Log the values at `idx` (ascending) of step t's rounding point, rounded `up` or not."""
        if idx.numel():
            self._add(_rows(t, point, idx.cpu().numpy(), up.cpu().numpy()))

    def _add(self, rows: np.ndarray) -> None:
        self._rows.append(rows)
        self.ready += len(rows)

    def _collect(self, keep: int) -> None:
        """Move the in-flight entries whose copies are done to the rows, oldest first, waiting
        for the oldest while more than `keep` are in flight."""
        while self._pending and (len(self._pending) > keep or self._pending[0].done()):
            item = self._pending.pop(0)
            rows, n = item.rows()
            self._caps[item.point] = max(_CAP_MIN, 2 * n)
            if len(rows):
                self._add(rows)

    def take(self, wait: bool = True) -> np.ndarray:
        """The entries recorded since the last call, int64 [n, 4], in order; without `wait`,
        only those already on the host (no wait for a device: the later ones stay in flight)."""
        self._collect(0 if wait else len(self._pending))
        if not self._rows:
            return np.zeros((0, len(LOG_COLUMNS)), dtype=np.int64)
        rows = np.concatenate(self._rows)
        self._rows, self.ready = [], 0
        return rows

    # ----- replaying

    def replay(self, entries) -> None:
        """Replay with a proof's entries, validated by the reader: rows (int64 [N, 4]) or their
        columns (step, point, index, up: `pol.proof.roundlog.Log.columns`)."""
        self._entries = _Columns.of(entries)
        self._on_device = {}

    def _columns(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The entries' indices and directions on `device`, copied there once per `replay`
        (from pinned memory, without a wait)."""
        key = str(device)
        if key not in self._on_device:
            e = self._entries
            cols = [torch.from_numpy(e.index), torch.from_numpy(e.up)]
            if device.type == "cuda":
                cols = [c.pin_memory().to(device, non_blocking=True) for c in cols]
            self._on_device[key] = (cols[0], cols[1])
        return self._on_device[key]

    def begin(self, t: int) -> None:
        """Step t starts: its entries by rounding point (the last replay of a step counts)."""
        if not self.replaying:
            return
        self._problems.pop(t, None)
        self._checks = [c for c in self._checks if c[0] != t]
        e = self._entries
        lo, hi = (int(v) for v in np.searchsorted(e.step, [t, t + 1]))
        self._todo = {}
        if hi > lo:
            points, starts = np.unique(e.point[lo:hi], return_index=True)
            for p, a, b in zip(points, starts, [*starts[1:], hi - lo]):
                self._todo[int(p)] = (lo + int(a), lo + int(b))

    def _logged(self, t: int, point: int, n: int, device: torch.device):
        """This point's entries as (indices as numpy, indices and directions on `device`), or
        None: no entries, or one naming a value past the point's `n` (a problem)."""
        self.sizes[point] = n
        todo = self._todo.pop(point, None)
        if todo is None:
            return None
        a, b = todo
        idx_np = self._entries.index[a:b]
        if idx_np[-1] >= n:
            self.problem(t, f"an entry names value {int(idx_np[-1])} of the {_point(point)}, "
                            f"which has {n}")
            return None
        idx, up = self._columns(device)
        return idx_np, idx[a:b], up[a:b]

    def _far(self, t: int, point: int, idx_np: np.ndarray, dist: torch.Tensor,
             within: torch.Tensor | float, unit: str) -> torch.Tensor:
        """Which logged values lie farther than `within` from a tie here (`dist`, in `unit`); the
        first of them is a problem of step t, read with `problems` (no wait here)."""
        bad = ~(dist <= within)
        self._checks.append((t, (point, idx_np, unit, _facts(bad, dist, within))))
        return bad

    def check_dense(self, t: int, point: int, unit: str, facts: torch.Tensor) -> None:
        """A check made by `apply_dense` or `apply_grid_dense` (`facts`: its result, which
        names the first far value by its index in the point's vector), read with `problems`."""
        self._checks.append((t, (point, None, unit, facts)))

    def _read_checks(self) -> None:
        """The replay's pending checks read from the device (one wait for all), as problems in
        the order they were made."""
        checks, self._checks = self._checks, []
        far = [c for _, c in checks if not isinstance(c, str)]
        values = iter(torch.stack([c[3] for c in far]).tolist() if far else [])
        for t, c in checks:
            if isinstance(c, str):
                self._problems.setdefault(t, c)
                continue
            point, idx_np, unit, _ = c
            bad, j, dist, w = next(values)
            if bad:
                self._problems.setdefault(t, _problem_text(
                    t, f"it names value {int(j) if idx_np is None else int(idx_np[int(j)])} "
                    f"of the {_point(point)}, which "
                    f"lies {dist:.3g} {unit} here (a logged value must lie within {w:.3g})"))

    @property
    def problems(self) -> dict[int, str]:
        """Replaying: step -> what was wrong with its log (the first thing found)."""
        if self._checks:
            self._read_checks()
        return self._problems

    def apply(self, t: int, point: int, fx: torch.Tensor, fr: torch.Tensor) -> None:
        """Round this point's values in the zone of a tie to even and its logged values in their
        logged direction (in `fr`, x's nearest float32 values), after checking that each logged
        value lies near the zone's edge (or the tie, without a zone) here too."""
        zone = self.zone
        if zone:
            if fx.is_cuda:  # no gathering: a gather's size would wait for the device
                _to_even(fx, fr, _tie_units(fx) < zone)
            else:
                idx = _candidates(fx, zone)
                _to_even_at(fx, fr, idx, tie_distance(fx[idx], fr[idx]), zone)
        got = self._logged(t, point, fx.numel(), fx.device)
        if got is None:
            return
        idx_np, idx, up = got
        xi = fx[idx]
        ri = xi.to(torch.float32)  # the nearest (fr may hold the even one)
        dist = _from_edge(tie_distance(xi, ri), zone)
        bad = self._far(t, point, idx_np, dist, REPLAY_FACTOR * self.window, _unit(zone))
        lo, hi = _neighbours(xi, ri)
        fr[idx] = torch.where(up & ~bad, hi, torch.where(bad, fr[idx], lo))

    def apply_grid(self, t: int, point: int, grid: Grid, r: torch.Tensor) -> None:
        """`apply` on a `Grid`: the logged values of this point rounded in their logged
        direction (in `r`, float64), after checking each lies near a tie here too (within
        `REPLAY_FACTOR` × its window)."""
        got = self._logged(t, point, r.numel(), r.device)
        if got is None:
            return
        idx_np, idx, up = got
        g = grid.g[idx]
        bad = self._far(t, point, idx_np, grid.tie[idx] / g, REPLAY_FACTOR * grid.thr[idx] / g,
                        GRID_UNIT)
        r[idx] = torch.where(bad, r[idx], grid.value(up, idx))

    def end(self, t: int, points: int) -> None:
        """Step t's rounding is done: entries for a point it does not have are a problem."""
        if self.replaying and self._todo:
            p = min(self._todo)
            self.problem(t, f"it names rounding point {p}; the step has {points} "
                            f"({', '.join(POINTS)})")
        self._todo = {}

    def problem(self, t: int, why: str) -> None:
        self._checks.append((t, _problem_text(t, why)))

    def problems_in(self, a: int, b: int) -> list[int]:
        """The steps in [a, b) whose log did not fit their replay, in order."""
        return sorted(t for t in self.problems if a <= t < b)


def _problem_text(t: int, why: str) -> str:
    return f"step {t}: the rounding log does not fit the replay: {why}"


def _facts(bad: torch.Tensor, dist: torch.Tensor, within: torch.Tensor | float) -> torch.Tensor:
    """[any far, the first far one's position (0: none), its distance, its bound] of a replay's
    check, on the device: gathered by a tensor index (an int would be read back)."""
    j = torch.argmax(bad.to(torch.uint8)).reshape(1)
    w = within.index_select(0, j) if isinstance(within, torch.Tensor) else \
        torch.full((1,), within, dtype=dist.dtype, device=dist.device)
    return torch.cat([bad.any().to(dist.dtype).reshape(1), j.to(dist.dtype),
                      dist.index_select(0, j), w])


# `RoundingLog.apply` and `apply_grid` over a whole vector: the logged directions as a dense code
# per value (`dirs`: 0 not logged, 1 down, 2 up) instead of gathered indices. Every value computes
# as the gathered form computes the logged ones (elementwise), and the first far value is the
# first in index order, as the entries are: the same rounding and the same check, with no
# data-dependent shape (a CUDA graph's replay, `pol.step.graphed`). Returns the check's facts.

def apply_dense(fx: torch.Tensor, fr: torch.Tensor, dirs: torch.Tensor, window: float,
                zone: float = 0.0) -> torch.Tensor:
    logged = dirs != 0
    dist = tie_distance(fx, fr)
    if zone:
        _to_even(fx, fr, dist < zone)  # (fx's nearest in `_neighbours` below: either works)
    dist = _from_edge(dist, zone)
    within = REPLAY_FACTOR * window
    bad = logged & ~(dist <= within)
    lo, hi = _neighbours(fx, fr)
    fr.copy_(torch.where(logged & ~bad, torch.where(dirs == 2, hi, lo), fr))
    return _facts(bad, dist, within)


def apply_grid_dense(grid: "Grid", r: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    logged = dirs != 0
    g = grid.g
    dist, within = grid.tie / g, REPLAY_FACTOR * grid.thr / g
    bad = logged & ~(dist <= within)
    value = (torch.floor(grid.x / g) + (dirs == 2).to(g.dtype)) * g
    r.copy_(torch.where(logged & ~bad, value, r))
    return _facts(bad, dist, within)


def use_proof_log(log: RoundingLog, entries: Any, a: int, b: int) -> bool:
    """The verifier's replay of steps [a, b): `log` replays the proof's entries of those steps:
    `entries` is the proof's opened log (`Proof.log`, whose `columns(a, b)` decodes and
    validates those steps' rows, as columns) or its rows (int64 [N, 4], validated:
    `Proof.roundlog`), or None (none). True (an exact-mode replay)."""
    if entries is None:
        rows = np.zeros((0, len(LOG_COLUMNS)), dtype=np.int64)
    elif hasattr(entries, "columns"):
        rows = entries.columns(a, b)
    else:
        lo, hi = np.searchsorted(entries[:, 0], [a, b])
        rows = entries[lo:hi]
    log.replay(rows)
    return True


# ----------------------------------------------------------------------------- the step


GRID_UNIT = "grid spacings from a rounding tie"


def _unit(zone: float) -> str:
    """What a replay's check of a logged float32 value measures (its problem's wording)."""
    return ("float32 ulps from the edge of the round-to-even zone" if zone
            else "float32 ulps from a rounding tie")


def _point(point: int) -> str:
    return f"{POINTS[point]} vector" if 0 <= point < len(POINTS) else f"rounding point {point}"


# the rounding points of a step, in the order it rounds them; a log entry's index is an offset
# into the point's vector
GRADIENTS, STATE, LOSS = 0, 1, 2
POINTS = ("gradients", "state", "loss")


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat([t.reshape(-1) for t in tensors])` in one call (no per-tensor Python
    operations: a step's hundreds of them cost more host time than its rounding kernels); a view
    of a single contiguous tensor."""
    return torch._utils._flatten_dense_tensors(tensors)


def _unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Views of the flat vector `flat` shaped as the tensors of `like`, in order (their dtypes
    are not used)."""
    return torch._utils._unflatten_dense_tensors(flat, like)


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _is_state(key: str, v: Any, p: torch.Tensor) -> bool:
    """An optimizer state tensor exact mode rounds: per-element (Adam's step counter aside)."""
    return (isinstance(v, torch.Tensor) and key != "step" and v.is_floating_point()
            and v.shape == p.shape)


def _state_slots(optimizer: torch.optim.Optimizer) -> list[tuple[dict, str]]:
    """(state dict, key) of every optimizer state tensor exact mode rounds, in order (parameters
    in param_groups order, keys sorted)."""
    return [(st, key) for p in _optimizer_params(optimizer)
            for st in [optimizer.state.get(p, {})] for key in sorted(st)
            if _is_state(key, st[key], p)]


def in_place(params: list[torch.Tensor], buffers: list[tuple[nn.Module, str]],
             slots: list[tuple[dict, str]]) -> list[torch.Tensor]:
    """The tensors now in the places `ExactStep.tensors` names, in its order: the parameters'
    data, the optimizer state, the buffers."""
    return ([p.data for p in params] + [st[k] for st, k in slots]
            + [m._buffers[n] for m, n in buffers])


class ExactStep:
    """One step of exact mode around a model and its optimizer.

    `__init__` puts float64 copies of the float32 parameters, optimizer state tensors and floating
    buffers in their places, as views of one flat vector; `round_grads` (after the backward
    passes) rounds the gradients to float32 values (kept in float64 for the optimizer);
    `finish` (after the optimizer's step) rounds the state into the original float32 tensors and
    puts them back (whoever holds them, a proof writer's cached state dict, sees the new values),
    and rounds the loss. `restore` puts the float32 tensors back after a failure.

    Rounding points (`POINTS`) and what their vectors hold, in order: GRADIENTS — the gradient of
    each of the optimizer's parameters that has one (param_groups order); STATE — every model
    parameter (`model.parameters()` order), every optimizer state tensor (parameters in
    param_groups order, keys sorted), every floating buffer (`model.modules()` order); LOSS."""

    def __init__(self, log: RoundingLog, model: nn.Module, optimizer: torch.optim.Optimizer,
                 t: int) -> None:
        self.log, self.model, self.optimizer, self.t = log, model, optimizer, t
        # the optimizer state tensors live in `slots`
        self.params, self.buffers, self.slots = self.tensors(model, optimizer)
        self.originals = in_place(self.params, self.buffers, self.slots)
        self.views: list[torch.Tensor] = []
        self.flat: torch.Tensor | None = None
        self.convs: list[nn.Module] = []
        log.begin(t)
        if not self.originals:
            return
        with torch.no_grad():
            flat = _flatten(self.originals).double()
            self.views = list(_unflatten(flat, self.originals))
            self._place(self.views, self.slots)
        self.flat = flat
        if flat.is_cuda:  # a GPU's float64 convolutions as matrix products (`pol.step.gemm_conv`)
            self.convs = gemm_conv.install(model)

    @staticmethod
    def tensors(model: nn.Module, optimizer: torch.optim.Optimizer
                ) -> tuple[list[torch.Tensor], list[tuple[nn.Module, str]], list[tuple[dict, str]]]:
        """What a step of `model` and `optimizer` holds in float64 and rounds, in order: the
        float32 parameters, the float32 buffers (module, name) and the optimizer state slots
        (state dict, key)."""
        params = [p for p in model.parameters() if p.dtype == torch.float32]
        buffers: list[tuple[nn.Module, str]] = []
        seen: set[int] = set()
        for m in model.modules():
            for name, b in m._buffers.items():
                if b is not None and b.dtype == torch.float32 and id(b) not in seen:
                    seen.add(id(b))
                    buffers.append((m, name))
        return params, buffers, _state_slots(optimizer)

    def _place(self, tensors: list[torch.Tensor], slots: list[tuple[dict, str]]) -> None:
        """Put `tensors` (in `originals` order) in the places of the parameters, the optimizer
        state `slots` and the buffers."""
        it = iter(tensors)
        for p in self.params:
            p.data = next(it)
        for st, key in slots:
            st[key] = next(it)
        for m, name in self.buffers:
            m._buffers[name] = next(it)

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch's model input and targets in float64 where they are floating."""
        return (x.double() if x.is_floating_point() else x,
                y.double() if y.is_floating_point() else y)

    def round_grads(self) -> None:
        """Rounding point GRADIENTS: the gradients rounded to float32 values, kept in float64,
        after `flush_small`."""
        grads = [p.grad for p in _optimizer_params(self.optimizer) if p.grad is not None]
        if not grads:
            return
        with torch.no_grad():
            flat = flush_small(_flatten(grads))  # (one gradient: a view of it; it is rewritten)
            r = round_exact(flat, self.log, self.t, GRADIENTS,
                            sizes=[g.numel() for g in grads])
            torch._foreach_copy_(grads, _unflatten(r, grads))

    def finish(self, loss: torch.Tensor | None) -> torch.Tensor | None:
        """After the optimizer's step: rounding point STATE into the float32 tensors, put back in
        place (optimizer state the step created: new float32 tensors), the gradients dropped;
        rounding point LOSS (returned as a float32 scalar)."""
        with torch.no_grad():
            for p in self.params:
                p.grad = None
            # the parameters' data are the views put in place (`p.data` makes a new object
            # at every access: never compared by identity); the state and buffers as they are
            slots = _state_slots(self.optimizer)  # with any state the optimizer's step created
            live = (self.views[:len(self.params)] + [st[k] for st, k in slots]
                    + [m._buffers[n] for m, n in self.buffers])
            if live:
                self._round_state(live, slots)
            if loss is not None:
                loss = round_exact(loss.reshape(1), self.log, self.t, LOSS).reshape(())
        self.log.end(self.t, len(POINTS))
        self._release()
        return loss

    def _round_state(self, live: list[torch.Tensor], slots: list[tuple[dict, str]]) -> None:
        """Round `live` (the state now in place, `originals` order plus any optimizer state the
        step created) as one vector into the float32 tensors, and put those back."""
        same = len(live) == len(self.views) and all(a is b for a, b in zip(live, self.views))
        vec = self.flat if same else _flatten(live)
        r = round_exact(vec, self.log, self.t, STATE)
        parts = _unflatten(r, live)
        known = {id(v): o for v, o in zip(self.views, self.originals)}
        out = [known.get(id(x)) for x in live]
        torch._foreach_copy_([o for o in out if o is not None],
                             [q for q, o in zip(parts, out) if o is not None])
        self._place([q.clone() if o is None else o for q, o in zip(parts, out)], slots)

    def restore(self) -> None:
        """After a failure inside the step: the float32 tensors back in place (their values from
        before the step), optimizer state the step created dropped."""
        with torch.no_grad():
            for p in self.params:
                p.grad = None
            if self.views:
                known = {id(v) for v in self.views}
                for p in _optimizer_params(self.optimizer):
                    st = self.optimizer.state.get(p, {})
                    for key in [k for k in st if _is_state(k, st[k], p)
                                and st[k].dtype == torch.float64 and id(st[k]) not in known]:
                        del st[key]
                self._place(self.originals, self.slots)
        self._release()

    def _release(self) -> None:
        gemm_conv.uninstall(self.convs)
        self.views, self.originals, self.flat, self.convs = [], [], None, []
