"""Hugging Face `transformers.Trainer`: record a proof of `trainer.train()` (`pip install 'pol[hf]'`).

    trainer = Trainer(model=GPT2LMHeadModel(config), args=TrainingArguments(...),
                      train_dataset=ds)           # a datasets.Dataset of input_ids windows
    run = attach_trainer(trainer, out="proof", k=10, init="from-seed")
    trainer.train()
    print(run.root_digest)                         # the proof is finished at the last step

A `TrainerCallback` alone can neither choose the batches nor wrap the optimizer, so
`attach_trainer` is `pol.attach` fitted into this one Trainer instance (any Trainer subclass): it
checks every setting first and raises `ConfigError` naming the `TrainingArguments` field (or the
Trainer argument) that pol cannot replay, before anything is written; then it attaches, which
writes checkpoint 0, and sets on the instance:

- `optimizer`: the one the Trainer would make (`TrainingArguments.optim`: adamw_torch, its
  default adamw_torch_fused, sgd, adagrad, rmsprop; `learning_rate`, `adam_*`, `optim_args`),
  built with torch's default kernel (the fused kernel's rounding is not replayed), its weight-decay
  groups those of `get_decay_parameter_names` (no decay on biases and norms) as consecutive runs of
  `model.parameters()`; or the optimizer given to `Trainer(optimizers=...)`. Wrapped by
  `pol.attach`: its step clips (`max_grad_norm`, applied by pol: the Trainer's own clipping is off
  in `trainer.args`, a copy; the user's object is left as it is), steps and records the lr the
  step ran with, so the Trainer's scheduler (linear with warm-up, any) replays.
- `get_train_dataloader`: attach's batches, `{"input_ids", "labels"}` in the order pol draws from
  `seed` (the verifier checks every index); `per_device_train_batch_size` micro-batches,
  `gradient_accumulation_steps` of them per step (attach's `accumulation`; with accumulation an
  epoch's last partial step is dropped), read in `dataloader_num_workers` workers.
- `compute_loss` (for those batches; evaluation keeps the Trainer's): the logits of
  `model(input_ids=...)` and the loss `causal_lm_cross_entropy` — what the model computes from
  `labels` (shifted inside, -100 ignored, the mean), so the Trainer divides it by the accumulation
  steps as the replay does (not by the batch's token count, `num_items_in_batch`).
  `label_smoothing_factor` is the spec's label smoothing; `bf16=True` runs it under bf16 autocast.

The model is recorded as `ModelSpec("hf-causal-lm", {config, init_seed, attn_implementation},
init="none")`: the verifier rebuilds it from the config (transformers installed, no
`--trust-module`) with its own initialization drawn from `init_seed` (`args.seed`).
`init="from-seed"` sets the model's weights to that W_0 (the verifier regenerates it bitwise);
`init="external"` records the weights as they are (a pretrained model: checked statistically).
The data: `train_dataset`, a `datasets.Dataset` of fixed-length `input_ids` (and `labels`; else
`labels` = `input_ids`); the verifier is given it (`pol verify --data DIR`, saved by
`Dataset.save_to_disk`, or `--data module:callable`).

Refused: `fp16`, `max_steps`, a fractional `num_train_epochs`, several processes or GPUs
(DeepSpeed, FSDP), `torch_compile`, gradient checkpointing, NEFTune, Liger kernels,
`auto_find_batch_size`, a length-grouped sampler, a `data_seed` other than `seed`, `model_init`,
`compute_loss_func`, a data collator beyond the defaults, an attention mask with padding,
parameters that do not train, a model that is not a causal LM, resuming from a Trainer
checkpoint. Torch's global RNG is seeded every step (dropout replays) and restored when training
ends; `trainer.args` is given back too.
"""

from __future__ import annotations

import copy
import json
import logging
import types
import warnings
from typing import Any

import torch
from torch import nn

from pol.errors import ConfigError
from pol.models import HF_ATTENTION, HF_CONFIG_DROPPED
from pol.prover.attach import AttachedOptimizer, attach
from pol.spec import ModelSpec

try:
    import transformers
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("pol.integrations.hf needs transformers: pip install 'pol[hf]'") from e

__all__ = ["attach_trainer", "hf_model_spec", "PolCallback"]

log = logging.getLogger(__name__)

