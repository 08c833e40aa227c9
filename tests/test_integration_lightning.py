"""`pol.integrations.lightning.PolCallback`: a LightningModule trained by `Trainer.fit` with the
callback records a proof that verifies VALID with every segment bitwise exact (plain SGD;
clipping by norm with gradient accumulation and an lr scheduler; clipping by value with
bf16-mixed; the whole LightningModule recorded through a trusted factory), a copy with one
checkpoint perturbed (digests recomputed) is rejected, and what pol cannot replay is refused when
the fit starts, before anything is written. The README's Lightning example runs as written."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pol.errors import ConfigError
from pol.models import mlp
from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.spec import ModelSpec
from pol.step.optimizers import MODEL_PREFIX
from pol.verifier import verify

from conftest import USER_MODEL_KWARGS, load_manifest, make_user_data, save_npz, tampered_copy

lightning = pytest.importorskip("lightning")
L = lightning
PolCallback = pytest.importorskip("pol.integrations.lightning").PolCallback

EPOCHS, K = 2, 3
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


@pytest.fixture(autouse=True)
def _quiet_lightning():
    import logging
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    log.setLevel(logging.ERROR)
    yield
    log.setLevel(level)


class LitNet(L.LightningModule):
    """The user's module: an MLP in `self.net`, the declared loss of its output."""

    def __init__(self, make_opt=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                 scheduler=None, smoothing: float = 0.0) -> None:
        super().__init__()
        self.net = mlp(**USER_MODEL_KWARGS)
        self.make_opt, self.scheduler, self.smoothing = make_opt, scheduler, smoothing

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y, label_smoothing=self.smoothing)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = self.make_opt(self.parameters())
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt),
                                                   "interval": "step"}}


def _callback(tmp_path, **kw) -> PolCallback:
    x, y = make_user_data()
    args = dict(out=tmp_path / "proof", data=(x, y), model_attr="net",
                model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32, k=K,
                seed=3, init="from-seed")
    args.update(kw)
    return PolCallback(**args)


def _fit(tmp_path, module=None, cb_kw=None, **trainer_kw):
    cb = _callback(tmp_path, **(cb_kw or {}))
    trainer = L.Trainer(**{**QUIET, "max_epochs": EPOCHS, "callbacks": [cb], **trainer_kw})
    trainer.fit(module or LitNet(), train_dataloaders=cb.train_dataloader())
    return cb, trainer


def _check_proof(tmp_path, proof: Path, digest: str, **verify_kw) -> None:
    """VALID and bitwise exact on every segment; a perturbed checkpoint (rehashed) is rejected."""
    assert digest is not None  # finished at the last step
    npz = save_npz(tmp_path / "data.npz", *make_user_data())
    r = verify(proof, data=str(npz), all_segments=True, **verify_kw)
    assert r.valid, r.render(verbose=True)
    assert r.segments and all(s.exact for s in r.segments), r.render(verbose=True)
    assert r.root_digest == digest
    bad = tampered_copy(proof, tmp_path / "tampered", 2 * K)
    assert not verify(bad, data=str(npz), all_segments=True, **verify_kw).valid


def test_sgd_fit_verifies_bitwise_and_the_trainer_is_given_back(tmp_path):
    module = LitNet()
    rng = torch.get_rng_state()
    cb, trainer = _fit(tmp_path, module)
    m = load_manifest(cb.proof)
    assert m["total_steps"] == EPOCHS * 7 and "step" not in m["spec"]  # 200 samples, 32 a batch
    assert m["spec"]["data"]["order"] == "seed" and m["spec"]["epochs"] == EPOCHS
    # what the fit changed is given back: the user's optimizer, the global RNG
    assert type(trainer.optimizers[0]) is torch.optim.SGD
    assert torch.equal(torch.get_rng_state(), rng)
    _check_proof(tmp_path, cb.proof, cb.root_digest)
    assert trainer.callback_metrics["train_loss"] > 0  # Lightning's logging left on


