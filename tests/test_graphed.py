"""Exact mode's step as CUDA graphs (`pol.step.graphed`): on a GPU, steps by the graphs leave the
model, the optimizer state, the losses and the rounding log bitwise as eager exact steps do (a
short batch, a learning rate that changes every step, accumulation and a capture that fails among
them); on a CPU, the mask sink a capture logs through takes the masks the log records, and the
reasons a context is not captured."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pol.spec import DataSpec, ModelSpec, OptimizerSpec, ScheduleSpec, StepSpec, TrainingSpec
from pol.step import graphed, update
from pol.step.context import step_context
from pol.step import exact
from pol.step.exact import GRADIENTS, STATE, ExactStep, RoundingLog, round_exact

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _spec(**step) -> TrainingSpec:
    return TrainingSpec(model=ModelSpec("user", {}), optimizer=OptimizerSpec(),
                        schedule=ScheduleSpec(), data=DataSpec(name="user", size=64, root="0" * 64),
                        step=StepSpec(exact=True, **step))


class _Net(nn.Module):
    """Convolution, BatchNorm, pooling and a linear head: what exact mode captures on a GPU."""

    def __init__(self, item: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
        self.item = item

    def forward(self, x):
        if self.item and float(x.abs().max()) < 0:  # reads a value: no graph can hold this step
            x = -x
        return self.body(x)


def _data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _train(device: str, graphs: bool, monkeypatch, opt: str = "sgd", steps: int = 7,
           batches=(16, 16, 16, 8, 16, 16, 16), item: bool = False, replay=None, **step):
    """`steps` exact steps of a fresh model (seeded) by `update()`, graphs on or off: the final
    state, the losses, the log rows and how the steps ran."""
    monkeypatch.setenv(graphed.ENV, "1" if graphs else "0")
    torch.manual_seed(0)
    model = _Net(item).to(device)
    if opt == "sgd":
        o = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        o = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctx = step_context(_spec(**step), model, o, torch.device(device))
    if replay is not None:  # the verifier's side: the steps replay these log entries
        ctx.exact.replay(replay)
    x, y = _data()
    losses, at = [], 0
    for t in range(steps):
        n = batches[t % len(batches)]
        idx = torch.arange(at, at + n) % len(x)
        at += n
        lrs = [0.05 / (1 + t)] if opt == "sgd" else [1e-3 * (t + 1)]
        losses.append(update(ctx, x[idx], y[idx], lrs, t))
    rows = ctx.exact.take() if replay is None else ctx.exact.problems
    state = {**{f"p.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()},
             **{f"o.{i}.{k}": v.detach().cpu().clone() for i, s in enumerate(o.state.values())
                for k, v in s.items() if isinstance(v, torch.Tensor)}}
    return state, [float(v) for v in losses], rows, graphed.describe(ctx), model


def _same(a, b) -> None:
    sa, la, ra, _, _ = a
    sb, lb, rb, _, _ = b
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"differ: {differ}"
    assert la == lb
    if isinstance(ra, dict):  # replays: their problems
        assert ra == rb
    else:
        assert np.array_equal(ra, rb)


# ----------------------------------------------------------------------------- CPU


def test_sink_takes_the_masks_the_log_records():
    torch.manual_seed(1)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _data(16)
    for t in range(2):  # the second step rounds existing momentum too
        log = RoundingLog(2.0 ** -4, 2.0 ** -40)  # a wide window: entries at every point
        log.deferred = True
        snap = {k: v.clone() for k, v in model.state_dict().items()}
        ostate = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
        masks = {}
        for which in ("log", "sink"):
            model.load_state_dict(snap)
            opt.state.clear()
            for p, s in ostate.items():
                opt.state[p] = {k: v.clone() for k, v in s.items()}
            sink = graphed._MaskSink(log) if which == "sink" else log
            opt.zero_grad(set_to_none=True)
            ex = ExactStep(sink, model, opt, t)
            nn.functional.cross_entropy(model(x.double()), y).backward()
            ex.round_grads()
            opt.step()
            ex.finish(None)
            if which == "sink":
                masks = sink.masks
        rows = log.take()
        assert set(masks) == {GRADIENTS, STATE}
        for point, (near, up) in masks.items():
            mine = rows[rows[:, 1] == point]
            idx = near.nonzero().squeeze(1)
            assert len(mine) > 0
            assert np.array_equal(mine[:, 2], idx.numpy())
            assert np.array_equal(mine[:, 3], up[idx].numpy().astype(np.int64))


def test_why_a_context_is_not_captured(monkeypatch):
    model = _Net()
    ctx = step_context(_spec(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert graphed._why_not(ctx) == "not on a CUDA device"
    monkeypatch.setenv(graphed.ENV, "0")
    assert graphed._why_not(ctx) == f"{graphed.ENV}=0"
    monkeypatch.setenv(graphed.ENV, "1")
    ctx.exact = None
    assert graphed._why_not(ctx) == "not an exact-mode step"


def _entries(t: int, point: int, idx, up) -> np.ndarray:
    rows = np.zeros((len(idx), 4), dtype=np.int64)
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = t, point, idx, up
    return rows


@pytest.mark.parametrize("grid,zone", [(False, 0.0), (False, 2.0 ** -3), (True, 2.0 ** -3)])
def test_dense_apply_rounds_and_checks_as_the_gathered_one(grid, zone):
    """The graphs' dense rounding of the logged values (and of the round-to-even zone) gives the
    eager replay's values and its problem (a forged entry: a value far from where entries lie),
    naming the same value."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4000, generator=g, dtype=torch.float64) * 3
    f = x[:200].float()  # exact ties: the midpoints of float32 neighbours
    x[:200] = (f.double() + torch.nextafter(f, torch.tensor(float("inf"))).double()) / 2
    window = 2.0 ** -4 if not zone else 2.0 ** -6
    rec = RoundingLog(window, 2.0 ** -40 if grid else 0.0, zone)
    rec.deferred = False
    sizes = [1000, 3000]
    point = GRADIENTS if grid else STATE
    round_exact(x.clone(), rec, 0, point, sizes=sizes)
    rows = rec.take()
    assert len(rows) > 10
    if grid:  # the value farthest from a tie: an entry naming it is a forger's
        gr = exact.Grid(x.clone(), sizes, rec.noise, window, rec.grid)
        far = int(torch.argmax(gr.tie / gr.g))
    else:
        far = int(torch.argmax((exact.tie_distance(x, x.float()) - zone).abs()))
    assert far not in set(rows[:, 2])
    forged = _entries(0, point, [far], [1])
    recorded = round_exact(x.clone(), RoundingLog(window, rec.noise, zone), 0, point,
                           sizes=sizes)
    for entries in (rows, np.concatenate([rows, forged])):
        entries = entries[np.argsort(entries[:, 2], kind="stable")]
        eager = RoundingLog(window, rec.noise, zone)
        eager.replay(entries)
        eager.begin(0)
        want = round_exact(x.clone(), eager, 0, point, sizes=sizes)
        if len(entries) == len(rows):
            assert torch.equal(want, recorded)
        dense = RoundingLog(window, rec.noise, zone)
        dense.replay(entries)
        dense.begin(0)
        dirs = torch.zeros(4000, dtype=torch.int8)
        dirs[torch.from_numpy(entries[:, 2])] = torch.from_numpy(entries[:, 3]).to(torch.int8) + 1
        if grid:
            gr = exact.Grid(x.clone(), sizes, rec.noise, window, rec.grid)
            r = gr.r
            facts = exact.apply_grid_dense(gr, r, dirs)
            got, unit = r.to(torch.float32), exact.GRID_UNIT
        else:
            fx = x.clone()
            got = fx.to(torch.float32)
            facts, unit = exact.apply_dense(fx, got, dirs, window, zone), exact._unit(zone)
        dense.check_dense(0, point, unit, facts)
        assert torch.equal(got, want)
        assert dense.problems == eager.problems
        assert bool(eager.problems) == (len(entries) > len(rows))