# TrainingArguments.optim values whose optimizer pol replays (the fused kernel run as the default)
_OPTIMS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop")
LOSS = "causal_lm_cross_entropy"


def hf_model_spec(model: nn.Module, init_seed: int = 0) -> ModelSpec:
    """The ModelSpec of a transformers causal LM: its config (JSON, without where it came from),
    `init_seed` for the verifier's W_0 and the attention kernel it runs."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    config = getattr(model, "config", None)
    if config is None or type(model).__name__ not in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        raise ConfigError(f"{type(model).__name__} is not a transformers causal language model "
                          "(…ForCausalLM / …LMHeadModel): pol.integrations.hf records those; "
                          "other models: pol.attach in your own loop")
    attn = getattr(config, "_attn_implementation", None) or "eager"
    if attn not in HF_ATTENTION:
        raise ConfigError(f"attn_implementation={attn!r}: pol replays {' and '.join(HF_ATTENTION)}")
    try:
        cfg = json.loads(json.dumps({k: v for k, v in config.to_dict().items()
                                     if k not in HF_CONFIG_DROPPED}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the model's config is not JSON: {e}") from None
    return ModelSpec("hf-causal-lm", {"config": cfg, "init_seed": int(init_seed),
                                      "attn_implementation": attn}, init="none")


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _refusal(trainer: Any) -> str | None:  # long: one line per setting that changes the step
    """The first setting of `trainer` that pol cannot replay, as a message (None: none)."""
    a = trainer.args
    epochs = _arg(a, "num_train_epochs", 0)
    sampling = _arg(a, "train_sampling_strategy", "random")
    checkpointing = _arg(a, "gradient_checkpointing") or _arg(a, "activation_checkpointing")
    refusals = [
        (_arg(a, "fp16"), "TrainingArguments.fp16: fp16 autocast runs through accelerate's "
         "GradScaler, which pol cannot drive (use bf16=True, or pol.attach(autocast='fp16') in "
         "your own loop)"),
        (_arg(a, "max_steps", -1) > 0, "TrainingArguments.max_steps: pol records whole epochs "
         "(set num_train_epochs)"),
        (not (epochs >= 1 and float(epochs).is_integer()),
         f"TrainingArguments.num_train_epochs={epochs!r}: a whole number of epochs"),
        (_arg(a, "world_size", 1) > 1 or _arg(a, "n_gpu", 0) > 1
         or getattr(trainer, "is_deepspeed_enabled", False)
         or getattr(trainer, "is_fsdp_enabled", False),
         "several processes or GPUs (distributed, DataParallel, DeepSpeed, FSDP): pol records "
         "one process on one device"),
        (_arg(a, "torch_compile"), "TrainingArguments.torch_compile: a compiled step is not the "
         "replayed one"),
        (checkpointing, "TrainingArguments.gradient_checkpointing: the replay runs the plain "
         "forward pass"),
        (_arg(a, "neftune_noise_alpha") is not None, "TrainingArguments.neftune_noise_alpha: "
         "its noise is not replayed"),
        (_arg(a, "use_liger_kernel"), "TrainingArguments.use_liger_kernel: its kernels are not "
         "the replayed model's"),
        (_arg(a, "auto_find_batch_size"), "TrainingArguments.auto_find_batch_size: the batch "
         "size is part of the proof"),
        (_arg(a, "group_by_length") or sampling not in (None, "random"),
         "TrainingArguments.train_sampling_strategy / group_by_length: pol draws the batches "
         "from the seed"),
        (_arg(a, "data_seed") not in (None, _arg(a, "seed")),
         "TrainingArguments.data_seed: pol draws the data order, dropout and W_0 from one seed "
         "(TrainingArguments.seed); leave data_seed unset"),
        (trainer.model_init is not None, "Trainer(model_init=...): the model is recorded as "
         "given (build it before the Trainer)"),
        (getattr(trainer, "compute_loss_func", None) is not None, "Trainer(compute_loss_func=...): "
         f"the replay computes the spec's loss ({LOSS})"),
        (trainer.train_dataset is None, "Trainer(train_dataset=None): pol needs the dataset"),
    ]
    return next((why for bad, why in refusals if bad), None) or _collator_refusal(trainer)


def _collator_refusal(trainer: Any) -> str | None:
    c = trainer.data_collator
    ok = (c is transformers.default_data_collator
          or isinstance(c, (transformers.DefaultDataCollator,
                            transformers.DataCollatorWithPadding))
          or (isinstance(c, transformers.DataCollatorForLanguageModeling) and not c.mlm))
    return None if ok else (f"Trainer(data_collator={type(c).__name__}): pol hands out the "
                            "batches ({input_ids, labels} of the dataset's rows) itself; a "
                            "collator that changes them is not replayed")


def _check_mask(ds: Any) -> None:
    """An attention_mask column must be all ones: the replay runs the model on input_ids alone."""
    if "attention_mask" not in getattr(ds, "column_names", ()):
        return
    import pyarrow.compute as pc
    col = ds.with_format("arrow", columns=["attention_mask"])[:]["attention_mask"]
    while hasattr(col.type, "value_type"):
        col = pc.list_flatten(col)
    if len(col) and pc.min(col).as_py() != 1:
        raise ConfigError("the dataset's attention_mask masks some tokens (padding): pol replays "
                          "the model on input_ids alone; train on fixed-length windows without "
                          "padding (-100 in labels leaves tokens out of the loss)")


def _optimizer(trainer: Any, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer the Trainer would make, with torch's default kernel and its weight-decay
    groups as consecutive runs of `model.parameters()` (or the one given to the Trainer)."""
    if trainer.optimizer is not None:
        return trainer.optimizer
    args = trainer.args
    made = getattr(trainer, "optimizer_cls_and_kwargs", None)
    if made is None:
        name = getattr(args.optim, "value", args.optim)
        if name not in _OPTIMS:
            raise ConfigError(f"TrainingArguments.optim={name!r}: pol replays "
                              f"{', '.join(_OPTIMS)} (or pass Trainer(optimizers=(opt, None)) "
                              "with a torch SGD, Adam, AdamW, RMSprop or Adagrad)")
        made = trainer.get_optimizer_cls_and_kwargs(args, model)
    cls, kwargs = made
    kwargs = {k: v for k, v in kwargs.items() if k not in ("fused", "foreach")}
    named = list(model.named_parameters())
    frozen = [n for n, p in named if not p.requires_grad]
    if frozen:
        raise ConfigError(f"parameters that do not train ({', '.join(frozen[:3])}…): pol's replay "
                          "optimizes every parameter of the model")
    decay = set(trainer.get_decay_parameter_names(model))
    groups: list[dict[str, Any]] = []
    for n, p in named:
        wd = args.weight_decay if n in decay else 0.0
        if groups and groups[-1]["weight_decay"] == wd:
            groups[-1]["params"].append(p)
        else:
            groups.append({"params": [p], "weight_decay": wd})
    try:
        return cls(groups, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"TrainingArguments.optim / optim_args: {e}") from None


