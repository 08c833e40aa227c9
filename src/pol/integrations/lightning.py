"""PyTorch Lightning: record a proof of a `Trainer.fit` run (`pip install 'pol[lightning]'`).

    cb = PolCallback(out="proof", data=(X, Y), model_spec=ModelSpec("mlp", arch), model_attr="net",
                     batch_size=32, k=10, seed=0, init="from-seed")
    trainer = lightning.Trainer(max_epochs=3, callbacks=[cb], gradient_clip_val=1.0)
    trainer.fit(lit_module, train_dataloaders=cb.train_dataloader())
    print(cb.root_digest)                       # the proof is finished at the last step

The callback is `pol.attach` fitted into Lightning's loop:

- the batches: `cb.train_dataloader()` (passed to `trainer.fit(train_dataloaders=...)`, or
  returned from the module's or datamodule's `train_dataloader()`) hands out attach's batches, in
  the order pol draws from the seed, on the model's device. Lightning asks for its length before
  the first epoch: that is when the proof is started (checkpoint 0 written). A run whose train
  dataloader is another one is refused when training starts, before anything is written.
- the model: `model_attr="net"` records `pl_module.net` (state-dict keys as the verifier's
  `ModelSpec` builds them: a registry arch, or a `module:callable` factory it trusts with
  `--trust-module`); `model_attr=None` records the LightningModule itself (its factory must build
  the LightningModule, whose `forward` is the model). The LightningModule may hold no parameters
  outside it, and `configure_optimizers` returns one optimizer over all of them, in order.
- the step: `training_step` returns the declared loss (`loss=`, `label_smoothing=`) of the
  recorded model's output on the batch, `loss_fn(self.net(x), y)`: the replay computes exactly
  that. The first step checks it (the model called once, on the batch's inputs; the loss
  returned equals the declared loss of its output), else `ConfigError`. Lightning calls
  `optimizer.step(closure)`; pol's optimizer runs the closure, applies the clipping, steps and
  records the step with the loss Lightning back-propagated (each micro-batch's, summed).
- from the Trainer: `accumulate_grad_batches=N` is attach's `accumulation=N` (`batch_size` is
  the micro-batch Lightning sees); `gradient_clip_val` / `gradient_clip_algorithm` are attach's
  `clip_grad_norm` (2-norm) / `clip_grad_value`, applied by pol where Lightning would (after the
  backward passes, before the step; Lightning's own clip is skipped during the fit, so it is not
  applied twice, and restored after); `precision="bf16-mixed"` is attach's `autocast="bf16"`;
  `max_epochs` is the proof's `epochs`. Any lr scheduler from `configure_optimizers` works (the
  lr of every step is recorded).

Refused with a `ConfigError` naming the setting, when the fit starts and before anything is
written: manual optimization, several optimizers, several processes or devices, a precision other
than "32-true" and "bf16-mixed" (fp16 autocast goes through Lightning's GradScaler, which pol
cannot drive), `max_steps`, `limit_train_batches`, `overfit_batches`, resuming from a Lightning
checkpoint (`ckpt_path`), callbacks that change the training (gradient accumulation schedules,
weight averaging, finetuning, pruning, batch-size or lr finders) and module hooks that change
the batch or the gradients (`on_before_batch_transfer`, `on_after_batch_transfer`, `backward`,
`configure_gradient_clipping`). Logging, checkpointing, progress bars and validation are left to
Lightning. A fit that stops before the declared last step (early stopping, `max_time`, an error)
leaves an incomplete proof, with a warning. Lightning checkpoints cannot resume a proof.

Torch's global RNG is seeded at every step (dropout replays); the state it had when the fit
started is restored at its end, as are the Trainer's clipping settings and its optimizer.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from pol.errors import ConfigError
from pol.prover.attach import AttachedLoader, AttachedOptimizer, attach
from pol.spec import ModelSpec, ScheduleSpec

try:
    import lightning.pytorch as pl
    from lightning.pytorch import callbacks as pl_callbacks
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("pol.integrations.lightning needs PyTorch Lightning: "
                      "pip install 'pol[lightning]'") from e

__all__ = ["PolCallback"]

# Lightning callbacks that change what a step does, or which steps run
_REFUSED_CALLBACKS = ("GradientAccumulationScheduler", "StochasticWeightAveraging",
                      "WeightAveraging", "BaseFinetuning", "ModelPruning", "BatchSizeFinder",
                      "LearningRateFinder")
# LightningModule hooks that change the batch or the gradients where the replay would not
_REFUSED_HOOKS = {
    "on_before_batch_transfer": "it changes the batch, which the replay takes as pol hands it out",
    "on_after_batch_transfer": "it changes the batch, which the replay takes as pol hands it out",
    "backward": "the replay calls loss.backward()",
    "configure_gradient_clipping": "declare the clipping with the Trainer's gradient_clip_val / "
                                   "gradient_clip_algorithm instead",
}
_PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": "bf16"}


class PolCallback(pl.Callback):
    """Records a proof of the `Trainer.fit` it is passed to (see the module's docstring). The
    arguments are `pol.attach`'s; what the Trainer says (epochs, accumulation, clipping, mixed
    precision) is taken from it. `epochs`: None takes the Trainer's `max_epochs` (given, it must
    equal it). `precision`: how checkpoints are stored ("fp32", "fp16"), as attach's (the
    Trainer's `precision` is the training's)."""

    def __init__(self, *, out: str | os.PathLike, data: Any, model_spec: ModelSpec,
                 batch_size: int, epochs: int | None = None, k: int = 10, seed: int = 0,
                 model_attr: str | None = None, loss: str = "cross_entropy",
                 prepare: str = "float", augment: str = "none", label_smoothing: float = 0.0,
                 drop_last: bool | None = None, schedule: ScheduleSpec | None = None,
                 init: str | dict | None = None, precision: str = "fp32",
                 compress: bool = False, overwrite: bool = False, durable: bool = True,
                 data_name: str = "user", data_params: dict | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        self._attach_kw = dict(
            out=out, data=data, model_spec=model_spec, batch_size=batch_size, k=k, seed=seed,
            loss=loss, prepare=prepare, augment=augment, label_smoothing=label_smoothing,
            drop_last=drop_last, schedule=schedule, init=init, precision=precision,
            compress=compress, overwrite=overwrite, durable=durable, data_name=data_name,
            data_params=data_params, num_workers=num_workers)
        self.epochs = epochs
        self.model_attr = model_attr
        self._batches = _Batches(self)
        self._plan: dict[str, Any] | None = None  # attach's arguments, decided at fit start
        self._trainer: Any = None
        self._opt: AttachedOptimizer | None = None
        self._loader: AttachedLoader | None = None
        self._saved: dict[str, Any] | None = None  # what the fit changed, restored at its end
        self._fitting = False
        self._probe: _LossProbe | None = None
        self._probed = self._aborted = False

    # ------------------------------------------------------------------ public

    def train_dataloader(self) -> "_Batches":
        """The batches pol records: pass them to `trainer.fit(train_dataloaders=...)`, or return
        them from `train_dataloader()` of your LightningModule or datamodule."""
        return self._batches

    @property
    def optimizer(self) -> AttachedOptimizer | None:
        """The recording optimizer Lightning steps during the fit (None before it starts)."""
        return self._opt

    @property
    def recorder(self):
        return None if self._opt is None else self._opt.recorder

    @property
    def proof(self):
        """The proof's directory (None before the fit starts recording)."""
        return None if self._opt is None else self._opt.proof

    @property
    def root_digest(self) -> str | None:
        """The proof's root digest once its last step is recorded (None before)."""
        return None if self._opt is None else self._opt.root_digest

    # ------------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._opt is not None:
            raise ConfigError("this PolCallback has recorded a fit already: a proof is one run "
                              "(make a new PolCallback for another fit)")
        model = _recorded_model(pl_module, self.model_attr)
        epochs = _check_trainer(trainer, self.epochs)
        _check_module(pl_module)
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise ConfigError(f"configure_optimizers returned {len(optimizers)} optimizers: pol "
                              "records one optimizer over all the model's parameters")
        self._plan = dict(self._attach_kw, model=model, optimizer=optimizers[0], epochs=epochs,
                          accumulation=_accumulation(trainer), autocast=_autocast(trainer),
                          **_clipping(trainer))
        self._trainer, self._fitting = trainer, True
        self._saved = {"clip": (trainer.gradient_clip_val, trainer.gradient_clip_algorithm),
                       "rng": _rng_state()}
        trainer.gradient_clip_val = None  # pol clips, as declared (see the module's docstring)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.train_dataloader is not self._batches:
            raise ConfigError("the train dataloader is not the PolCallback's: pass "
                              "cb.train_dataloader() to trainer.fit(train_dataloaders=...), or "
                              "return it from your module's train_dataloader() (the proof records "
                              "the batches pol hands out, in the seed's order)")
        self._attached_loader()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if not self._probed and self._opt is not None and self._opt.recorder.t == 0:
            self._probed = True  # the first micro-batch of the first step
            self._probe = _LossProbe(self._plan["model"], batch)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        if self._opt is None:
            return
        self._opt.record_loss(loss)  # Lightning's loss / accumulate_grad_batches, summed per step
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.check(loss, self._opt, trainer.accumulate_grad_batches)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._drop_probe()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        rec = self.recorder
        if rec is not None and self.root_digest is None and not self._aborted:
            warnings.warn(f"the fit ended at step {rec.t} of the declared {rec.total_steps}: the "
                          f"proof in {rec.path} is incomplete (no manifest)", stacklevel=2)
            self._abort()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._abort()  # an unfinished proof is left incomplete
        self._restore()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._restore()

    # ------------------------------------------------------------------ internals

    def _attached_loader(self) -> AttachedLoader:
        """The attached loader; the first call attaches (writes checkpoint 0) and hands the
        Trainer the recording optimizer."""
        if self._loader is not None:
            return self._loader
        if not self._fitting:
            raise ConfigError("cb.train_dataloader() hands out batches in a Trainer.fit that has "
                              "this PolCallback in its callbacks, once the fit has started")
        self._opt, self._loader = attach(**self._plan)
        self._trainer.strategy.optimizers = [self._opt]  # Lightning steps pol's optimizer
        return self._loader

    def _abort(self) -> None:
        if self._opt is not None and self.root_digest is None and not self._aborted:
            self._aborted = True
            self._opt.recorder.abort()

    def _drop_probe(self) -> None:
        if self._probe is not None:  # training_step called no backward: nothing to check
            self._probe.handle.remove()
            self._probe = None

    def _restore(self) -> None:
        """Give back what the fit changed: the Trainer's clipping and optimizer, the RNG."""
        self._fitting = False
        self._drop_probe()
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        trainer = self._trainer
        trainer.gradient_clip_val, trainer.gradient_clip_algorithm = saved["clip"]
        if self._opt is not None and trainer.strategy.optimizers == [self._opt]:
            trainer.strategy.optimizers = [self._plan["optimizer"]]
        _set_rng_state(saved["rng"])


