"""A replayed segment's batches prepared on a background thread (`parallel._Prefetched`, issue 13)
give the replay of the inline path bit for bit: the same outcomes, the same final state; a batch
whose recorded hash or data was changed still makes `data_ok` False; an error (in a step, in the
batch preparation, in the progress callback) comes out as before and leaves no thread behind."""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest
import torch

from pol.datasets import ArrayDataset
from pol.errors import ProofFormatError
from pol.proof.hashing import sample_leaves
from pol.proof.reader import open_proof
from pol.step import build_context, state_tensors
from pol.verifier import parallel as par
from pol.verifier.session import load_verifier_data, param_names


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    """digits-mlp (dropout: the step draws from torch's RNG), 2 epochs, k = 7: T = 90 steps,
    13 full segments and a short last one."""
    from pol.prover.trainer import train_task
    out = tmp_path_factory.mktemp("prefetch") / "proof"
    train_task("digits-mlp", out, epochs=2, k=7)
    return open_proof(out)


def _replay(proof, prefetch: bool, monkeypatch, data=None, hardened: bool = True,
            step_done=None):
    """Every segment replayed in this process: (outcomes, the final replayed state)."""
    spec = proof.manifest.spec
    data = data or load_verifier_data(spec, None)
    leaves = sample_leaves(data.x, data.y)
    ctx = build_context(spec, torch.device("cpu"))
    monkeypatch.setattr(par, "PREFETCH", prefetch)
    ck = proof.manifest.checkpoints
    outs = [par.replay_segment(ctx, proof, data, leaves, param_names(ctx.model), a, b,
                               ("l2", "cos"), hardened, proof.load_checkpoint, step_done)
            for a, b in zip(ck, ck[1:])]
    return outs, {k: v.clone() for k, v in state_tensors(ctx.model, ctx.optimizer).items()}


def _same(o1: par.SegmentOutcome, o2: par.SegmentOutcome) -> bool:
    """Equal field by field (NaN equal to NaN)."""
    for f in dataclasses.fields(o1):
        a, b = getattr(o1, f.name), getattr(o2, f.name)
        if isinstance(a, float) and math.isnan(a) and isinstance(b, float) and math.isnan(b):
            continue
        if a != b:
            return False
    return True


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pol-replay-prefetch"]


@pytest.mark.parametrize("hardened", [True, False])
def test_prefetched_replay_is_the_inline_one(proof, monkeypatch, hardened):
    before = threading.active_count()
    inline, s_inline = _replay(proof, False, monkeypatch, hardened=hardened)
    ahead, s_ahead = _replay(proof, True, monkeypatch, hardened=hardened)
    assert len(inline) == len(proof.manifest.checkpoints) - 1
    assert all(o.exact and o.data_ok and not o.loss_bad for o in inline)  # honest, same CPU
    assert all(_same(a, b) for a, b in zip(inline, ahead))
    assert s_inline.keys() == s_ahead.keys()
    assert all(torch.equal(s_inline[k], s_ahead[k]) for k in s_inline)
    assert threading.active_count() == before and not _prefetch_threads()


