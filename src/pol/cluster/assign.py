"""What the coordinator hands out and what comes back, as data: the training spec of a job, each
worker's assignment (its shard and seed, derived from the coordinator's seed: the worker chooses
neither), the round model's identity, and the byte messages the ranks exchange.

A message is `MAGIC`, a 4-byte big-endian header length, a JSON header naming its blobs and their
sizes, then the blobs. It is read strictly and bounded (the sender is not trusted): weights travel
as safetensors (no pickle), a proof as a `pol.crypto.archive` stream.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from pol.cluster.config import ClusterConfig
from pol.errors import ConfigError
from pol.spec import DataSpec, TrainingSpec, current_cpu_capability, current_gpu_name

MAGIC = b"POLCLM1\n"
MAX_HEADER = 1 << 20
# spec fields the worker states about its own machine (the rest is the assignment, compared)
HARDWARE_FIELDS = ("device", "deterministic", "torch_version", "cpu_capability", "tf32",
                   "gpu_name")


def task_data(task: str, params: dict | None = None):
    """(train, test) of a built-in task's dataset: the task's parameters with `params` over them
    (a job's `dataset_params`, e.g. {"n_train": 16000})."""
    return _task_data(task, json.dumps(params or {}, sort_keys=True))


@lru_cache(maxsize=4)
def _task_data(task: str, params: str):
    from pol.datasets import load_dataset
    from pol.tasks import get_task
    t = get_task(task)
    if t.needs_data_dir:
        raise ConfigError(f"task {task} reads its data from a local directory; the distributed "
                          "job takes self-contained tasks only")
    return load_dataset(t.dataset, {**t.dataset_params, **json.loads(params)})


def base_spec(config: ClusterConfig) -> TrainingSpec:
    """The job's spec before a shard is assigned: the task's model, optimizer, loss and
    preparation, one epoch of `local_steps` batches, a checkpoint every `segment` steps."""
    return _base_spec(config.to_json())


@lru_cache(maxsize=4)
def _base_spec(config_json: str) -> TrainingSpec:  # once per process: it loads the dataset
    from pol.tasks import build_spec
    config = ClusterConfig.from_json(config_json)
    spec, train, _ = build_spec(config.task, epochs=1, k=config.segment, seed=config.seed,
                                lr=config.lr, batch_size=config.batch_size, device=config.device,
                                deterministic=config.device == "cuda",
                                dataset_params=config.dataset_params, exact=config.exact)
    need = config.local_steps * config.batch_size
    if need > len(train):
        raise ConfigError(f"{config.local_steps} local steps of batch {config.batch_size} need "
                          f"{need} distinct samples per shard; {config.task} has {len(train)}"
                          " (a synthetic set takes more: --dataset-arg n_train=N)")
    model = replace(spec.model, kwargs={**spec.model.kwargs, **config.model_kwargs})
    if config.exact:  # refused up front (dropout, unsupported layers), not at the first round
        from pol.step import build_model
        from pol.step.exact import check_model
        check_model(build_model(model))
    return replace(spec, model=model, cpu_threads=config.threads, schedule=replace(
        spec.schedule, total_steps=config.local_steps) if spec.schedule.name == "cosine"
        else spec.schedule)


def shard_indices(config: ClusterConfig, round_: int, worker: int, n_train: int) -> np.ndarray:
    """The worker's shard in this round: distinct training samples drawn from the coordinator's
    seed (pol's seed derivation), so that neither the worker nor anyone else picks them."""
    from pol.step import derive_seed
    seed = derive_seed(config.seed, f"cluster.shard.worker{worker}", round_)
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(n_train, config.local_steps * config.batch_size, replace=False))


def worker_seed(config: ClusterConfig, round_: int, worker: int) -> int:
    """The spec seed of the worker's round: its batch order and dropout masks."""
    from pol.step import derive_seed
    return derive_seed(config.seed, f"cluster.order.worker{worker}", round_)


def shard(train, indices: np.ndarray):
    from pol.datasets import ArrayDataset
    return ArrayDataset(np.ascontiguousarray(train.x[indices]), train.y[indices].copy())


