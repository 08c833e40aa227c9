"""Recording a proof around any PyTorch training loop (Algorithm 1).

Low level, for loops you write yourself::

    rec = Recorder("proof/", model=model, optimizer=opt, data=(X, Y),
                   model_spec=ModelSpec("mlp", {...}), batch_size=32, epochs=3, k=10,
                   init="from-seed")                  # pol draws W_0 from the seed
    for epoch in range(rec.epochs):
        for idx in rec.epoch_batches(epoch):          # or your own index order
            x, y = torch.from_numpy(X[idx]), torch.from_numpy(Y[idx])
            rec.record_batch(idx, x, y)                # before the forward pass
            opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
            rec.step(loss)                             # after optimizer.step()
    rec.close()

The verifier replays each step with `pol.step.update()`: zero_grad, forward on the prepared batch,
the spec's loss, backward, optimizer step with the recorded lr; with the spec's step features
(`features=StepSpec(...)`: gradient clipping, accumulation, label smoothing) as `update()` does
them.
A loop that does something else in a step (AMP, say) will not replay.

High level: `pol.attach(...)` wraps your optimizer and hands you the batches (the step features
applied and every step recorded, `pol.prover.attach`); `fit(...)` runs the whole loop for you.

W_0: the Recorder never changes the caller's weights. It records a model that holds exactly the
spec's seeded init (`pol.step.draw_init`: what pol's trainer and `build_context` draw, and what the
hardened verifier regenerates bitwise); anything else is refused with the ways to record it:
`init="from-seed"` (pol draws W_0 before training: asked for, so the weights may change),
`init="external"` (the given weights as they are: the manifest's init says `"external": true`, and
the verifier checks them statistically only), or a warm start from a parent proof
(`init={"kind": "parent", "root_digest": ...}`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from pol.datasets import ArrayDataset, LazyDataset
from pol.errors import ConfigError, ProofWriteError
from pol.proof import format as fmt
from pol.proof.hashing import merkle_root, sample_leaves
from pol.proof.writer import ProofWriter
from pol.prover.data_sources import resolve_data
from pol.prover.snapshot import DeviceSnapshotter
from pol.spec import (DataSpec, ModelSpec, ScheduleSpec, StepSpec, TrainingSpec,
                      current_cpu_capability, current_gpu_name, current_tf32)
from pol.step import (derive_seed, epoch_order, optimizer_spec_of, seed_step,  # noqa: F401
                      state_tensors)
from pol.step.runtime import check_recordable_numerics
from pol.step.context import uncompiled
from pol.step.init import draw_init, seeded_init_mismatch
from pol.step.optimizers import optimizer_row
from pol.step.state import storage_dtype

log = logging.getLogger(__name__)

INIT_CHOICES = ("from-seed", "external")  # besides None (the seeded init) and a parent dict
# exact mode: rounding-log rows on the host that go to the proof writer between checkpoints, as
# a piece (32 bytes each: 16 MiB), so that a long interval's log is never held at once
LOG_PIECE_ROWS = 1 << 19


def _as_dataset(data: Any) -> ArrayDataset:
    if isinstance(data, ArrayDataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        return ArrayDataset(np.asarray(x), np.asarray(y).astype(np.int64))
    raise ConfigError("data must be an ArrayDataset, a pair (inputs, labels) of arrays, a torch "
                      "Dataset (with data_params={'factory': 'module:callable'}) or a "
                      "pol.datasets.TokenFile")


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each group's step hyperparameters other than the lr (the keys of the optimizer's
    defaults: momentum, betas, eps, weight decay, ...), to notice one that changes mid-run."""
    keys = [k for k in optimizer.defaults if k not in ("lr", "initial_lr")]
    return [{k: g.get(k) for k in keys} for g in optimizer.param_groups]


