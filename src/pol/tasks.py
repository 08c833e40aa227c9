"""Built-in tasks: a name for a (model, dataset, hyperparameters) bundle, so that `pol train --task`
needs no more. The registry is a plain dict; `register_task` adds one.

A task only *produces* a TrainingSpec; nothing downstream looks the task up again (the verifier
rebuilds everything from the spec in the proof).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from pol.errors import ConfigError
from pol.spec import (DataSpec, ModelSpec, OptimizerSpec, ScheduleSpec, StepSpec, TrainingSpec,
                      current_cpu_capability, current_gpu_name)

DEFAULT_TASK = "digits-mlp"


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    arch: str
    model_kwargs: dict
    init: str
    dataset: str
    prepare: str
    optimizer: OptimizerSpec
    batch_size: int
    epochs: int
    k: int
    dataset_params: dict = field(default_factory=dict)
    augment: str = "none"
    schedule: str = "constant"  # constant | multistep (at 50% and 75% of training) | cosine
    loss: str = "cross_entropy"
    needs_data_dir: bool = False


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


_SGD = OptimizerSpec(name="sgd", lr=0.05, momentum=0.9)
_RESNET_SGD = OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)

register_task(Task("digits-mlp", "MLP (64-128-64-10, dropout 0.1) on scikit-learn's 8x8 digits",
                   "mlp", {"in_features": 64, "num_classes": 10, "hidden": [128, 64],
                           "dropout": 0.1},
                   "torch-default", "digits", "digits", _SGD, batch_size=32, epochs=5, k=10))
register_task(Task("digits-cnn", "small LeNet-style CNN on scikit-learn's 8x8 digits (Adam)",
                   "lenet", {"in_channels": 1, "num_classes": 10, "image_size": 8},
                   "torch-default", "digits", "digits", OptimizerSpec(name="adam", lr=2e-3),
                   batch_size=32, epochs=5, k=10))
register_task(Task("iris-logreg", "logistic regression on Iris (used by inverse-gradient attacks)",
                   "logreg", {"in_features": 4, "num_classes": 3}, "torch-default", "iris", "float",
                   OptimizerSpec(name="sgd", lr=0.1), batch_size=16, epochs=20, k=5))
register_task(Task("synthetic-resnet20",
                   "ResNet-20 (as in the paper) on a seeded, learnable CIFAR-shaped synthetic set",
                   "resnet20", {"num_classes": 10}, "kaiming-normal", "synthetic-cifar",
                   "image-hwc-uint8", _RESNET_SGD, batch_size=128, epochs=2, k=10,
                   dataset_params={"seed": 0, "n_train": 2000, "n_test": 500},
                   augment="crop-flip", schedule="multistep"))
register_task(Task("cifar10-resnet20", "ResNet-20 on CIFAR-10 (binary files from a local directory)",
                   "resnet20", {"num_classes": 10}, "kaiming-normal", "cifar10", "image-hwc-uint8",
                   _RESNET_SGD, batch_size=128, epochs=200, k=100, augment="crop-flip",
                   schedule="multistep", needs_data_dir=True))
register_task(Task("cifar100-resnet50",
                   "ResNet-50 on CIFAR-100 (binary files from a local directory)",
                   "resnet50", {"num_classes": 100}, "kaiming-normal", "cifar100",
                   "image-hwc-uint8", _RESNET_SGD, batch_size=128, epochs=200, k=100,
                   augment="crop-flip", schedule="multistep", needs_data_dir=True))


register_task(Task("synthetic-gpt",
                   "nanoGPT-style transformer (AdamW) on seeded Markov-chain token sequences",
                   "gpt", {"vocab_size": 256, "block_size": 128, "n_layer": 4, "n_head": 4,
                           "n_embd": 128}, "gpt2-normal", "synthetic-tokens", "tokens",
                   OptimizerSpec(name="adamw", lr=1e-3, weight_decay=0.1), batch_size=32,
                   epochs=1, k=100, dataset_params={"seed": 0, "n_train": 2048, "n_test": 256},
                   schedule="cosine", loss="lm_cross_entropy"))


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}") from None


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def make_schedule(kind: str, total_steps: int, warmup: int = 0) -> ScheduleSpec:
    if kind == "multistep":
        return ScheduleSpec(name="multistep", milestones=(total_steps // 2, (3 * total_steps) // 4),
                            gamma=0.1, warmup_steps=warmup)
    if kind == "cosine":
        return ScheduleSpec(name="cosine", total_steps=total_steps, warmup_steps=warmup)
    return ScheduleSpec(name="constant", warmup_steps=warmup)


def build_spec(task_name: str, *, epochs: int | None = None, k: int | None = None, seed: int = 0,
               lr: float | None = None, batch_size: int | None = None, precision: str = "fp32",
               device: str = "cpu", deterministic: bool = False, data_dir: str | None = None,
               dataset_params: dict | None = None, tf32: bool = False, warmup: int = 0,
               exact: bool = False):
    """(spec, train set, test set) for a built-in task, with overrides applied. On a GPU the
    spec records TF32 off unless `tf32` (full fp32: what a CPU verifier can reproduce).
    `exact`: exact mode (`StepSpec.exact`: replays bitwise on other hardware)."""
    from pol.datasets import load_dataset
    from pol.proof.hashing import merkle_root, sample_leaves

    task = get_task(task_name)
    if exact and precision != "fp32":
        raise ConfigError("exact mode stores float32 checkpoints: precision must be fp32")
    if task.needs_data_dir and not data_dir:
        raise ConfigError(f"task {task.name} reads {task.dataset} from a local directory: pass "
                          "--data DIR (pol never downloads)")
    params = {**task.dataset_params, **(dataset_params or {})}
    try:
        train, test = load_dataset(task.dataset, params, data_dir)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    bs = batch_size or task.batch_size
    E = epochs or task.epochs
    if bs < 1 or E < 1 or (k is not None and k < 1):
        raise ConfigError("epochs, k and batch size must be positive")
    S = steps_per_epoch(len(train), bs, False)
    opt = task.optimizer if lr is None else replace(task.optimizer, lr=lr)
    leaves = sample_leaves(train.x, train.y)
    spec = TrainingSpec(
        model=ModelSpec(arch=task.arch, kwargs=dict(task.model_kwargs), init=task.init),
        optimizer=opt, schedule=make_schedule(task.schedule, E * S, warmup),
        data=DataSpec(name=task.dataset, params=params, size=len(train),
                      root=merkle_root(leaves).hex(), prepare=task.prepare, augment=task.augment,
                      order="seed"),
        loss=task.loss, batch_size=bs, epochs=E, k=k or task.k, precision=precision, seed=seed,
        task=task.name, device=device, deterministic=deterministic,
        torch_version=torch.__version__, cpu_capability=current_cpu_capability(),
        cpu_threads=torch.get_num_threads(),
        gpu_name=current_gpu_name(device),
        tf32=("on" if tf32 else "off") if device == "cuda" else "",
        step=StepSpec(exact=True) if exact else StepSpec())
    return spec, train, test