def assigned_spec(config: ClusterConfig, base: TrainingSpec, data, round_: int,
                  worker: int) -> TrainingSpec:
    from pol.proof.hashing import merkle_root, sample_leaves
    root = merkle_root(sample_leaves(data.x, data.y)).hex()
    d = base.data
    return replace(base, seed=worker_seed(config, round_, worker),
                   data=DataSpec(name="user", params={}, size=len(data), root=root,
                                 prepare=d.prepare, augment=d.augment, order="seed"))


def with_own_hardware(spec: TrainingSpec) -> TrainingSpec:
    """The spec as a worker records it: the assignment, with its own machine's claims."""
    return replace(spec, torch_version=torch.__version__,
                   cpu_capability=current_cpu_capability() if spec.device == "cpu" else "",
                   gpu_name=current_gpu_name(spec.device))


def spec_mismatch(assigned: TrainingSpec, claimed: TrainingSpec) -> str:
    """"" when the claimed spec is the assignment (hardware claims aside), else what differs."""
    a = {k: v for k, v in assigned.to_dict().items() if k not in HARDWARE_FIELDS}
    c = {k: v for k, v in claimed.to_dict().items() if k not in HARDWARE_FIELDS}
    diff = sorted(k for k in set(a) | set(c) if a.get(k) != c.get(k))
    if not diff:
        return ""
    if "seed" in diff:
        return "another assignment's proof (seed and shard differ: another round's or worker's)"
    if "data" in diff:
        return "trained on other data than assigned (dataset commitment differs)"
    return f"the proof's spec is not the assignment ({', '.join(diff)} differ)"


def round_model_id(run_id: str, round_: int, model_sha: str) -> str:
    """The id under which the weights that round `round_` starts from are registered (a warm
    start's parent): bound to the run, the round and the weights."""
    return hashlib.sha256(f"pol.cluster.round-model|{run_id}|{round_}|{model_sha}".encode()
                          ).hexdigest()


# ------------------------------------------------------------------------------ weights

def weights_bytes(weights: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save
    return save({k: v.detach().cpu().contiguous() for k, v in sorted(weights.items())})


def weights_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load
    try:
        return load(data)
    except Exception as e:  # noqa: BLE001 - any parse error of untrusted bytes
        raise ValueError(f"unreadable weights ({type(e).__name__})") from None


def model_sha(weights: dict[str, torch.Tensor]) -> str:
    from pol.protocol.chain import model_digest
    return model_digest(weights)


# ------------------------------------------------------------------------------ messages

@dataclass
class Message:
    header: dict[str, Any]
    blobs: dict[str, bytes]


def pack_message(header: dict[str, Any], blobs: dict[str, bytes] | None = None) -> bytes:
    blobs = blobs or {}
    head = dict(header, blobs=[[k, len(v)] for k, v in blobs.items()])
    raw = json.dumps(head, sort_keys=True).encode()
    return b"".join([MAGIC, struct.pack(">I", len(raw)), raw, *blobs.values()])


def unpack_message(data: bytes, max_bytes: int) -> Message:
    """A message from an untrusted sender: ValueError for anything malformed or too large."""
    if len(data) > max_bytes:
        raise ValueError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if data[:len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + 4:
        raise ValueError("not a pol cluster message")
    (n,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
    pos = len(MAGIC) + 4
    if n > MAX_HEADER or pos + n > len(data):
        raise ValueError("message header too large or truncated")
    try:
        head = json.loads(data[pos:pos + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("message header is not JSON") from None
    pos += n
    blobs: dict[str, bytes] = {}
    spec = head.pop("blobs", None) if isinstance(head, dict) else None
    if not isinstance(spec, list):
        raise ValueError("message header lists no blobs")
    for item in spec:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], int) or item[1] < 0 or item[0] in blobs):
            raise ValueError("malformed blob entry in the message header")
        blobs[item[0]] = data[pos:pos + item[1]]
        pos += item[1]
    if pos != len(data):
        raise ValueError("message length does not match its header")
    return Message(head, blobs)