class _Batches:
    """`cb.train_dataloader()`: the attached loader, started when Lightning first asks for it
    (its length, before the first epoch), so that nothing is written before the fit starts."""

    def __init__(self, cb: PolCallback) -> None:
        self._cb = cb

    def __len__(self) -> int:
        return len(self._cb._attached_loader())

    def __iter__(self):
        return iter(self._cb._attached_loader())

    def __repr__(self) -> str:
        return "PolCallback.train_dataloader()"


class _LossProbe:
    """The first step's check that `training_step` computes what the replay does: the recorded
    model called once, on the batch's inputs, and the loss back-propagated equal to the declared
    loss of its output (divided by the accumulation, as Lightning divides it)."""

    def __init__(self, model: nn.Module, batch: Any) -> None:
        self.batch = batch
        self.calls: list[tuple[Any, torch.Tensor]] = []
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.calls.append((args, output))

    def check(self, loss: torch.Tensor, opt: AttachedOptimizer, accumulation: int) -> None:
        self.handle.remove()
        where = "training_step at the first step"
        if not (isinstance(self.batch, (tuple, list)) and len(self.batch) == 2):
            raise ConfigError(f"{where}: the batch is not the (inputs, targets) pair pol hands "
                              "out (a hook or the dataloader changed it)")
        x, y = self.batch
        if len(self.calls) != 1:
            raise ConfigError(f"{where} called the recorded model {len(self.calls)} times: the "
                              "replay calls it once per micro-batch, loss(model(inputs), targets)"
                              " (with model_attr=None, call self(x))")
        args, out = self.calls[0]
        if len(args) != 1 or not isinstance(args[0], torch.Tensor) or not (
                args[0].shape == x.shape and torch.equal(args[0], x)):
            raise ConfigError(f"{where} called the recorded model on something other than the "
                              "batch's inputs: the replay calls model(inputs) on the batch as "
                              "pol hands it out")
        with torch.no_grad(), opt.autocast():
            want = opt.loss_fn(out, y).float() / accumulation
        got = loss.detach().float()
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-6):
            raise ConfigError(
                f"{where} returned loss {got.item():.6g}, but the declared loss "
                f"({opt.recorder.spec.loss!r}, label_smoothing="
                f"{opt.recorder.spec.step.label_smoothing}) of the model's output is "
                f"{want.item():.6g}: training_step must return that loss (declare "
                "loss= / label_smoothing= as it computes it)")