def test_clip_norm_accumulation_and_scheduler(tmp_path):
    sched = lambda opt: torch.optim.lr_scheduler.OneCycleLR(  # noqa: E731
        opt, max_lr=1e-2, total_steps=EPOCHS * 6, cycle_momentum=False)
    module = LitNet(make_opt=lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05),
                    scheduler=sched)
    cb, trainer = _fit(tmp_path, module, cb_kw=dict(batch_size=16), gradient_clip_val=0.05,
                       accumulate_grad_batches=2)
    spec = load_manifest(cb.proof)["spec"]
    assert spec["step"] == {"accumulation": 2, "clip_grad_norm": 0.05}
    assert spec["batch_size"] == 32 and spec["drop_last"]  # 6 steps of 2 micro-batches an epoch
    lrs = np.load(cb.proof / fmt.LRS)[:, 0]
    assert len(lrs) == EPOCHS * 6 and lrs.max() > 5 * lrs[0]  # the scheduler's lr, every step
    assert trainer.gradient_clip_val == 0.05  # Lightning's setting given back after the fit
    _check_proof(tmp_path, cb.proof, cb.root_digest)
    # the clipping was applied once, as declared: the same proof declared without it fails
    plain = tmp_path / "unclipped"
    shutil.copytree(cb.proof, plain)
    body = json.loads((plain / fmt.MANIFEST).read_text())
    body["spec"]["step"] = {"accumulation": 2}
    (plain / fmt.MANIFEST).write_text(json.dumps(body))
    rehash_manifest(plain)
    assert not verify(plain, data=str(tmp_path / "data.npz"), all_segments=True).valid


def test_clip_value_with_bf16_mixed(tmp_path):
    cb, _ = _fit(tmp_path, gradient_clip_val=0.02, gradient_clip_algorithm="value",
                 precision="bf16-mixed")
    assert load_manifest(cb.proof)["spec"]["step"] == {"autocast": "bf16",
                                                      "clip_grad_value": 0.02}
    _check_proof(tmp_path, cb.proof, cb.root_digest)


LIT_FACTORY = '''
import lightning as L
import torch
import torch.nn.functional as F
from pol.models import mlp


class LitMLP(L.LightningModule):
    def __init__(self, **arch):
        super().__init__()
        self.net = mlp(**arch)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)
'''


def test_the_whole_lightning_module_through_a_trusted_factory(tmp_path, monkeypatch):
    """model_attr=None records the LightningModule itself (keys `net.*`): the verifier builds it
    with the factory it is told to trust."""
    (tmp_path / "pol_lit_factory.py").write_text(textwrap.dedent(LIT_FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    import pol_lit_factory
    spec = ModelSpec("pol_lit_factory:LitMLP", dict(USER_MODEL_KWARGS))
    cb, _ = _fit(tmp_path, pol_lit_factory.LitMLP(**USER_MODEL_KWARGS),
                 cb_kw=dict(model_attr=None, model_spec=spec))
    state0 = load_file(str(cb.proof / fmt.checkpoint_name(0)))
    assert any(k.startswith(MODEL_PREFIX + "net.") for k in state0)
    _check_proof(tmp_path, cb.proof, cb.root_digest, trusted_modules=("pol_lit_factory",))


# ------------------------------------------------------------- refused, nothing written

class TwoOptimizers(LitNet):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        ps = list(self.parameters())
        return [torch.optim.SGD(ps[:2], lr=0.1), torch.optim.SGD(ps[2:], lr=0.1)]


class OwnClipping(LitNet):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None):
        torch.nn.utils.clip_grad_norm_(self.parameters(), 0.1)


class ExtraParameter(LitNet):
    def __init__(self):
        super().__init__()
        self.temperature = torch.nn.Parameter(torch.ones(()))


@pytest.mark.parametrize("module,trainer_kw,cb_kw,named", [
    (TwoOptimizers, {}, {}, "automatic_optimization=False"),
    (LitNet, dict(precision="bf16-true"), {}, "precision='bf16-true'"),
    (LitNet, dict(max_steps=5), {}, "max_steps=5"),
    (LitNet, dict(limit_train_batches=0.5), {}, "limit_train_batches=0.5"),
    (LitNet, dict(callbacks=[L.pytorch.callbacks.GradientAccumulationScheduler({0: 1, 1: 2})]),
     {}, "GradientAccumulationScheduler"),
    (OwnClipping, {}, {}, "overrides configure_gradient_clipping"),
    (ExtraParameter, {}, {}, "parameters outside it \\(temperature\\)"),
    (LitNet, {}, dict(model_attr="body"), "model_attr='body'"),
    (LitNet, {}, dict(epochs=3), "max_epochs=2"),
    (lambda: LitNet(make_opt=lambda ps: torch.optim.Adamax(ps, lr=0.01)), {}, {}, "Adamax"),
])
def test_refused_when_the_fit_starts(tmp_path, module, trainer_kw, cb_kw, named):
    cb = _callback(tmp_path, **cb_kw)
    kw = {**QUIET, "max_epochs": EPOCHS, **trainer_kw}
    kw["callbacks"] = [cb, *trainer_kw.get("callbacks", [])]
    with pytest.raises(ConfigError, match=named):
        L.Trainer(**kw).fit(module(), train_dataloaders=cb.train_dataloader())
    assert not (tmp_path / "proof").exists()


def test_another_train_dataloader_is_refused(tmp_path):
    cb = _callback(tmp_path)
    x, y = make_user_data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32)
    with pytest.raises(ConfigError, match="not the PolCallback's"):
        L.Trainer(**QUIET, max_epochs=EPOCHS, callbacks=[cb]).fit(LitNet(), loader)
    assert not (tmp_path / "proof").exists()
    with pytest.raises(ConfigError, match="once the fit has started"):
        len(cb.train_dataloader())