def test_the_default_is_inline_on_a_cpu_and_ahead_on_a_gpu(proof, monkeypatch):
    data = load_verifier_data(proof.manifest.spec, None)
    cpu, gpu = (type("Ctx", (), {"device": torch.device(d)})() for d in ("cpu", "cuda"))
    monkeypatch.setattr(par, "PREFETCH", None)
    assert not par._use_prefetch(cpu, data) and par._use_prefetch(gpu, data)
    lazy = type("Lazy", (), {"x": object(), "y": object()})()  # a torch Dataset read on demand
    assert not par._use_prefetch(gpu, lazy)
    monkeypatch.setattr(par, "PREFETCH", True)
    assert par._use_prefetch(cpu, data)
    monkeypatch.setattr(par, "PREFETCH", False)
    assert not par._use_prefetch(gpu, data)


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_changed_batch_hash_or_sample_fails_data_ok(proof, monkeypatch, prefetch):
    k = proof.manifest.spec.k
    t_hash, t_data = 3 * k + 2, 8 * k + 5  # in segments 3 and 8
    hashes = proof.batch_hashes.copy()
    hashes[t_hash, 0] ^= 1
    monkeypatch.setattr(proof, "batch_hashes", hashes)
    data = load_verifier_data(proof.manifest.spec, None)
    x = data.x.copy()
    sample = proof.batch(t_data)[-1]
    x[sample] += 1  # in every batch that holds it (one an epoch)
    outs, _ = _replay(proof, prefetch, monkeypatch, data=ArrayDataset(x, data.y))
    bad = [i for i, o in enumerate(outs) if not o.data_ok]
    T = proof.manifest.total_steps
    want = {3} | {t // k for t in range(T) if sample in proof.batch(t)}
    assert 8 in want and len(want) >= 3
    assert bad == sorted(want)


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_failing_step_raises_as_before_and_leaves_no_thread(proof, monkeypatch, prefetch):
    before = threading.active_count()
    orig = par.update

    def failing(ctx, x, y, lrs, t):
        if t == 9:
            raise RuntimeError("shape mismatch (injected)\nsecond line")
        return orig(ctx, x, y, lrs, t)
    monkeypatch.setattr(par, "update", failing)
    with pytest.raises(ProofFormatError, match=r"\(step 9\): shape mismatch \(injected\)$"):
        _replay(proof, prefetch, monkeypatch)
    assert threading.active_count() == before and not _prefetch_threads()


class _Boom(Exception):
    pass


class _FailingColumn:
    """Rows of an array, until the gather of the `fail_at`-th batch raises."""

    def __init__(self, a: np.ndarray, fail_at: int):
        self.a, self.fail_at, self.calls = a, fail_at, 0

    def __getitem__(self, idx):
        self.calls += 1
        if self.calls == self.fail_at:
            raise _Boom("read error (injected)")
        return self.a[idx]


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_failing_gather_or_callback_raises_as_is_and_leaves_no_thread(proof, monkeypatch,
                                                                        prefetch):
    before = threading.active_count()
    data = load_verifier_data(proof.manifest.spec, None)
    leaves = sample_leaves(data.x, data.y)
    ctx = build_context(proof.manifest.spec, torch.device("cpu"))
    names = param_names(ctx.model)
    monkeypatch.setattr(par, "PREFETCH", prefetch)
    k = proof.manifest.spec.k

    def replay(d, step_done=None):
        return par.replay_segment(ctx, proof, d, leaves, names, 0, k, ("l2",), False,
                                  proof.load_checkpoint, step_done)
    lazy = type("Data", (), {"x": _FailingColumn(data.x, 4), "y": data.y})()
    with pytest.raises(_Boom, match="injected"):  # not a ProofFormatError: as the inline path
        replay(lazy)
    steps = [0]

    def progress():
        steps[0] += 1
        if steps[0] == 2:
            raise KeyboardInterrupt  # the user stops the verification
    with pytest.raises(KeyboardInterrupt):
        replay(data, progress)
    assert steps[0] == 2
    assert threading.active_count() == before and not _prefetch_threads()
    assert replay(data).data_ok  # and the next segment replays as usual


def test_prefetched_items_in_order_errors_in_turn_and_close_stops_the_producer():
    produced, closed = [], []

    def items(n, fail_at=None):
        try:
            for i in range(n):
                if i == fail_at:
                    raise _Boom(i)
                produced.append(i)
                yield i
        finally:
            closed.append(True)
    p = par._Prefetched(items(5), 2, torch.device("cpu"))
    assert list(p) == [0, 1, 2, 3, 4]
    p.close()
    p = par._Prefetched(items(5, fail_at=3), 1, torch.device("cpu"))
    assert [next(p), next(p), next(p)] == [0, 1, 2]
    with pytest.raises(_Boom):
        next(p)
    p.close()
    produced.clear()
    p = par._Prefetched(items(10**6), 1, torch.device("cpu"))  # a producer that waits in put
    assert next(p) == 0
    p.close()
    assert len(produced) <= 4 and len(closed) == 3 and not _prefetch_threads()
