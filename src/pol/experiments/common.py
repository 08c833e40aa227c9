"""What every experiment shares: the configuration, the workspace (one per `pol experiment`
invocation: caches the training runs that several experiments read), the setups (a built-in
task's spec with the experiment's overrides), one training loop with observers, and the outputs
(CSV, PNG, markdown fragment).

The training loop is pol's own: the batches from the run's seed (`pol.step.epoch_order`), the lr of
the spec's schedule (`pol.step.lrs_at`), `pol.step.update` for every step, under the numerics the
spec records (`pol.step.numerics`), optionally through a `pol.Recorder` (a proof). Observers run
beside it: a `Shadow` replays the same steps on a second copy of the model from the reference
state every k steps (the verifier's W'_{t+k} from W_t, Algorithm 2), which measures the
reproduction error at every k in one pass without storing every checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pol.errors import ConfigError
from pol.experiments.sizes import Size, get_size, with_settings

# emulated hardware noise (CPU): each replayed step's weights get an independent relative
# perturbation of one fp32 unit roundoff, the size of one rounding difference per step
FP32_ROUNDOFF = 2.0 ** -24
INDEPENDENT_SEED_OFFSET = 1000  # the d_ref partner of run r has seed (seed + r + this)
# tasks that are variants of a built-in one: (base task, spec changes)
VARIANTS = {"synthetic-resnet50": ("synthetic-resnet20",
                                   {"arch": "resnet50", "model_kwargs": {"num_classes": 100}})}
REAL_CIFAR = {"synthetic-resnet20": "cifar10-resnet20", "synthetic-resnet50": "cifar100-resnet50"}


@dataclass
class Config:
    """The command line's options (`pol experiment`)."""

    size: str = "small"
    task: str | None = None
    device: str = "cpu"
    out: Path = Path("experiments")
    data_dir: str | None = None  # a local CIFAR directory (paper size): real CIFAR-10/100
    epochs: int | None = None
    runs: int | None = None
    seed: int = 0
    noise: str = "auto"  # auto: emulated on a CPU, the hardware's own on a GPU | emulated | none
    progress: bool = False
    keep_runs: bool = False  # keep the proofs trained on the way (OUT/runs), else a temp dir
    settings: dict = field(default_factory=dict)  # size fields changed (`--set`, `sizes.parse_setting`)


def command_line(name: str, cfg: Config, doc: str | os.PathLike | None = None) -> str:
    """The `pol experiment` command that runs `name` with `cfg` (for the record)."""
    parts = ["pol experiment", name, f"--size {cfg.size}"]
    opts = (("--task", cfg.task, None), ("--device", cfg.device, "cpu"),
            ("--data", cfg.data_dir, None), ("--epochs", cfg.epochs, None),
            ("--runs", cfg.runs, None), ("--seed", cfg.seed, 0), ("--noise", cfg.noise, "auto"))
    parts += [f"{flag} {value}" for flag, value, default in opts if value != default]
    import json
    import shlex
    parts += [f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in cfg.settings.items()]
    parts.append(f"--out {cfg.out}")
    if doc is not None:
        parts.append(f"--doc {doc}")
    return " ".join(parts)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Output:
    """What one experiment wrote."""

    name: str
    csv: Path
    png: Path
    md: Path
    rows: list[dict]
    summary: dict = field(default_factory=dict)


TRUSTED_DATASET_BYTES = 64 * 2**30  # datasets the experiments generate themselves


