"""The Recorder's per-step calls: what they record and refuse, and how little they issue on the
training thread (the work is deferred to checkpoints or to the writer thread)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pol.errors import ConfigError
from pol.proof import format as fmt
from pol.prover.recorder import Recorder
from pol.prover.snapshot import ALIGN, PinnedPool, block_offsets
from pol.proof.host import Layout
from pol.spec import ModelSpec

from conftest import make_user_data

ARCH = {"in_features": 12, "num_classes": 3, "hidden": [8]}


def _recorder(out, k=4, epochs=2, n=64, **kw):
    from pol.models import mlp
    x, y = make_user_data(n=n)
    model = mlp(**ARCH)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y), model_spec=ModelSpec("mlp", ARCH),
                   batch_size=16, epochs=epochs, k=k, seed=3, init="from-seed", **kw)
    return rec, model, opt, x, y


def _train_step(rec, model, opt, x, y, idx, loss_as=lambda loss: loss):
    xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    rec.record_batch(idx, xb, yb)
    opt.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    rec.step(loss_as(loss))
    return loss.item()


def _journal(rec, name, dtype):
    rec.writer.drain()
    return np.fromfile(rec.path / ".pol-writing" / f"{name}.bin", dtype=dtype)


@pytest.mark.parametrize("k", [1, 3])
def test_rows_and_losses_in_every_form_reach_the_journals(tmp_path, k):
    """Indices (short last batch padded with -1), lrs and losses given as a tensor, a 1-element
    1-D tensor, a float64 tensor or a Python float, are what the writer journals."""
    forms = [lambda v: v, lambda v: v.reshape(1), lambda v: v.double(), lambda v: v.item()]
    rec, model, opt, x, y = _recorder(tmp_path / "p", k=k, n=56)  # 4 steps a epoch, last short
    want_idx, want_loss, want_lr = [], [], []
    for e in range(rec.epochs):
        for s, idx in enumerate(rec.epoch_batches(e)):
            for g in opt.param_groups:
                g["lr"] = 0.1 / (1 + rec.t)
            want_lr.append(0.1 / (1 + rec.t))
            row = np.full(16, -1)
            row[:len(idx)] = idx
            want_idx.append(row)
            want_loss.append(_train_step(rec, model, opt, x, y, idx, forms[rec.t % len(forms)]))
    assert rec.close()
    assert np.array_equal(np.load(rec.path / fmt.INDICES), np.array(want_idx))
    assert np.array_equal(np.load(rec.path / fmt.LRS)[:, 0], np.array(want_lr))
    assert np.array_equal(np.load(rec.path / fmt.LOSSES), np.array(want_loss, np.float32))


def test_a_refused_batch_leaves_nothing_behind(tmp_path):
    """Mid-epoch: a batch with a sample three times, one with a sample of an earlier batch, and
    one with wrong targets are refused, and the right batch is then accepted."""
    rec, model, opt, x, y = _recorder(tmp_path / "p")
    try:
        batches = list(rec.epoch_batches(0))
        _train_step(rec, model, opt, x, y, batches[0])
        b = batches[1].copy()
        triple = b.copy()
        triple[3] = triple[5] = triple[9]
        earlier = b.copy()
        earlier[7] = batches[0][2]
        for bad in (triple, earlier):
            with pytest.raises(ConfigError, match="twice"):
                rec.record_batch(bad)
        with pytest.raises(ConfigError, match="targets differ"):
            rec.record_batch(b, targets=torch.from_numpy((y[b] + 1) % 3))
        _train_step(rec, model, opt, x, y, b)
        with pytest.raises(ConfigError, match="twice"):  # b is used now
            rec.record_batch(batches[2][:8].tolist() + b[:8].tolist())
    finally:
        rec.abort()


def test_bad_indices_of_any_integer_type_are_refused(tmp_path):
    rec, *_ = _recorder(tmp_path / "p")
    try:
        for bad in (np.array([-1] + list(range(15)), np.int32), np.arange(49, 65, dtype=np.uint16),
                    np.array([0] * 15 + [2**40]), np.arange(16).astype(">i8") - 1):
            with pytest.raises(ConfigError, match="outside the dataset"):
                rec.record_batch(bad)
        rec.record_batch(np.arange(16).astype(">i8"))  # big-endian, in range: accepted
    finally:
        rec.abort()


def test_a_changed_hyperparameter_is_refused(tmp_path):
    rec, model, opt, x, y = _recorder(tmp_path / "p")
    batches = list(rec.epoch_batches(0))
    _train_step(rec, model, opt, x, y, batches[0])
    opt.param_groups[0]["momentum"] = 0.5
    with pytest.raises(ConfigError, match="'momentum'.*0.9 to 0.5"):
        rec.record_batch(batches[1])


def test_deferred_target_checks_run_on_the_writer_thread(tmp_path):
    """Targets checked off the training thread start no thread of their own: the writer runs
    them before writing the checkpoint that ends their window."""
    rec, model, opt, x, y = _recorder(tmp_path / "p", k=2)
    rec._targets.defer_host = True
    ran_on = []
    write = rec.writer._write

    def spy(t, snap):
        ran_on.append(threading.current_thread().name)
        write(t, snap)
    rec.writer._write = spy
    before = {t.name for t in threading.enumerate()}
    for s, idx in enumerate(rec.epoch_batches(0)):
        xb = torch.from_numpy(x[idx])
        yb = torch.from_numpy(y[idx] if s != 2 else (y[idx] + 1) % 3)
        rec.record_batch(idx, xb, yb)
        rec.step(F.cross_entropy(model(xb), torch.from_numpy(y[idx])))
    assert {t.name for t in threading.enumerate()} <= before
    rec.writer.drain()
    assert set(ran_on) == {"pol-proof-writer"}
    with pytest.raises(ConfigError, match="step 2: targets differ"):
        for idx in rec.epoch_batches(1):
            _train_step(rec, model, opt, x, y, idx)
        rec.close()


def _ops_per_call(rec, model, opt, x, y, batches):
    """{range: torch ops issued directly inside it}, over non-checkpoint steps."""
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches:
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            with record_function("pol.record_batch"):
                rec.record_batch(idx, xb, yb)
            loss = F.cross_entropy(model(xb), yb)
            with record_function("pol.step"):
                rec.step(loss)
    out: dict[str, list[str]] = {"pol.record_batch": [], "pol.step": []}
    for ev in prof.events():
        if ev.cpu_parent is not None and ev.cpu_parent.name in out:
            out[ev.cpu_parent.name].append(ev.name)
    return out


def test_a_step_without_a_checkpoint_issues_few_torch_ops(tmp_path):
    """Host targets: record_batch reads them as numpy (one call, whose internals the profiler
    shows as up to four ops); step reads the loss (one op). No stacking, copying or
    detaching per step."""
    rec, model, opt, x, y = _recorder(tmp_path / "p", k=100, epochs=1)
    try:
        ops = _ops_per_call(rec, model, opt, x, y, list(rec.epoch_batches(0))[:3])
        assert len(ops["pol.record_batch"]) <= 3 * 4, ops
        assert ops["pol.step"] == ["aten::item"] * 3, ops
    finally:
        rec.abort()


class _HostPool(PinnedPool):
    def alloc(self, n, dtype):  # unpinned: no CUDA here
        return torch.empty(n, dtype=dtype)


def test_pinned_sets_are_views_of_one_block_with_the_cuda_groups_first():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    groups = [(torch.float32, cuda, [], 10), (torch.float32, cpu, [], 3),
              (torch.int64, cuda, [], 2), (torch.float16, cuda, [], 0)]
    layout = Layout(key=(), groups=groups, header=None)
    pool = _HostPool()
    bufs = pool.get(layout)
    assert [(b.dtype, b.numel()) for b in bufs] == [(st, n) for st, _, _, n in groups]
    base = bufs[0].data_ptr()
    offsets, cuda_bytes = block_offsets([40, 16, 0])  # what GraphGather's device block holds
    assert [bufs[i].data_ptr() - base for i in (0, 2)] == offsets[:2]  # (3 is empty)
    assert bufs[1].data_ptr() - base == cuda_bytes and cuda_bytes % ALIGN == 0
    block = pool.cuda_block(bufs)
    assert block.data_ptr() == base and block.numel() == cuda_bytes
    block.copy_(torch.arange(cuda_bytes, dtype=torch.uint8))  # one copy fills every CUDA group
    assert bufs[0].view(torch.uint8).tolist() == list(range(40))
    assert bufs[2].view(torch.uint8).tolist() == list(range(offsets[1], offsets[1] + 16))
    pool.put(bufs)
    assert pool.get(layout) is bufs  # reused, not reallocated
    flat = pool.get_flat(5, torch.float32)
    pool.put([flat])
    assert pool.cuda_block([flat]) is None and pool.get_flat(5, torch.float32) is flat
