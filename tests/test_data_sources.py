"""Data beyond in-memory arrays (issue 12): a map-style torch Dataset (rebuilt by the verifier from
a factory it names), a DataLoader-style loader with worker processes, and a memory-mapped token
file. Each proof verifies VALID with every segment bitwise exact; a tampered copy is rejected; the
verifier given other data refuses (exit 2). Leaves are those of an ArrayDataset of the same rows,
and are cached on disk under a content key."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pol
from pol.datasets import ArrayDataset, LazyDataset, TokenFile, TorchDatasetSource
from pol.errors import ConfigError
from pol.proof import hashing
from pol.proof.hashing import merkle_root, sample_leaves
from pol.spec import ModelSpec
from pol.verifier import verify

from conftest import (USER_MODEL_KWARGS, load_manifest, make_user_data, run_cli,
                      tampered_copy, train_attached, user_model)

EPOCHS, K = 2, 3

# A factory module the prover names in the spec and the verifier names with --data: items are
# (tensor input, int label), the rows of make_user_data.
_FACTORY = '''
import os

import numpy as np
import torch
from torch.utils.data import Dataset


def _data(n=200, d=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, classes)).astype(np.float32)
    return x, (x @ w).argmax(1).astype(np.int64)


class Rows(Dataset):
    def __init__(self, seed=0, flip=None):
        self.x, self.y = _data(seed=seed)
        if flip is not None:
            self.x[flip, 0] += 1.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None:  # read in a DataLoader worker
            with open("worker_reads", "a") as f:
                f.write(f"{os.getpid()}\\n")
        return torch.from_numpy(self.x[i]), int(self.y[i])


def make(seed=0):
    return Rows(seed)


def make_other(seed=0):
    return Rows(0, flip=0)
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """`polds_rows:make` importable (a module in tmp_path, the current directory)."""
    (tmp_path / "polds_rows.py").write_text(textwrap.dedent(_FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POL_CACHE_DIR", str(tmp_path / "cache"))
    import importlib
    import sys
    sys.modules.pop("polds_rows", None)
    return importlib.import_module("polds_rows")


def _check(proof, data, tmp_path):
    r = verify(proof, data=data, all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)
    r = verify(tampered_copy(proof, tmp_path / "tampered", K * 2), data=data, all_segments=True)
    assert not r.valid


def test_dataset_leaves_are_those_of_the_same_arrays(factory):
    x, y = make_user_data()
    lazy = LazyDataset(TorchDatasetSource(factory.make()))
    want = sample_leaves(x, y)
    assert np.array_equal(hashing.stream_leaves(lazy.source, workers=1), want)
    assert np.array_equal(hashing.stream_leaves(lazy.source, workers=3, chunk=7), want)
    assert np.array_equal(sample_leaves(lazy.x, lazy.y), want)
    assert np.array_equal(lazy.x[[3, 1]], x[[3, 1]]) and np.array_equal(lazy.y[[3, 1]], y[[3, 1]])


def test_recorder_on_a_torch_dataset_verifies(factory, tmp_path):
    ds = factory.make()
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = pol.Recorder(tmp_path / "proof", model=model, optimizer=opt, data=ds,
                       data_params={"factory": "polds_rows:make", "kwargs": {"seed": 0}},
                       model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                       epochs=EPOCHS, k=K, seed=1, init="from-seed")
    for epoch in range(EPOCHS):
        for idx in rec.epoch_batches(epoch):
            x, y = rec.dataset.x[idx], rec.dataset.y[idx]
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            rec.record_batch(idx, x, y)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.step(loss)
    rec.close()
    spec = load_manifest(rec.path)["spec"]["data"]
    assert spec["name"] == "torch-dataset"
    assert spec["root"] == merkle_root(sample_leaves(*make_user_data())).hex()
    _check(rec.path, "polds_rows:make", tmp_path)
    # the verifier's factory must build the committed bytes; a path is not a factory
    r = run_cli("verify", rec.path, "--data", "polds_rows:make_other")
    assert r.exit_code == 2 and "committed dataset" in r.output
    r = run_cli("verify", rec.path, "--data", str(tmp_path / "polds_rows.py"))
    assert r.exit_code == 2 and "module:callable" in r.output
    r = run_cli("verify", rec.path)
    assert r.exit_code == 2 and "polds_rows:make" in r.output


def test_attach_with_dataloader_workers(factory, tmp_path):
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt, loader = pol.attach(model=model, optimizer=opt, data=factory.make(),
                             data_params={"factory": "polds_rows:make"}, num_workers=2,
                             out=tmp_path / "proof", batch_size=32, epochs=EPOCHS, k=K, seed=2,
                             model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)),
                             init="from-seed")
    train_attached(model, opt, loader, EPOCHS)
    assert opt.root_digest is not None
    pids = set((tmp_path / "worker_reads").read_text().split())
    assert len(pids) == 2 * EPOCHS and str(os.getpid()) not in pids  # 2 workers an epoch
    _check(opt.proof, "polds_rows:make", tmp_path)


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield np.zeros(3), 0

    def __len__(self):
        return 1


def test_torch_dataset_refusals(factory, tmp_path):
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = dict(model=model, optimizer=opt, out=tmp_path / "p", batch_size=32, epochs=1,
              model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), init="from-seed")
    with pytest.raises(ConfigError, match="factory"):
        pol.attach(data=factory.make(), **kw)
    with pytest.raises(ConfigError, match="differs"):
        pol.attach(data=factory.make(), data_params={"factory": "polds_rows:make_other"}, **kw)
    (tmp_path / "polds_trains.py").write_text("import pol\n\npol.fit('x')\n\n\ndef make():\n"
                                              "    return None\n")
    with pytest.raises(ConfigError, match="dataset factory module polds_trains"):
        pol.attach(data=factory.make(), data_params={"factory": "polds_trains:make"}, **kw)
    with pytest.raises(ConfigError, match="DataLoader"):
        pol.attach(data=torch.utils.data.DataLoader(factory.make()), **kw)
    with pytest.raises(ConfigError, match="num_workers"):
        pol.attach(data=make_user_data(), num_workers=-1, **kw)
    with pytest.raises(ConfigError, match="pairs"):
        TorchDatasetSource([np.zeros(3)])
    with pytest.raises(ConfigError, match="label"):
        TorchDatasetSource([(np.zeros(3), 0.5)])
    with pytest.raises(ConfigError, match="IterableDataset"):
        TorchDatasetSource(_Stream())
    src = TorchDatasetSource([(np.zeros(3, np.float32), 0), (np.zeros(4, np.float32), 1)])
    with pytest.raises(ConfigError, match="one dtype and shape"):
        src.batch(np.array([0, 1]))
    with pytest.raises(ConfigError, match="one dtype and shape"):
        hashing.stream_leaves(src, workers=1)


# ----- a memory-mapped token file

BLOCK, VOCAB = 16, 48
GPT = {"vocab_size": VOCAB, "block_size": BLOCK, "n_layer": 1, "n_head": 2, "n_embd": 16}


def _tokens(path, n_windows=40, seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, VOCAB, size=n_windows * (BLOCK + 1) + 5).astype(np.uint16)
    toks.tofile(path)
    return toks


def test_token_file_windows_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POL_CACHE_DIR", str(tmp_path / "cache"))
    toks = _tokens(tmp_path / "train.bin")
    tf = TokenFile(tmp_path / "train.bin", BLOCK)
    assert len(tf) == 40  # the 5 trailing tokens make no window
    win = toks[:40 * (BLOCK + 1)].reshape(40, BLOCK + 1)
    same = ArrayDataset(np.ascontiguousarray(win[:, :-1]), win[:, 1:].astype(np.int64))
    lazy = LazyDataset(tf)
    leaves = sample_leaves(lazy.x, lazy.y)
    assert np.array_equal(leaves, sample_leaves(same.x, same.y))
    cached = list((tmp_path / "cache" / "leaves").iterdir())
    assert len(cached) == 1 and cached[0].stat().st_size == 40 * 32
    hashing._cache.clear()
    monkeypatch.setattr(hashing, "stream_leaves", lambda *a, **k: pytest.fail("not cached"))
    assert np.array_equal(sample_leaves(lazy.x, lazy.y), leaves)


def _gpt_proof(tmp_path, path):
    model = pol.models.build_model("gpt", **GPT)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    opt, loader = pol.attach(model=model, optimizer=opt, data=TokenFile(path, BLOCK),
                             out=tmp_path / "proof", model_spec=ModelSpec("gpt", dict(GPT)),
                             batch_size=8, epochs=EPOCHS, k=K, seed=4, init="from-seed",
                             loss="lm_cross_entropy", prepare="tokens")
    train_attached(model, opt, loader, EPOCHS, loss_fn=opt.loss_fn)
    return opt


def test_token_file_gpt_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("POL_CACHE_DIR", "")
    path = tmp_path / "train.bin"
    _tokens(path)
    opt = _gpt_proof(tmp_path, path)
    data = load_manifest(opt.proof)["spec"]["data"]
    assert data["name"] == "token-file" and data["params"]["block_size"] == BLOCK
    _check(opt.proof, str(path), tmp_path)
    other = tmp_path / "other.bin"
    _tokens(other, seed=1)
    r = run_cli("verify", opt.proof, "--data", other)
    assert r.exit_code == 2 and "sha256" in r.output
    r = run_cli("verify", opt.proof)
    assert r.exit_code == 2 and "--data FILE" in r.output


@pytest.mark.parametrize("share", [True, False], ids=["data-shared", "data-reloaded"])
def test_token_file_replay_workers(tmp_path, monkeypatch, share):
    """Replay workers that do not fork get the windows' values (small data) or reopen the file
    and check its digest (large data), and replay as the parent does."""
    import pol.verifier.parallel as par
    monkeypatch.setenv("POL_CACHE_DIR", "")
    path = tmp_path / "train.bin"
    _tokens(path)
    opt = _gpt_proof(tmp_path, path)
    monkeypatch.setattr(par, "FORCE_START_METHOD", "forkserver")
    if not share:
        monkeypatch.setattr(par, "SHARE_DATA_MAX_BYTES", 0)
    one = verify(opt.proof, data=str(path), all_segments=True)
    two = verify(opt.proof, data=str(path), all_segments=True, workers=2)
    assert two.valid and two.segments == one.segments and all(s.exact for s in two.segments)