@pytest.mark.parametrize("precision", ["16-mixed", "64-true", "transformer-engine"])
def test_precisions_pol_cannot_replay_are_named(precision):
    from pol.integrations.lightning import _autocast
    with pytest.raises(ConfigError, match=f"precision='{precision}'"):
        _autocast(types.SimpleNamespace(precision=precision))


def test_a_loss_that_is_not_the_declared_one_is_refused_at_the_first_step(tmp_path):
    """training_step smooths its labels, the spec declares no smoothing: the replay would not
    reproduce the loss, so the first step stops the fit; the proof is left incomplete and the
    Trainer's settings are given back."""
    cb = _callback(tmp_path)
    trainer = L.Trainer(**QUIET, max_epochs=EPOCHS, callbacks=[cb], gradient_clip_val=1.0)
    module = LitNet(smoothing=0.2)
    rng = torch.get_rng_state()
    with pytest.raises(ConfigError, match="declared loss"):
        trainer.fit(module, train_dataloaders=cb.train_dataloader())
    assert cb.recorder.t == 0 and not (cb.proof / fmt.MANIFEST).exists()
    assert trainer.gradient_clip_val == 1.0 and torch.equal(torch.get_rng_state(), rng)


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_a_fit_stopped_early_leaves_an_incomplete_proof_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match=f"step 7 of the declared {EPOCHS * 7}.*incomplete"):
        cb = _callback(tmp_path)
        L.Trainer(**QUIET, max_epochs=EPOCHS, callbacks=[cb, StopAfterFirstEpoch()]).fit(
            LitNet(), train_dataloaders=cb.train_dataloader())
    assert cb.root_digest is None and not (cb.proof / fmt.MANIFEST).exists()


def test_one_proof_per_callback(tmp_path):
    cb, trainer = _fit(tmp_path)
    with pytest.raises(ConfigError, match="recorded a fit already"):
        L.Trainer(**QUIET, max_epochs=EPOCHS, callbacks=[cb]).fit(
            LitNet(), train_dataloaders=cb.train_dataloader())


# ------------------------------------------------------------- the README

def test_readme_lightning_example_runs_and_verifies(tmp_path, monkeypatch, capsys):
    """The Lightning example runs as written after the README's first block (X, Y, arch, mlp,
    ModelSpec, verify, readme-data.npz), and its proof verifies."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    ours = [b for b in blocks if "PolCallback" in b]
    assert len(ours) == 1
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)
    capsys.readouterr()
    exec(compile(ours[0], "README.md", "exec"), ns)
    assert capsys.readouterr().out.strip().splitlines()[-1] == "True valid"
    assert ns["cb"].recorder.spec.step.accumulation == 2