class Workspace:
    """One invocation's state: the config, the size, the device, and cached runs."""

    def __init__(self, cfg: Config) -> None:
        from pol.registry import resolve_device
        self.cfg = cfg
        self.size: Size = with_settings(get_size(cfg.size), cfg.settings)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.keep_runs:
            self.runs_dir = self.out / "runs"
        else:
            import tempfile
            self.runs_dir = Path(tempfile.mkdtemp(prefix="pol-experiment-runs-"))
        self.cache: dict[str, Any] = {}
        self.failed: dict[str, BaseException] = {}  # cached computations that raised
        self.record_index: int | None = None  # this invocation's entry in OUT/runs.json
        self.outputs: dict[str, Output] = {}
        self.started = time.time()
        if cfg.noise not in ("auto", "emulated", "none"):
            raise ConfigError("--noise must be auto, emulated or none")

    @property
    def runs(self) -> int:
        return self.cfg.runs or self.size.runs

    @property
    def epochs(self) -> int:
        return self.cfg.epochs or self.size.epochs

    @property
    def noise(self) -> float:
        """The emulated noise of a replay: a CPU replays bitwise, so its hardware adds none."""
        mode = self.cfg.noise
        if mode == "auto":
            mode = "emulated" if self.device.type == "cpu" else "none"
        return FP32_ROUNDOFF if mode == "emulated" else 0.0

    @property
    def noise_label(self) -> str:
        if self.noise:
            return "emulated (2^-24 relative per step, CPU)"
        return f"hardware ({self.device.type}, non-deterministic kernels)"

    def close(self) -> None:
        """Remove the runs' proofs unless they are kept."""
        if not self.cfg.keep_runs:
            import shutil
            shutil.rmtree(self.runs_dir, ignore_errors=True)

    @contextlib.contextmanager
    def threads(self):
        """The size's CPU thread count while an experiment runs (the caller's restored)."""
        n = self.size.cpu_threads if self.device.type == "cpu" else None
        saved = torch.get_num_threads()
        try:
            if n and n != saved:
                torch.set_num_threads(n)
            yield
        finally:
            if torch.get_num_threads() != saved:
                torch.set_num_threads(saved)

    def verify(self, proof, **kw):
        """`pol.verify` of a proof this invocation made, on its device and data. Its limits on a
        generated dataset are raised to what the experiment itself generated (the paper size's
        50,000 CIFAR-shaped samples are over the default 1 GiB that guards a verifier against a
        stranger's proof)."""
        from pol.proof.format import Limits
        from pol.verifier import verify
        opts = dict(device=self.cfg.device, data=self.cfg.data_dir,
                    limits=Limits(max_dataset_bytes=TRUSTED_DATASET_BYTES))
        return verify(proof, **{**opts, **kw})

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        """fn() once per invocation; one that raised raises again without running a second time
        (the experiments after a failed one that need the same runs fail at once)."""
        if key in self.failed:
            raise RuntimeError(f"{key} failed earlier in this invocation") from self.failed[key]
        if key not in self.cache:
            try:
                self.cache[key] = fn()
            except Exception as e:
                self.failed[key] = e
                raise
        return self.cache[key]

    def bar(self, total: int, desc: str):
        if not self.cfg.progress:
            return _NoBar()
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="step", leave=False)

    def machine(self) -> str:
        dev = self.device
        if dev.type == "cuda":
            what = torch.cuda.get_device_name(dev)
        else:
            threads = self.size.cpu_threads or torch.get_num_threads()
            what = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"{threads} torch thread(s)")
        return f"{dev.type} ({what}), torch {torch.__version__}, Python {platform.python_version()}"


# ------------------------------------------------------------------------------------ setups

@dataclass
class Setup:
    spec: Any  # TrainingSpec
    train: Any  # ArrayDataset
    test: Any
    label: str  # task and dataset, as the report names them
    synthetic: bool  # a CIFAR-shaped synthetic set stands in for CIFAR

    @property
    def S(self) -> int:
        from pol.tasks import steps_per_epoch
        return steps_per_epoch(len(self.train), self.spec.batch_size, self.spec.drop_last)

    @property
    def T(self) -> int:
        return self.S * self.spec.epochs

    @property
    def paper_column(self) -> str:
        """The paper's column closest to this setup: CIFAR-100 for 100 classes, else CIFAR-10."""
        n = self.spec.model.kwargs.get("num_classes") or self.spec.data.params.get("num_classes")
        return "cifar100" if n == 100 else "cifar10"


def default_task(ws: Workspace) -> str:
    return ws.cfg.task or ws.size.task