def test_cpu_steps_make_no_graph_state(monkeypatch):
    *_, how, _ = _train("cpu", True, monkeypatch, steps=3)
    assert how["graphed"] is False and how["why_not"] == "not on a CUDA device"


# ----------------------------------------------------------------------------- GPU


@cuda
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_graphed_steps_equal_eager_steps(monkeypatch, opt):
    eager = _train("cuda", False, monkeypatch, opt=opt)
    graph = _train("cuda", True, monkeypatch, opt=opt)
    assert graph[3]["graphed"] is True, graph[3]
    assert eager[3]["graphed"] is False
    _same(eager, graph)
    assert graph[4].body[0].weight.dtype == torch.float32  # float32 between steps
    assert graph[4].body[0].weight.grad is None


@cuda
def test_graphed_accumulation_equals_eager(monkeypatch):
    a = _train("cuda", False, monkeypatch, batches=(16,), accumulation=2)
    b = _train("cuda", True, monkeypatch, batches=(16,), accumulation=2)
    assert b[3]["graphed"] is True
    _same(a, b)


@cuda
def test_a_failed_capture_warns_and_steps_eagerly(monkeypatch):
    a = _train("cuda", False, monkeypatch, item=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = _train("cuda", True, monkeypatch, item=True)
    assert any("could not be captured" in str(x.message) for x in w)
    assert b[3]["graphed"] is False and b[3]["why_not"].startswith("capture failed")
    _same(a, b)
    torch.manual_seed(3)  # the device's random numbers work after the failed capture
    assert torch.randn(4, device="cuda").isfinite().all()


@cuda
def test_graphed_replays_equal_eager_replays(monkeypatch):
    """The verifier's side: a recording replayed by graphs and eagerly gives the recorded state
    bitwise; a forged entry (a value far from any tie) is the same problem both ways."""
    rec = _train("cuda", True, monkeypatch, opt="adamw")
    rows = rec[2]
    eager = _train("cuda", False, monkeypatch, opt="adamw", replay=rows)
    graph = _train("cuda", True, monkeypatch, opt="adamw", replay=rows)
    assert graph[3]["graphed"] is True, graph[3]
    _same(eager, graph)
    assert graph[2] == {}
    assert all(torch.equal(rec[0][k], graph[0][k]) for k in rec[0])
    # a forged entry at step 5 (a graphed step): a value of the STATE vector not logged
    forged = rows.copy()
    taken = set(rows[(rows[:, 0] == 5) & (rows[:, 1] == STATE), 2].tolist())
    extra = np.array([[5, STATE, min(set(range(len(taken) + 1)) - taken), 1]], dtype=np.int64)
    forged = np.concatenate([forged, extra])
    forged = forged[np.lexsort((forged[:, 2], forged[:, 1], forged[:, 0]))]
    e2 = _train("cuda", False, monkeypatch, opt="adamw", replay=forged)
    g2 = _train("cuda", True, monkeypatch, opt="adamw", replay=forged)
    _same(e2, g2)


def test_when_steps_are_captured_run_or_step_eagerly(monkeypatch):
    """`graphed_step`'s choices, with a stand-in for the graphs (CPU): the warm-up steps eagerly,
    a capture, replays; a batch of another shape eagerly; after the optimizer's state is
    dropped (the verifier loading checkpoint 0), eagerly until its layout is back, then the
    graphs again, also on state tensors that are new but of the captured layout."""
    from pol.step import core
    ran: list[str] = []

    class Fake:
        fit = graphed.GraphedExactStep.fit

        def __init__(self, key, now, optimizer_step):
            self.key, self.addresses = key, [v.data_ptr() for v in now]
            self.layout = graphed._layout(now)

        def capture(self, ctx, parts, t, step_eagerly):
            ran.append("capture")
            return step_eagerly()

        def run(self, ctx, parts, t, moved=None):
            ran.append("run")
            return core._step(ctx, parts, t)

    monkeypatch.setattr(graphed, "GraphedExactStep", Fake)
    monkeypatch.setattr(graphed, "_why_not", lambda ctx: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx = step_context(_spec(), model, opt, torch.device("cpu"))
    x, y = _data()

    def step(t: int, n: int = 16) -> None:
        parts = [core.step_inputs(ctx, x[:n], y[:n], None)]
        before = len(ran)
        graphed.graphed_step(ctx, parts, t, lambda: core._step(ctx, parts, t),
                             lambda: core.optimizer_step(ctx.features, opt))
        if len(ran) == before:
            ran.append("eager")
    for t in range(6):
        step(t, 8 if t == 4 else 16)
    assert ran == ["eager", "eager", "capture", "run", "eager", "run"]
    opt.state.clear()  # checkpoint 0 loaded: no optimizer state
    step(6)
    step(7)
    for st in opt.state.values():  # a later checkpoint loaded: new tensors, the same layout
        st["momentum_buffer"] = st["momentum_buffer"].clone()
    step(8)
    assert ran[6:] == ["eager", "run", "run"]