class _TargetCheck:
    """`record_batch`'s check that the targets are the dataset's labels at the indices, without a
    device→host synchronization on the training thread: host targets are compared at once (no
    device involved); device targets are copied (non-blocking, into pinned memory) to the host
    and compared by a background thread once the checkpoint that ends their window has queued
    an event behind the copies. A mismatch is raised at a later checkpoint, at the latest by
    `close()`, and the proof is aborted (its steps trained on a batch the indices do not name).
    `defer_host=True` sends host targets the background way too (tests)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.defer_host = False
        self.window: list[tuple[int, np.ndarray, torch.Tensor]] = []  # (step, indices, targets)
        self.device: torch.device | None = None  # of the window's device targets
        self.pool: Any = None  # ThreadPoolExecutor, started at the first deferred check
        self.futures: list[Any] = []

    def add(self, t: int, idx: np.ndarray, targets: Any) -> None:
        if isinstance(targets, torch.Tensor) and (targets.device.type != "cpu"
                                                  or self.defer_host):
            targets = targets.detach()
            if targets.device.type == "cuda":  # lands in pinned memory, no host synchronization
                self.device = targets.device
                targets = targets.to("cpu", non_blocking=True)
            elif targets.device.type == "cpu":
                targets = targets.clone()  # the caller may reuse the buffer
            self.window.append((t, idx, targets))
            return
        t_np = targets.detach().numpy() if isinstance(targets, torch.Tensor) else targets
        if not np.array_equal(np.asarray(t_np), self.labels[idx]):
            raise ConfigError(self.message(t))

    @staticmethod
    def message(t: int) -> str:
        return (f"step {t}: targets differ from the dataset's labels at these indices: the batch "
                "is not the one the indices name")

    def flush(self) -> None:
        """Send the window's deferred checks to the background thread."""
        if not self.window:
            return
        window, self.window = self.window, []
        event = None
        if self.device is not None:  # behind the window's copies, on the training stream
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.device = None
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="pol-target-check")
        self.futures.append(self.pool.submit(self._compare, window, event))

    def _compare(self, window: list, event: Any) -> int | None:
        if event is not None:
            event.synchronize()
        for t, idx, targets in window:
            if not np.array_equal(targets.numpy(), self.labels[idx]):
                return t
        return None

    def raise_found(self, rec: "Recorder", wait: bool = False) -> None:
        """Raise (aborting the proof) a mismatch that a finished check found; with `wait`, flush
        and wait for all of them first."""
        if wait:
            self.flush()
        done = [f for f in self.futures if wait or f.done()]
        self.futures = [f for f in self.futures if f not in done]
        bad = [t for t in (f.result() for f in done) if t is not None]
        if bad:
            rec.abort()
            raise ConfigError(self.message(min(bad)))

    def shutdown(self) -> None:
        self.window, self.futures = [], []
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


