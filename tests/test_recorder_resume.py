"""The Recorder API resumes an interrupted recording (the library's `pol train --resume`)."""

import numpy as np
import pytest
import torch

from conftest import record_until
from pol import ModelSpec, Recorder
from pol.errors import IncompleteProofError
from pol.models import mlp
from pol.proof.reader import inspect_proof, open_proof
from pol.verifier import verify

ARCH = {"in_features": 8, "num_classes": 2, "hidden": [16], "dropout": 0.2}


def data():
    x = np.random.default_rng(0).normal(size=(96, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def run(out, stop_after=None, resume=False):
    x, y = data()
    model = mlp(**ARCH)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y), model_spec=ModelSpec("mlp", ARCH),
                   batch_size=16, epochs=2, k=4, seed=3, resume=resume, init="from-seed")
    return record_until(rec, model, opt, x, y, stop_after)


def test_recorder_resume_gives_the_uninterrupted_proof(tmp_path):
    run(tmp_path / "full")
    assert run(tmp_path / "cut", stop_after=7) is None
    with pytest.raises(IncompleteProofError):
        open_proof(tmp_path / "cut")
    run(tmp_path / "cut", resume=True)
    x, y = data()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = verify(tmp_path / "cut", data=str(tmp_path / "d.npz"), all_segments=True)
    assert r.valid and all(s.exact for s in r.segments), r.render()
    assert inspect_proof(tmp_path / "cut")["files"] == inspect_proof(tmp_path / "full")["files"]