# ---------------------------------------------------------------------- checks at fit start

def _recorded_model(pl_module: Any, model_attr: str | None) -> nn.Module:
    """The nn.Module pol records: `pl_module.<model_attr>`, or the LightningModule itself; it
    must hold every parameter of the LightningModule."""
    if model_attr is None:
        return pl_module
    model = getattr(pl_module, model_attr, None)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model_attr={model_attr!r}: the LightningModule has no nn.Module "
                          "attribute of that name")
    mine = {id(p) for p in model.parameters()}
    outside = [n for n, p in pl_module.named_parameters() if id(p) not in mine]
    if outside:
        raise ConfigError(f"model_attr={model_attr!r}: the LightningModule has parameters "
                          f"outside it ({', '.join(outside[:3])}): the replay rebuilds only "
                          f"the recorded model (record the whole module with model_attr=None)")
    return model


def _check_module(pl_module: Any) -> None:
    if not pl_module.automatic_optimization:
        raise ConfigError("automatic_optimization=False (manual optimization): pol records "
                          "Lightning's automatic optimization (or use pol.attach in your own "
                          "loop)")
    for hook, why in _REFUSED_HOOKS.items():
        if getattr(type(pl_module), hook) is not getattr(pl.LightningModule, hook):
            raise ConfigError(f"the LightningModule overrides {hook}: {why}")