class Recorder:
    """Records checkpoints every k steps (plus the final state), batch indices, data hashes, the
    lr of every step and the loss, into a proof directory."""

    def __init__(self, out: str | os.PathLike, *, model: nn.Module,
                 optimizer: torch.optim.Optimizer, data: Any,
                 model_spec: ModelSpec | None = None, batch_size: int | None = None,
                 epochs: int | None = None, k: int = 10, seed: int = 0,
                 loss: str = "cross_entropy", prepare: str = "float", augment: str = "none",
                 precision: str = "fp32", schedule: ScheduleSpec | None = None,
                 data_name: str = "user", data_params: dict | None = None,
                 spec: TrainingSpec | None = None, overwrite: bool = False,
                 durable: bool = True, init: str | dict | None = None,
                 resume: bool = False, init_from_seed: bool | None = None,
                 compress: bool = False, keyframe_interval: int | None = None,
                 continue_from_stored: bool = True, data_order: str = "",
                 features: StepSpec | None = None, drop_last: bool = False,
                 allow_nondeterministic: bool = False) -> None:
        # long: every check of what the caller gives runs here, before anything is written
        """`compress`: store checkpoints with the lossless codec (proof format v2: XOR with the
        previous checkpoint, byte shuffle, zstd; a keyframe every `keyframe_interval`
        checkpoints). Exact-mode verification is unaffected. A resumed run keeps the codec it was
        started with.

        `precision="fp16"`: at every checkpoint (step 0 included) the live model and optimizer
        state are rounded, in place, to the values stored (fp16 weights, bf16 Adam moments), so
        training continues from exactly the state the proof holds: a verifier replays each
        segment from that stored state, and on the prover's kind of hardware lands bitwise on the
        next checkpoint (a resumed run continues from it too). `continue_from_stored=False` keeps
        training on the unrounded state (a replay then starts half an ulp away from the prover's
        trajectory and is only within δ; with Adam, whose per-element step is ~lr whatever the
        gradient's size, not even that).

        `init`: how the model's current weights become the proof's W_0 (the Recorder never
        changes them unless asked): None (default) — they must be the spec's seeded init, else
        ConfigError saying how to record them; "from-seed" — pol draws W_0 from the seed now,
        overwriting them; "external" — recorded as they are, marked external in the manifest
        (`init.external`: checked statistically, not regenerated); a dict
        `{"kind": "parent", "root_digest": ...}` — a warm start from a parent proof.
        `init_from_seed=True` is the older spelling of `init="from-seed"`.

        `features`: the step's clipping, accumulation and label smoothing (`pol.spec.StepSpec`),
        recorded in the spec for the replay; the loop must do exactly that (`pol.attach` does).
        With accumulation N, `batch_size` is the optimizer step's batch (N micro-batches of
        batch_size / N) and `record_batch` takes all of the step's indices.

        On a GPU, recording needs `torch.use_deterministic_algorithms(True)` (ConfigError
        otherwise): without it a proof replays only approximately, even on the same GPU.
        `allow_nondeterministic=True` records anyway (with a `spec`, as `pol train
        --no-deterministic` passes it, the spec's own choice stands)."""
        from pol.registry import importing_factory_module
        importing = importing_factory_module()
        if importing is not None:
            raise ConfigError(f"a Recorder was started while pol imported the model factory "
                              f"module {importing}: that module trains when imported (it would "
                              "train twice, and a verifier importing it would write a proof); "
                              "define the model class in a module of its own, without training "
                              "code at its top level (or under `if __name__ == \"__main__\":`)")
        if not resume and any(optimizer.state.get(p) for g in optimizer.param_groups
                              for p in g["params"]):
            raise ConfigError("the optimizer already holds state (moments, momentum buffers) "
                              "from earlier steps: a proof starts from a fresh optimizer (the "
                              "verifier rejects state at checkpoint 0). Record from the start, or "
                              "record those earlier steps as a parent proof and warm-start from it")
        model = uncompiled(model)  # torch.compile: the module underneath (or ConfigError)
        self.model = model
        self.optimizer = optimizer
        data, data_name, data_params = resolve_data(data, data_name, data_params)
        self.dataset = data if isinstance(data, LazyDataset) else _as_dataset(data)
        self.leaves = sample_leaves(self.dataset.x, self.dataset.y)  # one pass if read on demand
        n = len(self.dataset)
        device = next(iter(model.parameters())).device.type
        if spec is None:
            check_recordable_numerics(device, allow_nondeterministic)
            if model_spec is None or batch_size is None or epochs is None:
                raise ConfigError("Recorder needs model_spec, batch_size and epochs (or a spec)")
            try:
                flat = [p for g in optimizer.param_groups for p in g["params"]]
                mine = list(model.parameters())
                if len(flat) != len(mine) or any(a is not b for a, b in zip(flat, mine)):
                    raise ValueError("the optimizer's parameter groups must hold the model's "
                                     "parameters, each once, in model.parameters() order")
                opt_spec = optimizer_spec_of(optimizer)
                spec = TrainingSpec(
                    model=model_spec, optimizer=opt_spec,
                    schedule=schedule or ScheduleSpec(name="recorded"),
                    data=DataSpec(name=data_name, params=dict(data_params or {}), size=n,
                                  root=merkle_root(self.leaves).hex(), prepare=prepare,
                                  augment=augment, order=data_order),
                    loss=loss, batch_size=batch_size, epochs=epochs, k=k, precision=precision,
                    drop_last=drop_last, step=features or StepSpec(),
                    seed=seed, device=device,
                    deterministic=torch.are_deterministic_algorithms_enabled(),
                    torch_version=torch.__version__,
                    cpu_capability=current_cpu_capability(),
                    cpu_threads=torch.get_num_threads(),
                    gpu_name=current_gpu_name(next(iter(model.parameters())).device))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif spec.data.root != merkle_root(self.leaves).hex() or spec.data.size != n:
            raise ConfigError("the data given does not match the spec's dataset commitment")
        if device == "cuda" and not spec.tf32:  # record the TF32 settings actually in force
            spec = spec.with_(tf32=current_tf32())
        self.spec = spec
        self.epochs = spec.epochs
        self.steps_per_epoch = (n // spec.batch_size if spec.drop_last
                                else math.ceil(n / spec.batch_size))
        if self.steps_per_epoch < 1:
            raise ConfigError("the dataset is smaller than one batch")
        self.total_steps = self.epochs * self.steps_per_epoch
        self.k = spec.k
        self.t = 0
        self._pending_idx: np.ndarray | None = None
        # samples used so far in the current epoch (None: not tracked, after a resume mid-epoch)
        self._seen: np.ndarray | None = np.zeros(n, dtype=bool)
        self._order: np.ndarray | None = None  # this epoch's order (spec.data.order "seed")
        self._stamp = np.zeros(n, dtype=np.int64)  # scratch of the duplicate check
        self._positions = np.arange(spec.batch_size, dtype=np.int64)
        self._rows_idx: list[np.ndarray] = []
        self._rows_lr: list[list[float]] = []
        self._rows_loss: list[torch.Tensor] = []
        self._targets = _TargetCheck(self.dataset.y)
        self._closed = False
        self._hyper = _hyperparameters(optimizer)  # what the spec recorded: must not change
        self._state_cache: tuple[int, dict[str, torch.Tensor]] | None = None
        self._round_live = spec.precision == "fp16" and continue_from_stored
        self._rounding = None  # exact mode: the steps' rounding log (`use_rounding_log`)
        if spec.step.exact:
            from pol.step.exact import check_model
            check_model(model)
        if spec.step.autocast == "fp16":
            from pol.step.amp import scaler_of
            if scaler_of(optimizer) is None:  # its state must be in every checkpoint
                raise ConfigError("fp16 autocast needs its GradScaler recorded with the "
                                  "optimizer: record the loop with pol.attach(autocast=\"fp16\", "
                                  "grad_scaler=...), which drives the scaler")
        self.init = self._take_init("from-seed" if init is None and init_from_seed else init,
                                    resume)
        run_info = {"spec": spec.to_dict(), "total_steps": self.total_steps, "k": self.k,
                    "steps_per_epoch": self.steps_per_epoch, "init": self.init,
                    "param_groups": len(optimizer.param_groups)}
        if resume:
            self._resume(out, run_info, durable)
        else:
            from pol.proof.codec import DEFAULT_KEYFRAME_INTERVAL
            self.writer = ProofWriter(out, precision=spec.precision, overwrite=overwrite,
                                      durable=durable, run_info=run_info, compress=compress,
                                      keyframe_interval=keyframe_interval
                                      or DEFAULT_KEYFRAME_INTERVAL,
                                      snapshotter=DeviceSnapshotter())
            self.path = self.writer.dir
            state0 = state_tensors(model, optimizer)
            self._round_to_stored(state0)
            self.writer.put_checkpoint(0, state0)
            self._prewarm_pinned()

    def _prewarm_pinned(self) -> None:
        """On a GPU, the first snapshot that includes the optimizer's state needs a pinned host
        buffer as large as weights + moments (1 GB for a 100M-parameter AdamW model), and pinning
        that much memory stalls training. Allocate it once now, before the first step, and free it:
        torch's caching host allocator hands the same block to the snapshot later."""
        params = [p for p in self.model.parameters()]
        if not params or params[0].device.type != "cuda" or self.spec.precision != "fp32":
            return
        opt = self.spec.optimizer
        moments = (0 if opt.name == "sgd" and opt.momentum == 0  # plain SGD keeps no state
                   else optimizer_row(opt.name).moments)
        n = sum(v.numel() for v in self.model.state_dict().values() if v.is_floating_point())
        n += moments * sum(p.numel() for p in params)
        self.writer.snapshotter.prewarm(n)

    def _resume(self, out, run_info: dict, durable: bool) -> None:
        """Continue an interrupted proof from its last complete checkpoint: the model and
        optimizer are loaded from it, and steps go on from there exactly as they would have."""
        from pol.proof.reader import parse_safetensors
        from pol.proof.writer import prepare_resume
        from pol.step import load_state
        rp = prepare_resume(out)
        if rp.run_info.get("spec") != run_info["spec"] or rp.run_info.get("init") != self.init:
            raise ConfigError(f"{out} was started with a different spec; it cannot be resumed "
                              "with this one")
        name = fmt.checkpoint_name(rp.t)
        data = rp.checkpoint_bytes()  # decoded for a compressed (v2) proof
        load_state(self.model, self.optimizer, self.spec.optimizer.name,
                   parse_safetensors(data, name, fmt.Limits()))
        self.t = rp.t
        if self.t % self.steps_per_epoch:  # this epoch's earlier batches are not at hand
            self._seen = None
        self.writer = ProofWriter(out, precision=self.spec.precision, durable=durable, resume=rp,
                                  snapshotter=DeviceSnapshotter())
        self.path = self.writer.dir
        log.info("resuming %s at step %d of %d", out, rp.t, self.total_steps)

    def _take_init(self, init: str | dict | None, resume: bool) -> dict:
        """Check the model against `model_spec`, make its weights W_0 as `init` says (changing
        them only for "from-seed"), and return the manifest's `init`."""
        if isinstance(init, str) and init not in INIT_CHOICES:
            raise ConfigError(f"init={init!r}: expected one of {', '.join(INIT_CHOICES)}, a "
                              "parent dict {'kind': 'parent', 'root_digest': ...}, or None")
        if init is not None and not isinstance(init, (str, dict)):
            raise ConfigError("init must be a string, a dict or None")
        rebuilt = self._check_model_spec()
        ms = self.spec.model
        if not resume:  # a resumed run's weights come from its checkpoint
            if init == "from-seed" and ms.init == "none":  # W_0: the factory's own (seeded) init
                self.model.load_state_dict(rebuilt.state_dict())
            elif init == "from-seed":
                draw_init(self.model, ms, self.spec.seed)
            elif init is None:
                self._check_seeded_init(rebuilt)
        if isinstance(init, dict):
            return init
        if init == "external":  # the verifier checks these statistically, cannot regenerate them
            return {"kind": "strategy", "strategy": ms.init, "external": True}
        return {"kind": "strategy", "strategy": ms.init}

    def _check_seeded_init(self, rebuilt: nn.Module) -> None:
        """Refuse weights that are not the spec's seeded init (the Recorder never overwrites the
        caller's weights unasked), saying how to record them."""
        ms = self.spec.model
        bad = seeded_init_mismatch(self.model, rebuilt, ms, self.spec.seed)
        if bad is None:
            return
        raise ConfigError(
            f"the model's weights are not the init pol draws from seed {self.spec.seed} with "
            f"strategy {ms.init!r} (parameter {bad!r} differs), and the Recorder never changes "
            "the weights it is given. Say how to record them: init=\"from-seed\" to let pol draw "
            "W_0 from the seed before training (the verifier then regenerates it bitwise); "
            "init=\"external\" to record these weights as they are (the verifier checks them "
            f"statistically against {ms.init!r}, it cannot regenerate them); or warm-start from a "
            "parent proof (init={\"kind\": \"parent\", \"root_digest\": ...}, "
            "pol.protocol.chain)")

    def _check_model_spec(self) -> nn.Module:
        """Catch a model_spec that would not rebuild this model, before training starts; returns
        the rebuilt model (on the CPU, constructor's init)."""
        from pol.registry import same_architecture
        from pol.step import build_model
        ms = self.spec.model
        trusted = [ms.arch.split(":")[0]] if ":" in ms.arch else []
        try:
            rebuilt = build_model(ms, trusted)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"model_spec cannot be rebuilt: {e}") from None
        if not same_architecture(rebuilt, self.model):
            raise ConfigError("model_spec builds a model whose parameters differ in names or "
                              "shapes from the model being trained")
        return rebuilt

    # ----- data order -----

    def epoch_batches(self, epoch: int) -> Iterator[np.ndarray]:
        """Batches of indices for `epoch`, from the run's seed (what the built-in loop uses)."""
        order = epoch_order(self.spec.seed, epoch, len(self.dataset))
        B = self.spec.batch_size
        for s in range(self.steps_per_epoch):
            yield order[s * B:(s + 1) * B]

    # ----- per step -----

    def record_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor,
                     inputs: torch.Tensor | None = None,
                     targets: torch.Tensor | None = None, *, seed_rng: bool = True) -> None:
        """Record the batch of the coming step. Call before the forward pass: it also seeds the
        global RNG for this step, so dropout masks are the ones the verifier will draw.

        `targets`, if given, must be the dataset's labels at `indices` (ConfigError otherwise).
        Host targets are checked here; targets on a GPU are checked off the training thread (no
        device→host synchronization per step): a mismatch is raised by a later `step()` that
        writes a checkpoint, at the latest by `close()`, and the proof is aborted."""
        if self._closed:
            raise ProofWriteError("the recorder is closed")
        if self.t >= self.total_steps:
            raise ConfigError(f"all {self.total_steps} steps of the declared run are recorded")
        if self._pending_idx is not None:
            raise ConfigError("record_batch called twice without step()")
        if self.spec.step.exact and self._rounding is None:
            raise ConfigError("an exact-mode proof records its steps' rounding log, which only "
                              "pol's step makes: train with pol.fit, pol.attach(exact=True) or "
                              "pol train --exact (a loop of your own around a Recorder cannot "
                              "round its steps as the replay does)")
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or not 1 <= len(idx) <= self.spec.batch_size:
            raise ConfigError(f"indices must be a 1-D integer array of 1..{self.spec.batch_size}")
        if idx.min() < 0 or idx.max() >= len(self.dataset):
            raise ConfigError("an index is outside the dataset")
        if inputs is not None and len(inputs) != len(idx):
            raise ConfigError("inputs and indices have different lengths")
        self._check_epoch_structure(idx)
        if targets is not None:
            self._targets.add(self.t, idx, targets)
        self._pending_idx = idx.astype(np.int64)
        if _hyperparameters(self.optimizer) != self._hyper:
            self._hyperparameters_changed()
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._rows_lr.append(lrs)
        if seed_rng:  # pol's own loop leaves this to update(), which seeds the same value
            seed_step(self.spec.seed, self.t)

    def _hyperparameters_changed(self) -> None:
        now = _hyperparameters(self.optimizer)
        i, key, was, is_ = next((i, k, a[k], b.get(k)) for i, (a, b) in
                                enumerate(zip(self._hyper, now)) if a != b
                                for k in a if a[k] != b.get(k))
        self.abort()
        raise ConfigError(
            f"step {self.t}: the optimizer's {key!r} (parameter group {i}) changed from {was!r} "
            f"to {is_!r} during the run. pol records every step's lr, but the other "
            "hyperparameters only once, so the replay would run this step with the old value: "
            "a scheduler that cycles momentum (OneCycleLR, CyclicLR: pass "
            "cycle_momentum=False) or code that edits param_groups cannot be recorded. The "
            "proof is aborted")

    def _check_epoch_structure(self, idx: np.ndarray) -> None:
        """Refuse up front a batch the verifier's epoch-structure check would reject: within an
        epoch no sample twice, and only the epoch's last batch short (the verifier checks that
        every epoch's indices are a permutation of the dataset)."""
        S, B, n = self.steps_per_epoch, self.spec.batch_size, len(self.dataset)
        s = self.t % S
        seed_order = self.spec.data.order == "seed"
        if s == 0 and not seed_order:
            self._seen = np.zeros(n, dtype=bool)
        if seed_order:  # the spec promises epoch_order: hold it to that (a permutation already)
            if s == 0 or self._order is None:
                self._order = epoch_order(self.spec.seed, self.t // S, n)
            if not np.array_equal(idx, self._order[s * B:s * B + len(idx)]):
                raise ConfigError(f"step {self.t}: the spec says the batch order comes from the "
                                  "seed (rec.epoch_batches), but these indices differ from it")
        want = B if s < S - 1 or self.spec.drop_last else n - (S - 1) * B
        if len(idx) != want:
            raise ConfigError(f"step {self.t} (batch {s} of {S} in its epoch) has {len(idx)} "
                              f"samples, expected {want}: every batch but an epoch's last is "
                              f"full, and each epoch uses every sample once")
        if self._seen is not None and not seed_order:
            # a sample seen earlier in the epoch, or twice in this batch (where a later position
            # overwrites an earlier one's stamp): O(batch), not a sort of the batch per step
            stamp = self._stamp
            stamp[idx] = self._positions[:len(idx)]
            if (self._seen[idx].any()
                    or not np.array_equal(stamp[idx], self._positions[:len(idx)])):
                raise ConfigError(f"step {self.t}: a sample is used twice in epoch "
                                  f"{self.t // S}: each epoch's indices must be a permutation "
                                  "of the dataset (sampling with replacement is not supported)")
            self._seen[idx] = True

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of a step (after optimizer.step()); checkpoints every k steps."""
        if self._pending_idx is None:
            raise ConfigError("step() called without record_batch() first")
        row = np.full(self.spec.batch_size, -1, dtype=np.int64)
        row[:len(self._pending_idx)] = self._pending_idx
        self._rows_idx.append(row)
        if loss is None:
            raise ConfigError("step() needs the step's loss (rec.step(loss)): the verifier "
                              "recomputes every replayed step's loss and compares")
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss))
        # each torch call costs a few µs of dispatch on the training thread: skip the no-ops
        if loss.requires_grad:
            loss = loss.detach()
        if loss.dim():
            loss = loss.reshape(())
        if loss.dtype != torch.float32:
            loss = loss.float()
        self._rows_loss.append(loss)
        self._pending_idx = None
        self.t += 1
        if self.t % self.k == 0 or self.t == self.total_steps:
            self._checkpoint()
        elif self._rounding is not None and self._rounding.ready >= LOG_PIECE_ROWS:
            # the rows already on the host go to the writer's thread now (no wait for a device)
            self.writer.put_log(self._rounding.take(wait=False))

    def _checkpoint(self) -> None:
        self._targets.flush()  # the window's target checks go to the background
        self._targets.raise_found(self)
        losses = (self._rows_loss[0].reshape(1) if len(self._rows_loss) == 1  # k = 1: a view
                  else torch.stack(self._rows_loss))
        records = {"indices": np.stack(self._rows_idx), "lrs": np.asarray(self._rows_lr),
                   "losses": losses}
        if self.spec.step.exact:
            records["roundlog"] = self._rounding.take()
        self._rows_idx, self._rows_lr, self._rows_loss = [], [], []
        state = self._state()
        self._round_to_stored(state)
        self.writer.put_checkpoint(self.t, state, records)

    def use_rounding_log(self, log) -> None:
        """Exact mode: the `pol.step.exact.RoundingLog` the steps record into (the step
        context's `exact`); each checkpoint writes the entries since the previous one, and
        between checkpoints every LOG_PIECE_ROWS rows go to the writer as they reach the
        host."""
        self._rounding = log

    def _round_to_stored(self, state: dict[str, torch.Tensor]) -> None:
        """fp16 proofs: round the live state, in place, to what the proof stores (the writer's
        own cast, round-to-nearest-even, so storing it again changes nothing): training goes on
        from exactly the checkpoint the verifier will replay from. Without it, the prover
        continues from full precision while replay starts from the rounded checkpoint; that
        half-ulp difference grows over the segment (for Adam by up to ~2·lr per element and
        step wherever a gradient is near zero, since Adam's step size does not shrink with the
        gradient: a digits-cnn fp16 proof replayed 2–6× over the auto δ in ℓ∞)."""
        if not self._round_live:
            return
        with torch.no_grad():
            for name, v in state.items():
                st = storage_dtype(name, v, "fp16")
                if st != v.dtype:
                    v.copy_(v.to(st))

    def _state(self) -> dict[str, torch.Tensor]:
        """The state dict to snapshot, cached while the optimizer's state does not grow: tensors
        are updated in place by training, so the same objects hold the new values (do not replace
        parameter tensors while recording). Saves ~0.3 ms per checkpoint on a ResNet-20."""
        n = sum(len(s) for s in self.optimizer.state.values())
        if self._state_cache is None or self._state_cache[0] != n:
            self._state_cache = (n, state_tensors(self.model, self.optimizer))
        return self._state_cache[1]

    # ----- finish -----

    def close(self) -> str:
        """Finish the proof; returns its root digest. Refuses a run shorter than declared."""
        if self._closed:
            raise ProofWriteError("the recorder is already closed")
        if self.t != self.total_steps:
            self.abort()
            raise ProofWriteError(f"only {self.t} of the declared {self.total_steps} steps were "
                                  "recorded; the proof is left incomplete")
        self._targets.raise_found(self, wait=True)  # every deferred target check is done
        from pol._version import __version__
        body = {
            "format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "pol_version": __version__, "spec": self.spec.to_dict(), "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "k": self.k, "checkpoints": fmt.checkpoint_steps(self.total_steps, self.k),
            "init": self.init, "param_groups": len(self.optimizer.param_groups),
            "dataset_size": len(self.dataset),
        }
        self._closed = True
        self._targets.shutdown()
        self.root_digest = self.writer.finalize(body, self.leaves)
        return self.root_digest

    def abort(self) -> None:
        self._closed = True
        self._targets.shutdown()
        self.writer.abort()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self.abort()


@dataclass
class FitResult:
    proof: Path
    root_digest: str
    final_loss: float
    seconds: float


def run_loop(rec: Recorder, ctx, schedule_lr: Callable[[int], list[float]] | None = None,
             progress: bool = False, desc: str = "training") -> float:
    """The built-in loop: batches from the committed seed, `update()` per step."""
    import time

    from tqdm import tqdm

    from pol.step import update
    ds = rec.dataset
    loss = None
    if ctx.exact is not None:
        rec.use_rounding_log(ctx.exact)
    bar = tqdm(total=rec.total_steps, desc=desc, disable=not progress, unit="step", leave=False)
    t0 = time.perf_counter()
    try:
        S = rec.steps_per_epoch
        bar.update(rec.t)
        for epoch in range(rec.t // S, rec.epochs):
            for s, idx in enumerate(rec.epoch_batches(epoch)):
                if epoch * S + s < rec.t:
                    continue  # resumed run: these steps are in the proof already
                if schedule_lr is not None:
                    for g, lr in zip(rec.optimizer.param_groups, schedule_lr(rec.t)):
                        g["lr"] = lr
                x = torch.from_numpy(ds.x[idx])
                y = torch.from_numpy(ds.y[idx])
                t = rec.t
                rec.record_batch(idx, seed_rng=False)
                loss = update(ctx, x, y, [g["lr"] for g in rec.optimizer.param_groups], t)
                rec.step(loss)
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1)
    except BaseException:
        rec.abort()
        raise
    finally:
        bar.close()
    rec.elapsed = time.perf_counter() - t0
    return float(loss) if loss is not None else float("nan")


def fit_context(rec: Recorder):  # -> pol.step.StepContext
    """The step context `fit` trains with: the Recorder's model and optimizer, every other field
    from the spec it records (by `pol.step.step_context`, as `build_context` takes them)."""
    from pol.step.context import step_context
    return step_context(rec.spec, rec.model, rec.optimizer)


def fit(out: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer, data: Any,
        model_spec: ModelSpec, batch_size: int, epochs: int, k: int = 10, seed: int = 0,
        loss: str = "cross_entropy", prepare: str = "float", augment: str = "none",
        precision: str = "fp32", schedule: ScheduleSpec | None = None, overwrite: bool = False,
        progress: bool = False, init: str | dict | None = None,
        features: StepSpec | None = None, exact: bool = False) -> FitResult:
    """Train `model` on `data` for `epochs` with a proof: the common DataLoader + optimizer loop in
    one call (shuffled batches from `seed`, the lr schedule applied per step). `init`: as for the
    `Recorder` (`init="from-seed"` lets pol draw W_0 from the seed first); `features`: the step's
    clipping, accumulation and label smoothing (`StepSpec`; `batch_size` is the optimizer step's
    batch, split into `features.accumulation` micro-batches); `exact=True`: exact mode
    (`pol.step.exact`: the proof replays bitwise on other hardware)."""
    import time

    from pol.step.runtime import numerics
    from pol.step.schedule import lrs_at

    if exact:
        import dataclasses
        try:
            features = dataclasses.replace(features or StepSpec(), exact=True)
        except ValueError as e:
            raise ConfigError(f"exact=True: {e}") from None
    rec = Recorder(out, model=model, optimizer=optimizer, data=data, model_spec=model_spec,
                   batch_size=batch_size, epochs=epochs, k=k, seed=seed, loss=loss,
                   prepare=prepare, augment=augment, precision=precision,
                   schedule=schedule or ScheduleSpec(), overwrite=overwrite, data_order="seed",
                   init=init, features=features)
    # every field of the step from the recorded spec, as the verifier's build_context takes them
    ctx = fit_context(rec)
    base = [g["lr"] for g in optimizer.param_groups]
    sched = rec.spec.schedule

    def lr_at(t: int) -> list[float]:
        return lrs_at(sched, base, t, rec.total_steps)

    t0 = time.perf_counter()
    with numerics(rec.spec, ctx.device):
        last = run_loop(rec, ctx, lr_at, progress=progress)
    digest = rec.close()
    return FitResult(proof=rec.path, root_digest=digest, final_loss=last,
                     seconds=time.perf_counter() - t0)
