"""Hugging Face: a `transformers.Trainer` run recorded with `pol.integrations.hf.attach_trainer`
(the README's example: a tiny randomly initialized GPT-2 on a `datasets.Dataset` of seeded token
windows, weight decay groups, warm-up, clipping, dropout) verifies VALID with every segment
bitwise exact, and a tampered copy is rejected; gradient accumulation with bf16 autocast replays
too; a setting pol cannot replay is a ConfigError before anything is written; the replayed loss
is bitwise the model's own; `pol.attach` takes a `datasets.Dataset` that the verifier reads back
(a factory it names, or a directory saved by `save_to_disk`)."""

from __future__ import annotations

import functools
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

import pol  # noqa: E402
from pol.errors import ConfigError  # noqa: E402
from pol.integrations.hf import attach_trainer  # noqa: E402
from pol.proof.hashing import merkle_root, sample_leaves  # noqa: E402
from pol.spec import ModelSpec  # noqa: E402
from pol.step.core import make_loss  # noqa: E402
from pol.verifier import verify  # noqa: E402

from conftest import (USER_MODEL_KWARGS, bump_weight, load_manifest, make_user_data,  # noqa: E402
                      run_cli, tampered_copy, user_model)

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIG = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32)


def _readme_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if "attach_trainer(" in b]
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's Trainer example, run as written in a directory of its own."""
    import os
    here = os.getcwd()
    where = tmp_path_factory.mktemp("hf-readme")
    os.chdir(where)
    try:
        ns: dict = {}
        exec(compile(_readme_block(), "README.md", "exec"), ns)
    finally:
        os.chdir(here)
    return where, ns


def test_readme_trainer_example_verifies_bitwise(readme_run, capsys):
    where, ns = readme_run
    run = ns["run"]
    assert run.root_digest is not None and ns["trainer"].args is ns["args"]
    spec = load_manifest(where / "proof-hf")["spec"]
    assert spec["model"]["arch"] == "hf-causal-lm" and spec["model"]["init"] == "none"
    assert spec["data"]["name"] == "hf-dataset" and spec["loss"] == "causal_lm_cross_entropy"
    assert spec["step"]["clip_grad_norm"] == 1.0 and len(spec["optimizer"]["group_sizes"]) > 2
    assert "transformers_version" not in spec["model"]["kwargs"]["config"]
    lrs = np.load(where / "proof-hf" / "lrs.npy")
    assert lrs[0, 0] == 0.0 and lrs[2, 0] == pytest.approx(1e-3)  # linear warm-up, then decay
    r = verify(where / "proof-hf", data=str(where / "hf-data"), all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)


def test_readme_trainer_tampered_copy_rejected(readme_run, tmp_path):
    where, _ = readme_run
    bad = tampered_copy(where / "proof-hf", tmp_path / "bad", 4,
                        change=functools.partial(bump_weight, suffix="c_fc.weight"))
    r = verify(bad, data=str(where / "hf-data"), all_segments=True)
    assert not r.valid


def _trainer(tmp_path, ds, **kw):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG))
    args = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                num_train_epochs=1, learning_rate=1e-3, report_to="none", save_strategy="no",
                disable_tqdm=True, seed=5)
    args.update(kw)
    return transformers.Trainer(model=model, args=transformers.TrainingArguments(**args),
                                train_dataset=ds)


def _windows(n=16, t=12, labels=False):
    tok = np.random.default_rng(1).integers(0, 64, size=(n, t))
    cols = {"input_ids": tok.tolist()}
    if labels:  # a prompt left out of the loss
        lab = tok.copy()
        lab[:, :3] = -100
        cols["labels"] = lab.tolist()
    return datasets.Dataset.from_dict(cols)


def test_accumulation_bf16_sgd_and_masked_labels_replay(tmp_path):
    """gradient_accumulation_steps=2, bf16 autocast, SGD with momentum (optim_args), label
    smoothing, -100 labels, no weight decay (one group): VALID, bitwise exact."""
    ds = _windows(labels=True)
    trainer = _trainer(tmp_path, ds, gradient_accumulation_steps=2, bf16=True, use_cpu=True,
                       optim="sgd", optim_args="momentum=0.9", learning_rate=0.05,
                       label_smoothing_factor=0.1)
    run = attach_trainer(trainer, out=tmp_path / "proof", k=1, init="from-seed")
    trainer.train()
    spec = run.recorder.spec
    assert spec.step.accumulation == 2 and spec.step.autocast == "bf16"
    assert spec.optimizer.name == "sgd" and spec.optimizer.momentum == 0.9
    assert spec.step.label_smoothing == 0.1
    ds.save_to_disk(str(tmp_path / "data"))
    r = verify(run.proof, data=str(tmp_path / "data"), all_segments=True)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)


