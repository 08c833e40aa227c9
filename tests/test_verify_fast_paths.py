"""The verifier's faster paths give the answers of the slower ones: the data-dependence probe from
the real step's negated gradients equals a whole step on the negated loss, bit for bit; the losses
read back once are the per-step `float(loss)`s; the dataset commitment cache is used only for the
bytes it was made from; a checkpoint read ahead on a thread is the one read in turn, and its error
comes in turn; `import pol.verifier` imports neither scipy.stats nor torch's compiler stack."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pol.datasets import ArrayDataset
from pol.errors import IntegrityError
from pol.spec import OptimizerSpec, StepSpec
from pol.step import build_context, load_state, state_tensors, update
from pol.tasks import build_spec
from pol.verifier import parallel as par
from pol.verifier import session as sess


def _flip_both_ways(spec, train, steps: int = 2):
    """(ratio by a whole step on the negated loss, ratio by the negated gradients, states equal)
    for the first `steps` steps of `spec`."""
    ctx = build_context(spec, torch.device("cpu"))
    name = spec.optimizer.name
    rng = np.random.default_rng(0)
    out = []
    for t in range(steps):
        idx = rng.choice(len(train), spec.batch_size, replace=False)
        x, y = torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx])
        lrs = [spec.optimizer.lr] * len(ctx.optimizer.param_groups)
        here = {k: v.detach().clone() for k, v in state_tensors(ctx.model, ctx.optimizer).items()}
        w_a = par._flat_params(ctx)
        flipped = par._flipped_step(ctx, x, y, lrs, t)
        load_state(ctx.model, ctx.optimizer, name, here)
        update(ctx, x, y, lrs, t)
        slow = par._flip_ratio(par._flat_params(ctx), flipped, w_a)
        slow_state = {k: v.detach().clone()
                      for k, v in state_tensors(ctx.model, ctx.optimizer).items()}
        load_state(ctx.model, ctx.optimizer, name, here)
        _, fast = par._probed_step(ctx, name, x, y, lrs, t, None)
        st = state_tensors(ctx.model, ctx.optimizer)
        same = st.keys() == slow_state.keys() and all(torch.equal(st[k], slow_state[k])
                                                      for k in st)
        out.append((slow, fast, same))
    return out


@pytest.mark.parametrize("task,optimizer,features", [
    ("digits-mlp", None, None),  # dropout, SGD momentum
    ("digits-cnn", None, StepSpec(clip_grad_norm=0.05)),  # Adam, clipped gradients
    ("digits-mlp", OptimizerSpec(name="adamw", lr=1e-3, weight_decay=1e-2, amsgrad=True),
     StepSpec(accumulation=2)),
    ("digits-mlp", OptimizerSpec(name="rmsprop", lr=1e-3, momentum=0.9, weight_decay=1e-4),
     StepSpec(clip_grad_value=1e-3)),
])
def test_negated_gradient_probe_is_the_flipped_step(task, optimizer, features):
    spec, train, _ = build_spec(task)
    if optimizer is not None:
        spec = dataclasses.replace(spec, optimizer=optimizer)
    if features is not None:
        spec = dataclasses.replace(spec, step=features)
    for slow, fast, same_state in _flip_both_ways(spec, train):
        assert fast == slow and same_state
        assert 0 < fast < float("inf")


def test_losses_read_back_once_are_the_per_step_floats():
    vals = [torch.tensor(1.2345678, dtype=dt) for dt in (torch.float32, torch.bfloat16,
                                                         torch.float64, torch.float16)]
    assert par._host_losses(vals) == [float(v) for v in vals]
    assert par._host_losses([]) == []
    with pytest.raises(TypeError):
        par._host_losses([None])  # as float(None) did


def _data(seed: int = 0, n: int = 50):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.random((n, 6), dtype=np.float32), rng.integers(0, 3, n))


@pytest.fixture
def small_sets_cached(monkeypatch):
    monkeypatch.setattr(sess, "COMMITMENT_CACHE_MIN_SAMPLES", 0)


def test_commitment_cache_hit_only_for_the_same_bytes(tmp_path, monkeypatch, small_sets_cached):
    from pol.proof import hashing
    monkeypatch.setenv("POL_CACHE_DIR", str(tmp_path / "c"))
    calls = []
    orig = hashing.sample_leaves
    monkeypatch.setattr(hashing, "sample_leaves", lambda x, y: calls.append(1) or orig(x, y))
    d = _data()
    want = orig(d.x, d.y)
    leaves, root, digest = sess.dataset_leaves(d)
    assert calls == [1] and np.array_equal(leaves, want)
    assert root == hashing.merkle_root(want) and digest == hashing.content_digest(d.x, d.y)
    files = list((tmp_path / "c").rglob("*.commitment"))
    assert len(files) == 1
    again = sess.dataset_leaves(_data())  # the same bytes: read from the cache
    assert calls == [1] and np.array_equal(again[0], want) and again[1] == root
    other = _data()
    other.x[3, 2] += 1  # one value changed: another key, hashed again
    o_leaves, o_root, _ = sess.dataset_leaves(other)
    assert calls == [1, 1] and o_root != root and not np.array_equal(o_leaves, want)
    files[0].write_bytes(files[0].read_bytes()[:-1])  # a truncated entry is not used
    assert np.array_equal(sess.dataset_leaves(_data())[0], want) and calls == [1, 1, 1]


def test_commitment_cache_location(tmp_path, monkeypatch, small_sets_cached):
    monkeypatch.setenv("POL_CACHE_DIR", "")  # off
    sess.dataset_leaves(_data(1))
    monkeypatch.delenv("POL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    sess.dataset_leaves(_data(1))
    assert len(list((tmp_path / "xdg" / "pol").rglob("*.commitment"))) == 1
    assert not list(tmp_path.glob("*.commitment"))


def test_small_sets_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("POL_CACHE_DIR", str(tmp_path / "c"))
    leaves, root, _ = sess.dataset_leaves(_data(2, n=sess.COMMITMENT_CACHE_MIN_SAMPLES - 1))
    assert root is not None and len(leaves) == sess.COMMITMENT_CACHE_MIN_SAMPLES - 1
    assert not (tmp_path / "c").exists()


def test_verify_with_cached_commitment(mlp_proof, tmp_path, monkeypatch, small_sets_cached):
    from pol.verifier import verify
    monkeypatch.setenv("POL_CACHE_DIR", str(tmp_path / "c"))
    first = verify(mlp_proof, entropy=b"e")
    assert list((tmp_path / "c").rglob("*.commitment"))
    second = verify(mlp_proof, entropy=b"e")
    assert first.valid and second.valid
    assert [c.status for c in first.checks] == [c.status for c in second.checks]


def test_read_ahead_same_checkpoints_and_errors_in_turn(mlp_proof, proof_copy):
    from conftest import checkpoint_path
    from pol.proof.reader import open_proof
    proof = open_proof(mlp_proof)
    ctx = build_context(proof.manifest.spec, torch.device("cpu"))
    ck = proof.manifest.checkpoints
    plain = list(sess.CheckpointStore(proof, ctx).stream(ck))
    ahead = list(sess.CheckpointStore(proof, ctx).stream(ck, ahead=True))
    assert [t for t, _ in ahead] == list(ck)
    for (_, a), (_, b) in zip(plain, ahead):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bad = proof_copy(mlp_proof)
    p = checkpoint_path(bad, ck[4])
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1
    p.write_bytes(bytes(raw))
    bad_proof = open_proof(bad)
    seen = []
    with pytest.raises(IntegrityError):
        for t, _ in sess.CheckpointStore(bad_proof, ctx).stream(ck, ahead=True):
            seen.append(t)
    assert seen == list(ck[:4])


def test_import_verifier_leaves_heavy_modules_alone():
    code = ("import sys, pol.verifier, pol.cli.verify; "
            "print(sorted(m for m in ('scipy.stats', 'torch._dynamo', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"


def _checks(report):
    return [(c.name, c.status, c.value) for c in report.checks]


def test_overlapped_pass_gives_the_same_report(mlp_proof, proof_copy, monkeypatch):
    """With the work beside the replays on threads (what a GPU verification does: the next
    checkpoint read ahead, the KS test of W_0), an honest proof and one with a forged W_0 get
    the reports they get in turn."""
    from conftest import checkpoint_path
    from safetensors.torch import load_file, save_file

    from pol.proof.writer import rehash_manifest
    from pol.verifier import core, verify
    forged = proof_copy(mlp_proof)
    p = checkpoint_path(forged, 0)
    w0 = load_file(str(p))
    name = next(k for k in w0 if k.endswith("weight"))
    w0[name] = w0[name] * 3  # far from the claimed init: KS fails
    save_file(w0, str(p))
    rehash_manifest(forged)
    want = {pr: verify(pr, entropy=b"e") for pr in (mlp_proof, forged)}
    monkeypatch.setattr(core, "_overlaps", lambda s: True)
    for pr, rep in want.items():
        got = verify(pr, entropy=b"e")
        assert _checks(got) == _checks(rep) and got.valid == rep.valid
    assert want[mlp_proof].valid and not want[forged].valid
    assert any(c.name == "initialization" and c.status == "fail" for c in want[forged].checks)
    import threading
    import time
    deadline = time.monotonic() + 10  # the reader and the KS thread end with the verification
    while any(t.name.startswith(("pol-checkpoint-read", "pol-init-ks"))
              for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith(("pol-checkpoint-read", "pol-init-ks"))]


def test_overlapped_pass_holds_the_gil_in_short_slices_and_restores_it(mlp_proof,
                                                                      monkeypatch):
    """Where work runs beside the replays (a GPU), the replay pass runs with a short switch
    interval (a helper thread's import gives the GIL back within 0.5 ms); the user's interval is
    back after, also when verification fails; nothing changes where nothing overlaps."""
    import sys

    from pol.verifier import core, verify
    seen = []
    real = core._replay_pass

    def spy(*a, **kw):
        seen.append(sys.getswitchinterval())
        return real(*a, **kw)
    monkeypatch.setattr(core, "_replay_pass", spy)
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        assert verify(mlp_proof, entropy=b"e").valid
        monkeypatch.setattr(core, "_overlaps", lambda s: True)
        assert verify(mlp_proof, entropy=b"e").valid
        assert seen == [0.004, 0.0005] and sys.getswitchinterval() == 0.004
        monkeypatch.setattr(core, "_replay_pass", lambda *a, **kw: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            verify(mlp_proof, entropy=b"e")
        assert sys.getswitchinterval() == 0.004
    finally:
        sys.setswitchinterval(before)


def test_overlapped_pass_takes_the_ks_pvalues_from_a_helper_process(mlp_proof, monkeypatch):
    """A GPU verification (work beside the replays) in a process without scipy.stats asks a
    helper process for the KS p-values (scipy's import stays off the replay's GIL), gets the
    report it gets in turn, and ends the helper."""
    import sys

    from pol.verifier import core, initcheck, verify
    want = verify(mlp_proof, entropy=b"e")
    helpers = []

    class Spy(initcheck.PvalueHelper):
        def __init__(self):
            super().__init__()
            helpers.append(self)
            self.asked = self.closed = False

        def pvalues(self, pairs):
            self.asked = True
            return super().pvalues(pairs)

        def close(self):
            self.closed = True
            super().close()
    monkeypatch.setattr(initcheck, "PvalueHelper", Spy)
    monkeypatch.setattr(core, "_overlaps", lambda s: True)
    monkeypatch.delitem(sys.modules, "scipy.stats")
    got = verify(mlp_proof, entropy=b"e")
    assert _checks(got) == _checks(want) and got.valid
    assert [(h.asked, h.closed, h._proc) for h in helpers] == [(True, True, None)]


def test_top_q_replays_the_rest_without_waiting_for_the_ks_test(mlp_proof, monkeypatch):
    """The segments a top-Q pass did not replay (the random ones) replay before W_0's checks
    take the KS test's result (on a GPU it may still be running: a helper process importing
    scipy); the report lists the checks in the same order as before."""
    import threading

    from pol.verifier import core, executors, verify
    want = verify(mlp_proof, entropy=b"e")
    replaying = threading.Event()
    seen = []
    real_results, real_init = executors.InProcess.results, core.init_checks.initialization

    def results(self, segments, bar):
        replaying.set()
        return real_results(self, segments, bar)

    def slow_ks(*a, **kw):
        seen.append(replaying.wait(timeout=10))  # the KS test ends once the replays have begun
        return real_init(*a, **kw)
    monkeypatch.setattr(executors.InProcess, "results", results)
    monkeypatch.setattr(core.init_checks, "initialization", slow_ks)
    monkeypatch.setattr(core, "_overlaps", lambda s: True)
    got = verify(mlp_proof, entropy=b"e")
    assert seen == [True]
    assert _checks(got) == _checks(want) and got.valid


def test_load_state_refuses_a_non_finite_entry_before_changing_anything():
    """`load_state` checks every float entry for NaN/Inf at once (one read per device): a NaN in
    an optimizer moment or an infinity in a weight is refused, naming the first bad entry in
    order, before the model or the optimizer is touched; a finite checkpoint loads."""
    from pol.errors import ProofFormatError
    spec, train, _ = build_spec("digits-cnn")
    ctx = build_context(spec, torch.device("cpu"))
    name = spec.optimizer.name
    x, y = torch.from_numpy(train.x[:spec.batch_size]), torch.from_numpy(train.y[:spec.batch_size])
    update(ctx, x, y, [spec.optimizer.lr] * len(ctx.optimizer.param_groups), 0)
    good = {k: v.detach().clone() for k, v in state_tensors(ctx.model, ctx.optimizer).items()}
    before = {k: v.detach().clone() for k, v in state_tensors(ctx.model, ctx.optimizer).items()}
    moments = [k for k in good if k.startswith("optim.") and k.endswith("exp_avg_sq")]
    weights = [k for k in good if k.startswith("model.") and good[k].is_floating_point()]
    assert moments and len(weights) > 1
    cases = [({moments[-1]: float("nan")}, rf"optimizer state {moments[-1][6:]} has NaN/Inf"),
             ({weights[1]: float("inf"), moments[0]: float("nan")},
              rf"checkpoint entry {weights[1]} has NaN/Inf")]
    for bad, match in cases:
        ck = {k: v.clone() for k, v in good.items()}
        for k, value in bad.items():
            ck[k].view(-1)[0] = value
        ck[weights[0]].add_(1.0)  # would change the model if it were loaded
        with pytest.raises(ProofFormatError, match=match):
            load_state(ctx.model, ctx.optimizer, name, ck)
        now = state_tensors(ctx.model, ctx.optimizer)
        assert all(torch.equal(now[k], before[k]) for k in before)
    load_state(ctx.model, ctx.optimizer, name, good)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_top_q_that_picks_every_segment_replays_them_as_they_are_read(mlp_proof, monkeypatch,
                                                                        overlap):
    """Where top-Q picks every segment whatever the updates (Q plus the random ones cover each
    epoch), the segments replay as the pass reads them, as --all's do, not after their epoch's
    picks are known; the report is the one the stream path gives (the same top-q / random
    labels), and a Q that leaves segments out still takes the stream."""
    from pol.proof.reader import open_proof
    from pol.verifier import core, executors, selection, verify
    m = open_proof(mlp_proof).manifest
    per_epoch = max(len(v) for v in selection.by_epoch(m.checkpoints, m.steps_per_epoch).values())
    assert per_epoch > 2
    monkeypatch.setattr(core, "_overlaps", lambda s: overlap)
    events = []
    real_early, real_choose = executors.InProcess.early, selection.choose

    def early(self, a, b, start, end):
        events.append("early")
        return real_early(self, a, b, start, end)

    def choose(*a, **kw):
        events.append("choose")
        return real_choose(*a, **kw)
    monkeypatch.setattr(executors.InProcess, "early", early)
    monkeypatch.setattr(selection, "choose", choose)
    got = verify(mlp_proof, q=per_epoch, entropy=b"e")
    n = len(m.checkpoints) - 1
    assert events == ["early"] * n + ["choose"]
    assert len(got.segments) == n and {s.why for s in got.segments} == {"top-q"}
    events.clear()
    monkeypatch.setattr(core.selection, "every_segment_chosen", lambda *a, **kw: False)
    want = verify(mlp_proof, q=per_epoch, entropy=b"e")
    assert events.index("choose") < n  # the stream: the last epoch's picks after choose
    assert _checks(got) == _checks(want) and got.valid
    assert [(s.start, s.why, s.error) for s in got.segments] == \
        [(s.start, s.why, s.error) for s in want.segments]
    monkeypatch.undo()
    assert not selection.every_segment_chosen(m, 1, 1)
