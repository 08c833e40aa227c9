"""The verifier's speed-ups change no result: fused distances are bit-for-bit `all_distances`, the
segment count known before the d1 pass is the count chosen after it, cached datasets are fresh
copies, a checkpoint is not read again when a replay needs it right after the pass, and the init
regeneration check reuses the model built for the replay only where that gives the same answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pol.datasets import load_dataset
from pol.proof.reader import Proof, open_proof
from pol.verifier import verify
from pol.verifier import selection
from pol.verifier.distances import METRICS, all_distances
from pol.verifier.parallel import distances


def _pairs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10_000, generator=g, dtype=torch.float64)
    b = a + 1e-3 * torch.randn(10_000, generator=g, dtype=torch.float64)
    z = torch.zeros(10_000, dtype=torch.float64)
    e = torch.zeros(0, dtype=torch.float64)
    return [(a, b), (a, a.clone()), (a, z), (z, z), (z, a), (e, e), (a, -a)]


@pytest.mark.parametrize("metrics", [METRICS, ("l2",), ("cos", "l1"), ("linf", "cos")])
def test_fused_distances_bitwise(metrics):
    for a, b in _pairs():
        want = all_distances(a, b, metrics)
        assert distances(a, b, metrics) == want
        na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
        assert distances(a, b, metrics, na, nb) == want
        assert list(distances(a, b, metrics)) == list(want)


def test_fused_distances_unknown_metric():
    a = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown metric"):
        distances(a, a, ("l3",))


def test_segment_count_known_before_the_pass(mlp_proof):
    proof = open_proof(mlp_proof)
    n = len(proof.manifest.checkpoints) - 1
    rng = np.random.default_rng(0)
    for q in (1, 2, 3, 50):
        for r in (0, 1, 2, 50):
            for all_segments in (False, True):
                d1s = list(rng.random(n))
                chosen = selection.choose(proof.manifest, d1s, q, all_segments, r, b"e")
                assert selection.planned(proof.manifest, q, all_segments, r)[0] == len(chosen)


def test_dataset_cache_returns_fresh_copies():
    a, at = load_dataset("synthetic-cifar", {"seed": 1, "n_train": 64, "n_test": 16})
    b, bt = load_dataset("synthetic-cifar", {"seed": 1, "n_train": 64, "n_test": 16})
    assert a.x is not b.x and np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert np.array_equal(at.x, bt.x)
    a.x[:] = 0  # a caller's change reaches no other caller
    c, _ = load_dataset("synthetic-cifar", {"seed": 1, "n_train": 64, "n_test": 16})
    assert np.array_equal(c.x, b.x)
    d, _ = load_dataset("synthetic-cifar", {"seed": 2, "n_train": 64, "n_test": 16})
    assert not np.array_equal(d.x, b.x)
    lim, _ = load_dataset("synthetic-cifar", {"seed": 1, "n_train": 64, "n_test": 16,
                                              "limit": 10})
    assert len(lim) == 10 and np.array_equal(lim.x, b.x[:10])


def test_dataset_cache_skips_a_replaced_loader(monkeypatch):
    import pol.datasets as ds
    load_dataset("digits", {})
    calls = []

    def fake(params, data_dir):
        calls.append(1)
        x = np.zeros((4, 64), np.float32)
        y = np.zeros(4, np.int64)
        return ds.ArrayDataset(x, y), ds.ArrayDataset(x, y)

    monkeypatch.setitem(ds.DATASETS, "digits", fake)
    tr, _ = load_dataset("digits", {})
    assert calls and len(tr) == 4


def test_checkpoints_read_once_where_possible(mlp_proof, monkeypatch):
    reads = []
    orig = Proof.load_checkpoint

    def counting(self, t):
        reads.append(t)
        return orig(self, t)

    monkeypatch.setattr(Proof, "load_checkpoint", counting)
    r = verify(mlp_proof, all_segments=True)
    assert r.valid
    n = len(open_proof(mlp_proof).manifest.checkpoints)
    # --all in one process: each segment is replayed while the pass holds its two checkpoints
    assert len(reads) == n  # was 3n - 2: every segment read its start and its end again
    assert sorted(set(reads)) == sorted(open_proof(mlp_proof).manifest.checkpoints)
    reads.clear()
    top = verify(mlp_proof, entropy=b"e", random_per_epoch=0)
    assert top.valid and len(top.segments) >= 2 and len(reads) == n  # top-Q: kept in the pass
    reads.clear()
    verify(mlp_proof, entropy=b"e")  # the random segments too: a small proof's are all kept
    assert len(reads) == n  # (with nothing kept beyond two, they are read again:
    # test_verify_fixed_cost.py::test_a_small_proofs_checkpoints_are_read_once_even_for_...)


def test_early_replay_error_order(mlp_proof, proof_copy, monkeypatch):
    """A replay that fails during the pass raises at the replay step, and the first failing
    segment in order is the one raised (as the replay loop after the pass would)."""
    import pol.verifier.parallel as par
    from pol.errors import ProofFormatError
    orig = par.replay_segment
    failing = set()

    def flaky(ctx, proof, data, leaves, names, a, b, *rest, **kw):
        if a in failing:
            raise ProofFormatError(f"boom at {a}")
        return orig(ctx, proof, data, leaves, names, a, b, *rest, **kw)

    monkeypatch.setattr(par, "replay_segment", flaky)
    ck = open_proof(mlp_proof).manifest.checkpoints
    failing.update({ck[3], ck[5]})
    with pytest.raises(ProofFormatError, match=f"boom at {ck[3]}$"):
        verify(mlp_proof, all_segments=True)


def test_init_regeneration_same_answer(mlp_proof, proof_copy):
    """The reused-model shortcut and hardened.regenerated_init_matches agree, on an honest proof
    (regenerated) and on one whose W_0 was altered (not regenerated)."""
    from pol.verifier import hardened as hd
    from pol.verifier.core import _param_names
    from pol.step import build_context

    proof = open_proof(mlp_proof)
    spec = proof.manifest.spec
    names = _param_names(build_context(spec, torch.device("cpu")).model)
    w0 = proof.load_checkpoint(0)
    assert hd.regenerated_init_matches(spec, w0, names)
    rep = verify(mlp_proof)
    assert next(c for c in rep.checks if c.name == "init regeneration").status == "pass"
    bad = dict(w0)
    bad[names[0]] = w0[names[0]] + 1e-6
    assert not hd.regenerated_init_matches(spec, bad, names)
