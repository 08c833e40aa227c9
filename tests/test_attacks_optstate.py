"""Issue 10 §1 forgeries built from the public attack toolkit (pol.attacks):

- optimizer-state: W_0 is the forger's honest seeded init, the displacement to W_T is carried by
  checkpoint 0's optimizer state (Adam moments / SGD momentum buffer so large that every real
  gradient is absorbed below half an ulp): replay lands bitwise whatever the data;
- sparse-epoch: genuine steps, a forged jump to W_T in two segments, the whole run claimed as one
  epoch (steps_per_epoch not validated, indices not a permutation).

The verifier landed before issue 10 accepts both (optimizer-state: every policy, also --all;
sparse-epoch: --policy paper always, the default unless its random segment hits the jump). The
hardened checks of issue 10 must reject them, each by the check named here.

Target: iris-logreg, 2 epochs, k = 4 (S = 8, T = 16): the whole file runs in a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pol.attacks import ATTACKS, run_attack
from pol.cli.attack import NAMES, attack
from pol.proof.reader import open_proof
from pol.step import MODEL_PREFIX, OPTIM_PREFIX, load_state, state_tensors, update

ENTROPY = b"pol-optstate-tests" * 2
# spoof -> the check of the hardened verifier expected to reject it
EXPECTED = {"optstate-adam": "initial optimizer state", "optstate-sgd": "initial optimizer state",
            "sparse": "epoch structure"}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from pol.prover.trainer import train_task
    p = tmp_path_factory.mktemp("optstate") / "target"
    train_task("iris-logreg", p, epochs=2, k=4, overwrite=True)
    return p


@pytest.fixture(scope="module")
def spoofs(target):
    base = target.parent
    out = {}
    for key, name, kw in (("optstate-adam", "optimizer-state", {"optimizer": "adam"}),
                          ("optstate-sgd", "optimizer-state", {"optimizer": "sgd"}),
                          ("sparse", "sparse-epoch", {})):
        out[key] = (run_attack(name, target, base / key, measure_honest=False, **kw), base / key)
    return out


def _final_model(path):
    p = open_proof(path)
    st = p.load_checkpoint(p.manifest.total_steps)
    return {k: v for k, v in st.items() if k.startswith(MODEL_PREFIX)}


def _context(path):
    from pol.step import build_context
    from pol.verifier.core import load_verifier_data
    spec = open_proof(path).manifest.spec
    return spec, build_context(spec, torch.device("cpu")), load_verifier_data(spec, None)


def test_registered():
    assert {"optimizer-state", "sparse-epoch"} <= set(ATTACKS)
    assert tuple(NAMES) == tuple(ATTACKS)


@pytest.mark.parametrize("key", ["optstate-adam", "optstate-sgd"])
def test_optstate_well_formed_and_ends_at_target(spoofs, target, key):
    res, path = spoofs[key]
    assert res.grad_evals == 0 and res.name == "optimizer-state"
    p = open_proof(path)  # well-formed: manifest, arrays, digests
    for t in p.manifest.checkpoints:
        p.load_checkpoint(t)
    ck0 = p.load_checkpoint(0)
    assert any(k.startswith(OPTIM_PREFIX) for k in ck0)  # the channel: state at checkpoint 0
    # W_0 is the honest init of the forger's seed
    spec, ctx, _ = _context(path)
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, ck0[MODEL_PREFIX + k])
    mine, theirs = _final_model(path), _final_model(target)
    for k, v in theirs.items():
        assert torch.allclose(mine[k], v, rtol=0, atol=1e-6), k
    assert np.isfinite(p.losses).all()  # forward losses recorded


@pytest.mark.parametrize("key", ["optstate-adam", "optstate-sgd"])
def test_optstate_replay_ignores_the_data(spoofs, key):
    """The honest step (`update()`) from checkpoint 0 lands bitwise on checkpoint k, model and
    optimizer state, with the recorded batches and with other data altogether."""
    _, path = spoofs[key]
    p = open_proof(path)
    spec, ctx, data = _context(path)
    b = p.manifest.checkpoints[1]
    want = p.load_checkpoint(b)
    rng = np.random.default_rng(0)
    for mode in ("recorded", "other"):
        load_state(ctx.model, ctx.optimizer, spec.optimizer.name, p.load_checkpoint(0))
        for t in range(b):
            idx = p.batch(t)
            x, y = data.x[idx], data.y[idx]
            if mode == "other":
                x = (x + rng.normal(0, 3, x.shape)).astype(x.dtype)
                y = rng.integers(0, 3, len(y)).astype(y.dtype)
            update(ctx, torch.from_numpy(x), torch.from_numpy(y), p.lrs[t].tolist(), t)
        got = state_tensors(ctx.model, ctx.optimizer)
        assert set(got) == set(want)
        for k, v in want.items():
            assert torch.equal(got[k].detach().to(v.dtype), v), (mode, k)


def test_sparse_epoch_structure(spoofs, target):
    res, path = spoofs["sparse"]
    p = open_proof(path)
    m = p.manifest
    for t in m.checkpoints:
        p.load_checkpoint(t)
    n, B = m.spec.data.size, m.spec.batch_size
    assert m.epochs == 1 and m.steps_per_epoch == m.total_steps != math.ceil(n / B)
    mine, theirs = _final_model(path), _final_model(target)
    assert all(torch.equal(mine[k], v) for k, v in theirs.items())  # ends at W_T exactly
    assert res.grad_evals >= open_proof(target).manifest.total_steps  # genuine steps


def test_cli_set(target, tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(attack, ["optimizer-state", "--target", str(target), "--out",
                                    str(out), "--no-honest", "--set", "optimizer=sgd",
                                    "--set", "losses=nan"])
    assert r.exit_code == 0, r.output
    assert '"optimizer": "sgd"' in r.output and "grad evals   0" in r.output
    assert open_proof(out).manifest.spec.optimizer.name == "sgd"
    assert np.isnan(open_proof(out).losses).all()


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_rejected_by_hardened(spoofs, key):
    from pol.verifier import verify
    _, path = spoofs[key]
    report = verify(path, entropy=ENTROPY)
    failed = {c.name for c in report.checks if c.failed}
    assert not report.valid
    assert EXPECTED[key] in failed, failed
    if key.startswith("optstate"):
        # the principled check fires on its own: the replayed steps ignore their gradients
        assert {"data dependence", "hyperparameters"} <= failed, failed
    # the published verifier accepts every one of them (a finding, docs/SECURITY.md)
    assert verify(path, policy="paper").valid