@pytest.mark.parametrize("kw, named", [
    (dict(optim="adafactor"), "TrainingArguments.optim"),
    (dict(max_steps=3), "TrainingArguments.max_steps"),
    (dict(num_train_epochs=1.5), "num_train_epochs"),
    (dict(torch_compile=True), "torch_compile"),
    (dict(data_seed=9), "data_seed"),
])
def test_unsupported_setting_refused_before_anything_is_written(tmp_path, kw, named):
    trainer = _trainer(tmp_path, _windows(), **kw)
    with pytest.raises(ConfigError, match=re.escape(named)):
        attach_trainer(trainer, out=tmp_path / "proof", k=2, init="from-seed")
    assert not (tmp_path / "proof").exists()
    assert trainer.optimizer is None and trainer.args.max_grad_norm == 1.0  # left as it was


def test_padding_and_unseeded_weights_refused(tmp_path):
    ds = _windows().add_column("attention_mask", [[1] * 11 + [0]] * 16)
    with pytest.raises(ConfigError, match="attention_mask"):
        attach_trainer(_trainer(tmp_path, ds), out=tmp_path / "proof", init="from-seed")
    with pytest.raises(ConfigError, match="init=\"from-seed\""):  # the user's own random W_0
        attach_trainer(_trainer(tmp_path, _windows()), out=tmp_path / "proof")
    assert not (tmp_path / "proof").exists()


def test_replayed_loss_is_the_models_own_bitwise():
    """causal_lm_cross_entropy on the logits is GPT-2's loss from `labels` (with -100), loss and
    gradients bitwise; and what the Trainer computes by default (normalized by the batch's token
    count, num_items_in_batch) without accumulation."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)).train()
    x = torch.randint(0, 64, (4, 12))
    y = x.clone()
    y[:, :2] = -100
    fn = make_loss("causal_lm_cross_entropy")

    def run(f):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        loss = f()
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    want = run(lambda: model(input_ids=x, labels=y).loss)
    n = (y[:, 1:] != -100).sum()
    for got in (run(lambda: fn(model(input_ids=x).logits, y)),
                run(lambda: model(input_ids=x, labels=y, num_items_in_batch=n).loss)):
        assert all(torch.equal(a, b) for a, b in zip(want, got))


_FACTORY = '''
import numpy as np
import datasets


def make(flip=False):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    w = rng.standard_normal((12, 3)).astype(np.float32)
    if flip:
        x[0, 0] += 1.0
    return datasets.Dataset.from_dict({"features": x, "label": (x @ w).argmax(1)})
'''


def test_attach_with_a_datasets_dataset_verifies(tmp_path, monkeypatch):
    """features + integer labels (tiny MLP): the leaves are those of the same arrays; the
    verifier reads the dataset from the factory it names, or from a save_to_disk directory."""
    (tmp_path / "polhf_rows.py").write_text(textwrap.dedent(_FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import polhf_rows
    ds = polhf_rows.make()
    x, y = make_user_data()
    assert np.array_equal(np.asarray(ds["features"], dtype=np.float32), x)
    model = user_model()
    opt, batches = pol.attach(model=model, optimizer=torch.optim.AdamW(model.parameters(), 3e-3),
                              data=ds, data_params={"factory": "polhf_rows:make"},
                              out=tmp_path / "proof", model_spec=ModelSpec("mlp",
                                                                           USER_MODEL_KWARGS),
                              batch_size=32, epochs=2, k=3, seed=3, init="from-seed")
    for _ in range(2):
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step(loss=loss)
    data = load_manifest(opt.proof)["spec"]["data"]
    assert data["name"] == "hf-dataset" and data["params"]["columns"] == ["features", "label"]
    assert data["root"] == merkle_root(sample_leaves(x, y)).hex()  # the same arrays' bytes
    r = verify(opt.proof, data="polhf_rows:make", all_segments=True)
    assert r.valid and all(s.exact for s in r.segments), r.render(verbose=True)
    ds.save_to_disk(str(tmp_path / "saved"))
    assert run_cli("verify", opt.proof, "--data", str(tmp_path / "saved")).exit_code == 0
    r = run_cli("verify", opt.proof, "--data", "polhf_rows:make_other")
    assert r.exit_code == 2
    r = run_cli("verify", opt.proof)
    assert r.exit_code == 2 and "save_to_disk" in r.output
    other = user_model()
    with pytest.raises(ConfigError, match="differs"):  # the factory must build these rows
        pol.attach(model=other, optimizer=torch.optim.SGD(other.parameters(), 0.1),
                   data=polhf_rows.make(flip=True), data_params={"factory": "polhf_rows:make"},
                   out=tmp_path / "p2", model_spec=ModelSpec("mlp", USER_MODEL_KWARGS),
                   batch_size=32, epochs=1)
