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


def _recorder(out, k=4, epochs=2, n=64, device="cpu", **kw):
    from pol.models import mlp
    x, y = make_user_data(n=n)
    model = mlp(**ARCH).to(device)
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


# ----- on a GPU (skipped here): the device snapshot's single copy, the losses and targets on it

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False])
def test_device_snapshot_of_mixed_groups_writes_the_host_bytes(tmp_path, graphs):
    """float32 and int64 groups on the GPU (one copy through the captured gather's block), a
    host group (Adam's step counts), losses as a 0-d and as a 1-D device tensor: every stored
    tensor is the host path's (whose one host group orders the file differently), and the
    losses journal is its, byte for byte."""
    from safetensors.torch import load
    from pol.proof.writer import ProofWriter
    from pol.prover.snapshot import DeviceSnapshotter
    g = torch.Generator().manual_seed(0)
    host = {"model.w": torch.randn(5, 3, generator=g), "model.n": torch.arange(4),
            "optim.0.exp_avg": torch.randn(7, generator=g), "optim.0.step": torch.tensor(3.0)}
    dev = {k: (v if k == "optim.0.step" else v.cuda()) for k, v in host.items()}
    files = []
    for name, st, snapper in (("host", host, None), ("dev", dev, DeviceSnapshotter(graphs))):
        w = ProofWriter(tmp_path / name, run_info={"spec": {"batch_size": 2}},
                        snapshotter=snapper)
        for t in (1, 2, 3):
            loss = torch.tensor(0.5 * t) if t < 3 else torch.tensor([0.25, 0.75])
            w.put_checkpoint(t, st, {"indices": np.array([[t, t + 1]] * loss.numel()),
                                     "lrs": [[0.1]] * loss.numel(),
                                     "losses": loss.to(st["model.w"].device)})
            with torch.no_grad():
                st["model.w"].add_(1.0)
                st["model.n"].add_(1)
                st["optim.0.step"].add_(1.0)
        if snapper is not None and graphs:
            assert snapper._gather.ok and snapper.waited_on == st["model.w"].device
        w.drain()
        w.abort()
        files.append([load((tmp_path / name / fmt.checkpoint_name(t)).read_bytes())
                      for t in (1, 2, 3)]
                     + [(tmp_path / name / ".pol-writing" / "losses.bin").read_bytes()])
    for a, b in zip(files[0][:3], files[1][:3]):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert files[0][3] == files[1][3]


@needs_cuda
@pytest.mark.parametrize("k", [1, 3])
def test_device_targets_and_losses(tmp_path, k):
    """Targets on the GPU are checked by the writer thread behind the snapshot's own wait: a
    wrong batch is found by close() at the latest; right ones verify, with the losses
    journaled as trained."""
    for wrong_at in (1, None):
        rec, model, opt, x, y = _recorder(tmp_path / f"p{wrong_at}", k=k, epochs=1,
                                          device="cuda", allow_nondeterministic=True)
        losses = []
        with pytest.raises(ConfigError, match="step 1: targets differ") if wrong_at else \
                _no_error():
            for idx in rec.epoch_batches(0):
                xb, yb = torch.from_numpy(x[idx]).cuda(), torch.from_numpy(y[idx]).cuda()
                rec.record_batch(idx, xb, (yb + 1) % 3 if rec.t == wrong_at else yb)
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                rec.step(loss)
                losses.append(loss.item())
            rec.close()
        if wrong_at is None:
            assert np.array_equal(np.load(rec.path / fmt.LOSSES), np.array(losses, np.float32))


def _no_error():
    import contextlib
    return contextlib.nullcontext()