class _TrainerOptimizer(AttachedOptimizer):
    """The attached optimizer as the Trainer holds it: accelerate's `prepare` round-trips a fresh
    optimizer's state dict (device placement), which changes nothing and is let through."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.recorder.t == 0 and not self.state and not state_dict.get("state"):
            return
        super().load_state_dict(state_dict)


class _Batch(dict):
    """A batch pol handed out (the Trainer keeps a dict's type when it moves it to the device)."""


class _Batches:
    """attach's (inputs, labels) micro-batches as the Trainer takes them."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        for x, y in self._loader:
            yield _Batch(input_ids=x, labels=y)


class PolCallback(transformers.TrainerCallback):
    """What `attach_trainer` adds to the Trainer: the attached optimizer (`optimizer`, its
    `recorder`), the proof (`proof`, `root_digest` once the last step is recorded); restores
    torch's global RNG and `trainer.args` when training ends, and warns when it ends before the
    proof's last step."""

    def __init__(self, trainer: Any, optimizer: AttachedOptimizer, args: Any) -> None:
        self.trainer = trainer
        self.optimizer = optimizer
        self._args = args  # the user's TrainingArguments (the trainer runs on a copy)
        self._rng: torch.Tensor | None = None

    @property
    def recorder(self):
        return self.optimizer.recorder

    @property
    def proof(self):
        return self.optimizer.proof

    @property
    def root_digest(self) -> str | None:
        return self.optimizer.root_digest

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step != self.recorder.t:
            raise ConfigError(f"the Trainer starts at step {state.global_step}, the proof at "
                              f"{self.recorder.t}: resuming from a Trainer checkpoint is not "
                              "supported")
        self._rng = torch.get_rng_state()

    def on_train_end(self, args, state, control, **kwargs):
        if self._rng is not None:
            torch.set_rng_state(self._rng)
            self._rng = None
        self.trainer.args = self._args
        if self.root_digest is None:
            warnings.warn(f"training ended at step {self.recorder.t} of "
                          f"{self.recorder.total_steps}: the proof in {self.proof} is incomplete",
                          stacklevel=2)


def _compute_loss(run: AttachedOptimizer, original):
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        if not isinstance(inputs, _Batch):  # evaluation: the Trainer's own
            return original(model, inputs, return_outputs=return_outputs, **kwargs)
        with run.autocast():
            outputs = model(input_ids=inputs["input_ids"])
            loss = run.loss_fn(getattr(outputs, "logits", outputs), inputs["labels"])
        return (loss, outputs) if return_outputs else loss
    return compute_loss


def _training_step(run: AttachedOptimizer, original):
    def training_step(self, *args, **kwargs):
        loss = original(*args, **kwargs)  # scaled by 1 / gradient_accumulation_steps
        run.record_loss(loss)
        return loss
    return training_step


def _install(trainer: Any, opt: AttachedOptimizer, loader: Any) -> PolCallback:
    user_args = trainer.args
    trainer.args = copy.copy(user_args)
    trainer.args.max_grad_norm = 0.0  # pol clips, in the optimizer's step
    trainer.optimizer = opt
    trainer.model_accepts_loss_kwargs = False  # no num_items_in_batch: the loss is a mean
    trainer.loss_is_scaled_for_ga = False  # ... which the Trainer divides by the accumulation
    trainer.get_train_dataloader = lambda: _Batches(loader)
    trainer.compute_loss = types.MethodType(_compute_loss(opt, trainer.compute_loss), trainer)
    trainer.training_step = types.MethodType(_training_step(opt, trainer.training_step), trainer)
    cb = PolCallback(trainer, opt, user_args)
    trainer.add_callback(cb)
    return cb


def attach_trainer(trainer: Any, *, out: str, k: int = 10, init: str | dict | None = None,
                   data_params: dict | None = None, precision: str = "fp32",
                   compress: bool = False, overwrite: bool = False,
                   durable: bool = True) -> PolCallback:
    """Record a proof of `trainer.train()` in `out` (see the module's docstring): checks every
    setting (ConfigError naming it, before anything is written), attaches (checkpoint 0 is
    written) and returns the `PolCallback` it adds to the trainer. `k`, `init`, `precision`,
    `compress`, `overwrite`, `durable`: as for `pol.attach`; `data_params`: the dataset's
    `columns` / `factory` (`pol.prover.data_sources`)."""
    if not isinstance(trainer, transformers.Trainer):
        raise ConfigError(f"trainer must be a transformers.Trainer, not {type(trainer).__name__}")
    if any(isinstance(c, PolCallback) for c in trainer.callback_handler.callbacks):
        raise ConfigError("this Trainer is attached already")
    why = _refusal(trainer)
    if why:
        raise ConfigError(why)
    a, model = trainer.args, trainer.model
    spec = hf_model_spec(model, a.seed)
    _check_mask(trainer.train_dataset)
    optimizer = _optimizer(trainer, model)
    accumulation = a.gradient_accumulation_steps
    opt, loader = attach(
        model=model, optimizer=optimizer, data=trainer.train_dataset, out=out, model_spec=spec,
        batch_size=a.per_device_train_batch_size, epochs=int(a.num_train_epochs), k=k,
        seed=a.seed, loss=LOSS, prepare="tokens", clip_grad_norm=a.max_grad_norm or None,
        accumulation=accumulation, label_smoothing=a.label_smoothing_factor,
        drop_last=True if accumulation > 1 else a.dataloader_drop_last, init=init,
        precision=precision, compress=compress, overwrite=overwrite, durable=durable,
        data_params=data_params, num_workers=a.dataloader_num_workers,
        autocast="bf16" if a.bf16 else None)
    opt = _TrainerOptimizer(opt._inner, opt._run)
    log.info("pol: recording %d steps of trainer.train() in %s", opt.recorder.total_steps,
             opt.proof)
    return _install(trainer, opt, loader)