def setup(ws: Workspace, task: str | None = None, *, seed: int = 0, epochs: int | None = None,
          k: int | None = None, lr: float | None = None, momentum: float | None = None,
          batch_size: int | None = None, dataset_params: dict | None = None,
          deterministic: bool | None = None, real_cifar: bool = True) -> Setup:
    """A built-in task's spec (`pol.tasks.build_spec`, as `pol train` builds it) with the
    experiment's overrides. With --data (and `real_cifar`), the synthetic CIFAR-shaped tasks
    become the real CIFAR-10/100 ones; the size's dataset parameters apply to synthetic sets."""
    from pol.prover.trainer import default_deterministic
    from pol.tasks import build_spec, get_task
    task = task or default_task(ws)
    if ws.cfg.data_dir and real_cifar and task in REAL_CIFAR:
        task, dataset_params = REAL_CIFAR[task], None
    base, change = VARIANTS.get(task, (task, {}))
    synthetic_set = get_task(base).dataset.startswith("synthetic")
    params = dict(ws.size.dataset_params) if synthetic_set and task == default_task(ws) else {}
    params.update(dataset_params or {})
    if synthetic_set and change.get("model_kwargs", {}).get("num_classes"):
        params.setdefault("num_classes", change["model_kwargs"]["num_classes"])
    det = default_deterministic(deterministic, ws.device.type)
    spec, train, test = build_spec(base, epochs=epochs or ws.epochs, k=k, seed=seed, lr=lr,
                                   batch_size=batch_size, device=ws.device.type,
                                   deterministic=det, data_dir=ws.cfg.data_dir,
                                   dataset_params=params or None)
    if change:
        model = replace(spec.model, arch=change["arch"], kwargs=dict(change["model_kwargs"]))
        spec = replace(spec, model=model, task=task)
    if momentum is not None:
        spec = replace(spec, optimizer=replace(spec.optimizer, momentum=momentum))
    synthetic = spec.data.name.startswith("synthetic")
    label = f"{task} ({spec.model.arch} on {len(train)} {spec.data.name} samples"
    label += ", a CIFAR-shaped synthetic set, not CIFAR)" if synthetic else ")"
    return Setup(spec, train, test, label, synthetic)


# ------------------------------------------------------------------------- the training loop