def _check_trainer(trainer: Any, epochs: int | None) -> int:
    """Refuse what the proof cannot hold; returns the declared epochs."""
    if (not isinstance(trainer.strategy, pl.strategies.SingleDeviceStrategy)
            or trainer.world_size != 1):
        raise ConfigError(f"strategy {type(trainer.strategy).__name__} (world_size="
                          f"{trainer.world_size}, devices={trainer.num_devices}): PolCallback "
                          "records a single-device run (SingleDeviceStrategy)")
    if trainer.ckpt_path is not None:
        raise ConfigError(f"ckpt_path={str(trainer.ckpt_path)!r}: resuming from a Lightning "
                          "checkpoint is not supported (the proof records a run from its "
                          "first step)")
    if trainer.max_steps != -1:
        raise ConfigError(f"max_steps={trainer.max_steps}: the proof declares whole epochs "
                          "(use max_epochs)")
    limit = trainer.limit_train_batches
    if not (isinstance(limit, float) and limit == 1.0) or trainer.overfit_batches:
        raise ConfigError(f"limit_train_batches={limit!r}, overfit_batches"
                          f"={trainer.overfit_batches!r}: the proof records whole epochs of the "
                          "dataset")
    for c in trainer.callbacks:
        refused = [n for n in _REFUSED_CALLBACKS
                   if isinstance(c, getattr(pl_callbacks, n, ()))]
        if refused:
            raise ConfigError(f"callback {type(c).__name__} ({refused[0]}): it changes the "
                              "training steps, which the replay would not")
    max_epochs = trainer.max_epochs
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(f"max_epochs={max_epochs!r}: the proof declares its epochs")
    if epochs is not None and epochs != max_epochs:
        raise ConfigError(f"PolCallback(epochs={epochs}) but Trainer(max_epochs={max_epochs})")
    return max_epochs


def _accumulation(trainer: Any) -> int:
    n = trainer.accumulate_grad_batches
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"accumulate_grad_batches={n!r}: an integer >= 1")
    return n


def _clipping(trainer: Any) -> dict[str, float | None]:
    """attach's clip_grad_norm / clip_grad_value from the Trainer's gradient clipping."""
    val = trainer.gradient_clip_val
    if not val:
        return {"clip_grad_norm": None, "clip_grad_value": None}
    algorithm = trainer.gradient_clip_algorithm
    algorithm = str(getattr(algorithm, "value", algorithm) or "norm").lower()
    if algorithm == "norm":
        return {"clip_grad_norm": float(val), "clip_grad_value": None}
    if algorithm == "value":
        return {"clip_grad_norm": None, "clip_grad_value": float(val)}
    raise ConfigError(f"gradient_clip_algorithm={algorithm!r}: 'norm' or 'value'")


def _autocast(trainer: Any) -> str | None:
    precision = str(trainer.precision)
    if precision not in _PRECISIONS:
        raise ConfigError(f"Trainer(precision={precision!r}): pol replays '32-true' and "
                          "'bf16-mixed' (16-mixed needs Lightning's GradScaler, which pol "
                          "cannot drive; true half precision changes the model's dtype)")
    return _PRECISIONS[precision]


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cuda else None)


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
