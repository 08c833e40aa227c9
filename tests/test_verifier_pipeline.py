"""The verifier's pipeline: policies as frozen data, one selection, named checks, the options
contract, and an external init reported as such."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pol.proof.reader import open_proof
from pol.spec import ModelSpec
from pol.verifier import verify
from pol.verifier.checks import CheckName
from pol.verifier.core import VerifyOptions
from pol.verifier.policy import HARDENED, PAPER, Defence, resolve
from pol.verifier import selection

from conftest import USER_MODEL_KWARGS, check, make_user_data, record_until, save_npz, user_model


def test_policies_are_frozen_data():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HARDENED.relative_error_max = 9.0  # type: ignore[misc]
    assert PAPER.defences == frozenset() and not PAPER.hardened and PAPER.extra_random == 0
    assert set(HARDENED.defences) == set(Defence)
    mine = resolve("hardened", relative_error_max=0.25)
    assert mine.relative_error_max == 0.25 and HARDENED.relative_error_max == 0.5
    assert resolve(HARDENED) is HARDENED


def test_options_and_keywords_together_are_refused(mlp_proof):
    with pytest.raises(TypeError, match="not both"):
        verify(mlp_proof, VerifyOptions(), q=2)


def test_a_custom_policy_runs_only_its_checks(mlp_proof):
    only_epochs = dataclasses.replace(PAPER, name="mine",
                                      defences=frozenset({Defence.EPOCH_STRUCTURE}))
    r = verify(mlp_proof, policy=only_epochs)
    names = {c.name for c in r.checks}
    assert "epoch structure" in names and "data dependence" not in names and r.valid
    assert r.policy == "mine"


def test_report_names_are_the_check_names(mlp_proof):
    r = verify(mlp_proof)
    d = json.loads(r.to_json())
    assert {c["name"] for c in d["checks"]} <= {n.value for n in CheckName}
    assert all(type(c.name) is str for c in r.checks)


def test_selection_views_agree(mlp_proof):
    m = open_proof(mlp_proof).manifest
    n_seg = len(m.checkpoints) - 1
    rng = np.random.default_rng(1)
    for q, r in [(1, 0), (1, 1), (3, 2), (50, 50)]:
        d1s = list(rng.random(n_seg))
        chosen = selection.choose(m, d1s, q, False, r, b"x")
        assert selection.planned(m, q, False, r)[0] == len(chosen)
        # the stream's picks (top-Q of each epoch) are the chosen top-q segments
        stream = selection.TopQStream(q, m.steps_per_epoch, m.checkpoints)
        picked = []
        for i in range(n_seg):
            picked += [j for j, _, _ in stream.add(i, d1s[i], None, None)]
        picked += [j for j, _, _ in stream.flush()]
        assert sorted(picked) == [i for i, why in chosen if why == "top-q"]


def test_external_init_is_reported_not_failed(tmp_path):
    from pol.prover.recorder import Recorder
    x, y = make_user_data(n=96)
    model = user_model(seed=5)  # the user's own weights, not the seeded init
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = Recorder(tmp_path / "p", model=model, optimizer=opt, data=(x, y),
                   model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                   epochs=2, k=3, init="external")
    record_until(rec, model, opt, x, y)
    r = verify(tmp_path / "p", data=str(save_npz(tmp_path / "d.npz", x, y)))
    assert r.valid, r.render()
    assert check(r, "init regeneration").status == "skip"
    assert "external" in check(r, "init regeneration").reason
    assert check(r, "init rank correlation").status == "pass"


def test_public_api_is_small_typed_and_torch_free_to_import(mlp_proof):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import pol, sys; print('torch' in sys.modules);"
                          "print(sorted(pol.__all__))"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "False"
    import pol
    for name in pol.__all__:
        assert getattr(pol, name) is not None, name
    info = pol.inspect(mlp_proof)
    assert isinstance(info, pol.ProofInfo) and info.total_steps == 90
    assert pol.inspect_proof(mlp_proof) == info.to_dict()
    assert pol.verify is verify and pol.HARDENED is HARDENED


def test_dispute_result_is_typed(mlp_proof, tmp_path):
    import pol
    from safetensors.torch import save_file
    from pol.proof.reader import open_proof as _open
    final = _open(mlp_proof).load_checkpoint(90)
    model = {k[len("model."):]: v for k, v in final.items() if k.startswith("model.")}
    save_file(model, str(tmp_path / "w.safetensors"))
    res = pol.dispute(str(tmp_path / "w.safetensors"), [str(mlp_proof)], VerifyOptions())
    assert isinstance(res, pol.DisputeResult) and res.winner == str(mlp_proof)
    assert res.claims[0].valid and res.to_dict()["claims"][0]["ends_at_model"]