def flat(model: torch.nn.Module) -> torch.Tensor:
    """The model's parameters as one float64 vector (on their device)."""
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def distance_vector(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The verifier's published distances (ℓ1, ℓ2, ℓ∞, 1 − cos, in `pol.verifier.METRICS` order)
    as one float64 tensor where a and b are, with `pol.verifier.all_distances`' torch ops (the same
    values) and no host synchronization: a GPU's loop reads them when it is done. NaN where a
    vector is not finite (a diverged run)."""
    d = a - b
    ad = d.abs()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    cos = 1.0 - torch.dot(a, b) / (na * nb)
    cos = torch.where((na == 0) | (nb == 0), (na != nb).to(cos.dtype), cos)
    cos = torch.where((a == b).all(), torch.zeros_like(cos), cos)
    out = torch.stack([ad.sum(), torch.linalg.vector_norm(d), ad.max(), cos])
    finite = torch.isfinite(a).all() & torch.isfinite(b).all()
    return torch.where(finite, out, torch.full_like(out, math.nan))


def distances(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """`distance_vector` read: {metric: value}."""
    from pol.verifier import METRICS
    return dict(zip(METRICS, distance_vector(a, b).tolist()))


@dataclass
class RunResult:
    final: torch.Tensor  # flat float64 parameters on the CPU
    accuracy: float
    seconds: float
    steps: int
    proof: Path | None = None
    state: dict | None = None  # the final model + optimizer state (on the CPU)


def _fork_rng(device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def train_run(ws: Workspace, st: Setup, observers: list | tuple = (), *,
              record_to: Path | None = None, max_steps: int | None = None, desc: str = "training",
              keep_state: bool = False) -> RunResult:
    # long: pol's built-in training loop with observers and an optional Recorder, in order
    """Train `st` with pol's step (through a Recorder writing a proof at `record_to`, if given),
    calling every observer's `start(ctx)` before the first step and `step(t, x, y, lrs, ctx,
    last)` after each. The user's RNG state and torch settings are restored afterwards."""
    from pol.prover.recorder import Recorder
    from pol.step import build_context, epoch_order, lrs_at, numerics, update
    spec, dev = st.spec, ws.device
    S, T_spec = st.S, st.T
    T = min(T_spec, max_steps) if max_steps else T_spec
    with _fork_rng(dev), numerics(spec, dev):
        ctx = build_context(spec, dev)
        rec = None
        if record_to is not None:
            rec = Recorder(record_to, model=ctx.model, optimizer=ctx.optimizer, data=st.train,
                           spec=spec, overwrite=True, durable=False,
                           allow_nondeterministic=dev.type == "cuda" and not spec.deterministic)
        for ob in observers:
            ob.start(ctx)
        base = [spec.optimizer.lr] * len(ctx.optimizer.param_groups)
        B, n = spec.batch_size, len(st.train)
        bar = ws.bar(T, desc)
        t0 = time.perf_counter()
        t = 0
        orders: dict[int, np.ndarray] = {}  # this epoch's order, drawn once
        try:
            while t < T:
                if t // S not in orders:
                    orders = {t // S: epoch_order(spec.seed, t // S, n)}
                order = orders[t // S]
                s = t % S
                idx = order[s * B:(s + 1) * B]
                lrs = lrs_at(spec.schedule, base, t, T_spec)
                x, y = torch.from_numpy(st.train.x[idx]), torch.from_numpy(st.train.y[idx])
                if rec is not None:
                    # the Recorder reads this step's lr from the optimizer here: set it first
                    # (update() sets the same values again)
                    for g, lr in zip(ctx.optimizer.param_groups, lrs):
                        g["lr"] = float(lr)
                    rec.record_batch(idx, seed_rng=False)
                loss = update(ctx, x, y, lrs, t)
                if rec is not None:
                    rec.step(loss)
                for ob in observers:
                    ob.step(t, x, y, lrs, ctx, t + 1 == T)
                t += 1
                bar.update(1)
        except BaseException:
            if rec is not None:
                rec.abort()
            raise
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        proof = None
        if rec is not None:
            rec.close()
            proof = Path(record_to)
        acc = eval_accuracy(ctx, st.test)
        state = None
        if keep_state:
            from pol.step import state_tensors
            state = {k: v.detach().to("cpu", copy=True)
                     for k, v in state_tensors(ctx.model, ctx.optimizer).items()}
        return RunResult(flat(ctx.model).cpu(), acc, seconds, T, proof, state)


def eval_accuracy(ctx, test) -> float:
    """`pol.prover.trainer.accuracy` without autograd (NaN without a test set)."""
    from pol.prover.trainer import accuracy
    if test is None or not len(test):
        return math.nan
    with torch.no_grad():
        return accuracy(ctx, test)


def copied_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state_dict with every tensor cloned: `load_state_dict` keeps a tensor that
    already has the parameter's dtype and device as it is, so the two optimizers would share (and
    both update) one momentum buffer."""
    import copy
    sd = optimizer.state_dict()
    return {"state": {i: {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                          for k, v in st.items()} for i, st in sd["state"].items()},
            "param_groups": copy.deepcopy(sd["param_groups"])}


def _round16(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """What fp16 storage does to a state: every float tensor rounded to float16."""
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().to(v.dtype))
        for st in optimizer.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0:
                    v.copy_(v.half().to(v.dtype))


class Shadow:
    """The verifier's replay of every k-step segment, run beside the training: from the
    reference's state W_t (model and optimizer), the same k steps (same batches, lrs, dropout
    seeds), then ε(t) = d(W_{t+k}, W'_{t+k}) for every metric. `noise`: emulated hardware noise
    (relative, per step); `fp16`: the segment starts from the fp16-stored W_t and is compared
    with the fp16-stored W_{t+k} (a proof stored in fp16 whose prover trained on unrounded
    weights)."""

    def __init__(self, spec, device: torch.device, k: int, *, noise: float = 0.0,
                 fp16: bool = False, seed: int = 0) -> None:
        from pol.step import build_context
        with _fork_rng(device):
            self.ctx = build_context(spec, device)
        self.k, self.noise, self.fp16 = k, noise, fp16
        self.gen = torch.Generator(device=device).manual_seed(seed) if noise else None
        # (segment start, ε per metric as a `distance_vector`, read in `errors`)
        self._eps: list[tuple[int, torch.Tensor]] = []
        self._read: list[tuple[int, dict[str, float]]] = []
        self.start_t = 0

    @property
    def errors(self) -> list[tuple[int, dict[str, float]]]:
        """(segment start, ε per metric) of every segment so far (one host read for all)."""
        if self._eps:
            from pol.verifier import METRICS
            values = torch.stack([e for _, e in self._eps]).tolist()
            self._read += [(t, dict(zip(METRICS, v))) for (t, _), v in zip(self._eps, values)]
            self._eps = []
        return self._read

    def _sync(self, ref, t: int) -> None:
        self.ctx.model.load_state_dict(ref.model.state_dict())
        self.ctx.optimizer.load_state_dict(copied_optimizer_state(ref.optimizer))
        if self.fp16:
            _round16(self.ctx.model, self.ctx.optimizer)
        self.start_t = t

    def start(self, ref) -> None:
        self._sync(ref, 0)

    def step(self, t: int, x, y, lrs, ref, last: bool) -> None:
        from pol.step import update
        update(self.ctx, x, y, lrs, t)
        if self.gen is not None:
            with torch.no_grad():
                for p in self.ctx.model.parameters():
                    p.add_(p * torch.randn(p.shape, generator=self.gen, device=p.device,
                                           dtype=p.dtype) * self.noise)
        if (t + 1) % self.k == 0 or last:
            a, b = flat(ref.model), flat(self.ctx.model)
            if self.fp16:
                a, b = a.float().half().double(), b.float().half().double()
            self._eps.append((self.start_t, distance_vector(a, b)))
            if not last:
                self._sync(ref, t + 1)

    def worst(self) -> dict[str, float]:
        """max_t ε(t) per metric (NaN if any segment is not finite)."""
        from pol.verifier import METRICS
        out = {}
        for m in METRICS:
            vals = [e[m] for _, e in self.errors]
            out[m] = math.nan if not vals or any(math.isnan(v) for v in vals) else max(vals)
        return out


# ----------------------------------------------------------------------------------- outputs

def mean_std(values) -> tuple[float, float]:
    v = [float(x) for x in values]
    if not v or any(math.isnan(x) for x in v):
        return math.nan, math.nan
    return float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def pm(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{fmt(mean, digits)} (± {fmt(std, 2)})"


def figure(w: float = 7.0, h: float = 4.0, rows: int = 1, cols: int = 1):
    """A matplotlib Figure and its axes (the object API: no pyplot, no global backend)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def emit(ws: Workspace, name: str, columns: list[str], rows: list[dict], fig, md: str,
         summary: dict | None = None) -> Output:
    """Write NAME.csv (exactly `columns`), NAME.png and NAME.md (the fragment; `{img}` in it
    becomes the PNG's path relative to wherever the fragment is placed)."""
    base = ws.out
    csv_path, png_path, md_path = base / f"{name}.csv", base / f"{name}.png", base / f"{name}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({c: _csv_value(r.get(c)) for c in columns})
    fig.savefig(png_path, dpi=110)
    md_path.write_text(md.replace("{img}", png_path.name))
    out = Output(name, csv_path, png_path, md_path, rows, dict(summary or {}))
    out.summary.setdefault("fragment", md)
    ws.outputs[name] = out
    return out


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return "" if v is None else v
