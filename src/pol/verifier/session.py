"""What one verification works on: the opened proof, the verifier's data, the step context the
proof describes, and a checkpoint store that checks every checkpoint it hands out.

The session is built once: the proof (digests), then the data (its commitment is a check of
`pol.verifier.checks.inputs`) on a thread (`Background`) beside the model and optimizer
(`pol.step.build_context`, the same constructor the prover used). Checkpoints are read through
`CheckpointStore.load`: digest, names, shapes, dtypes and finite weights checked, the last two
kept in memory; `CheckpointStore.read_pass` also digests each one as it is read, on the reader
thread where the pass reads ahead.

The data's per-sample leaves and their Merkle root (what the dataset commitment is checked against)
are cached on disk under the data's content digest (`dataset_leaves`), so a second verification of
the same data hashes its bytes once instead of hashing every sample and building the tree.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Callable

import numpy as np
import torch

from pol.datasets import load_training_set as load_verifier_data  # noqa: F401 - re-export
from pol.errors import ConfigError, ProofFormatError
from pol.proof import format as fmt
from pol.step import MODEL_PREFIX, expected_state_shapes, storage_dtypes
from pol.step.state import first_nonfinite


COMMITMENT_CACHE_VERSION = "pol.dataset-commitment.v1"
# below this many samples the leaves and root cost less to compute (about 10 µs a sample) than a
# cache file is worth: nothing is written
COMMITMENT_CACHE_MIN_SAMPLES = 4096


def dataset_leaves(data) -> tuple[np.ndarray, bytes | None, str]:
    """(per-sample leaves [N, 32], their Merkle root or None when not cached, content digest) of
    the verifier's data.

    In-memory arrays are cached on disk (`pol.proof.hashing.leaf_cache_dir()`: $POL_CACHE_DIR,
    else $XDG_CACHE_HOME/pol; POL_CACHE_DIR="" turns it off) in a file named by the data's content
    digest, which is computed from the bytes every time: an entry is only used for the very bytes
    it was made from (a cache file that does not fit is ignored and rewritten); sets smaller than
    COMMITMENT_CACHE_MIN_SAMPLES are not cached. Data read on demand has its own cache
    (`source_leaves`); its content digest is "" here."""
    from pol.proof.hashing import content_digest, merkle_root, sample_leaves
    if getattr(data.x, "pol_source", None) is not None:
        return sample_leaves(data.x, data.y), None, ""
    digest = content_digest(data.x, data.y)
    n = len(data.y)
    path = _commitment_file(digest) if n >= COMMITMENT_CACHE_MIN_SAMPLES else None
    hit = _read_commitment(path, n)
    if hit is not None:
        return hit[0], hit[1], digest
    leaves = sample_leaves(data.x, data.y)
    root = merkle_root(leaves)
    _write_commitment(path, root, leaves)
    return leaves, root, digest


def _commitment_file(digest: str) -> str | None:
    from pol.proof.hashing import LEAF_CACHE_VERSION, leaf_cache_dir
    d = leaf_cache_dir()
    if d is None:
        return None
    name = hashlib.sha256(f"{COMMITMENT_CACHE_VERSION}|{LEAF_CACHE_VERSION}|array|{digest}"
                          .encode()).hexdigest()
    return os.path.join(d, name + ".commitment")


def _read_commitment(path: str | None, n: int) -> tuple[np.ndarray, bytes] | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(32 * (n + 1) + 1)
    except OSError:
        return None
    if len(raw) != 32 * (n + 1):
        return None  # another size: recomputed (and rewritten)
    leaves = np.frombuffer(raw, dtype=np.uint8, offset=32).reshape(n, 32)
    leaves.setflags(write=False)
    return leaves, raw[:32]


def _write_commitment(path: str | None, root: bytes, leaves: np.ndarray) -> None:
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(root)
            f.write(np.ascontiguousarray(leaves, dtype=np.uint8).tobytes())
        os.replace(tmp, path)
    except OSError:
        pass  # a cache: never a reason to fail


class Background:
    """`fn(*args)` run at once on a thread of its own (a daemon: an abandoned one does not hold
    up the process's exit). `result()` waits for it and returns its value or raises its error;
    `wait()` only waits."""

    def __init__(self, fn: Callable, *args: Any, name: str) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable, args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - raised by result(), on the caller's thread
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def param_names(model: torch.nn.Module) -> list[str]:
    """The checkpoint names of the model's parameters (buffers excluded), in parameter order."""
    return [MODEL_PREFIX + n for n, _ in model.named_parameters()]


def check_model_size(spec, m: fmt.Manifest, trusted: tuple[str, ...]) -> None:
    """Build the spec's model on the meta device (no memory) and refuse one whose parameters need
    far more bytes than the proof's first checkpoint holds, before allocating it for real."""
    from pol.step import build_model
    try:
        with torch.device("meta"):
            model = build_model(spec.model, trusted)
    except (RuntimeError, MemoryError, TypeError, ValueError) as e:
        raise ProofFormatError(f"the proof's model cannot be built: {e}") from None
    need = sum(p.numel() for p in model.parameters()) * (2 if spec.precision == "fp16" else 4)
    have = m.files[fmt.checkpoint_name(0)][1]
    if need > have:
        raise ProofFormatError(f"the spec describes a model of {need} parameter bytes, but the "
                               f"first checkpoint holds only {have} bytes")


def build_step_context(spec, manifest: fmt.Manifest, device: torch.device,
                       trusted: tuple[str, ...]):
    """The step context the proof describes (unusable input if it cannot be built)."""
    from pol.step import build_context
    check_model_size(spec, manifest, trusted)
    try:
        return build_context(spec, device, trusted)
    except ConfigError as e:
        raise ProofFormatError(f"the proof's spec cannot be rebuilt: {e}") from None
    except (RuntimeError, MemoryError, TypeError, ValueError) as e:
        raise ProofFormatError(f"the proof's model cannot be built: {e}") from None


# checkpoints a store keeps beyond the last two (`CheckpointStore._keep`): 64 MiB, ~30 of
# ResNet-20's with their momentum, none of a 114M GPT's (1.4 GB each)
KEEP_BYTES = 64 << 20


class CheckpointStore:
    """Checkpoints of one proof, each checked against the model before use: names, shapes, storage
    dtypes, finite weights (the digest is checked by the reader). The last two stay in memory
    (never altered: `load_state` copies them), so a replay of consecutive segments, or of the last
    one after the checkpoint pass, does not read and check the same file again. `early`: {step:
    a read of that checkpoint started before the store (its `result()` is what
    `proof.load_checkpoint` returns, or raises)}, taken instead of reading it again."""

    def __init__(self, proof, ctx, early: dict[int, Any] | None = None) -> None:
        self.proof = proof
        spec = proof.manifest.spec
        self.precision = spec.precision
        self.names = param_names(ctx.model)
        self.model_shapes, self.opt_shapes = expected_state_shapes(ctx.model, ctx.optimizer,
                                                                   spec.optimizer.name)
        self.dtypes = storage_dtypes(ctx.model, ctx.optimizer, spec.optimizer.name,
                                     spec.precision)
        self._recent: dict[int, dict[str, torch.Tensor]] = {}  # oldest first (`_keep`)
        self._sizes: dict[int, int] = {}  # bytes of each kept checkpoint
        self._pending: dict[int, Any] = {}  # step -> Future of a read started by `prefetch`
        self._digesting: dict[int, Any] = {}  # step -> Future of a read_pass read and digest
        # step -> a read of the checkpoint's bytes started before the store (`early`)
        self._early: dict[int, Any] = dict(early or {})
        self._reader = None

    def load(self, t: int) -> dict[str, torch.Tensor]:
        hit = self._recent.get(t)
        if hit is not None:
            return hit
        pending = self._pending.pop(t, None)
        tensors = pending.result() if pending is not None else self._load_checked(t)
        self._keep(t, tensors)
        return tensors

    def prefetch(self, steps) -> None:
        """Start reading (and checking) these checkpoints on a background thread, each once:
        `load` takes them in turn, and raises a read's error then. File reads, SHA-256 and the
        checks run outside the GIL, so a replay on a GPU hides them."""
        for t in steps:
            if t not in self._recent and t not in self._pending:
                self._pending[t] = self._submit(self._load_checked, t)

    def stream(self, steps, ahead: bool = False):
        """(t, checkpoint) for every step in `steps`, in order, each read and checked once (as
        `load`). `ahead`: the next one is read on a background thread while the caller works on
        the current one (`read_pass` without a digest)."""
        for t, tensors, _ in self.read_pass(steps, _no_digest, ahead):
            yield t, tensors

    def read_pass(self, steps, digest: Callable[[int, dict[str, torch.Tensor]], Any],
                  ahead: bool = False):
        """(t, checkpoint, digest(t, checkpoint)) for every step in `steps`, in order: each
        checkpoint read and checked once (as `load`) and digested as it is read. `ahead`: the
        reads and the digests run on the background reader thread, the next checkpoint's while
        the caller works on the current one; one at a time and in order either way, so `digest`
        may carry state from one checkpoint to the next. A read's or a digest's error is raised
        when its checkpoint's turn comes."""
        steps = list(steps)
        for j, t in enumerate(steps):
            if ahead:
                for u in steps[j:j + 2]:
                    if u not in self._digesting:
                        self._digesting[u] = self._submit(self._read_digested, u, digest)
            fut = self._digesting.pop(t, None)
            tensors, info = fut.result() if fut is not None else self._read_digested(t, digest)
            self._keep(t, tensors)
            yield t, tensors, info

    def close(self) -> None:
        """Stop the background reader (reads not yet taken are dropped)."""
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)
            self._reader = None
        self._pending.clear()
        self._digesting.clear()

    def _submit(self, fn, *args):
        if self._reader is None:
            from concurrent.futures import ThreadPoolExecutor
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="pol-checkpoint-read")
        return self._reader.submit(fn, *args)

    def _read_digested(self, t: int, digest) -> tuple[dict[str, torch.Tensor], Any]:
        tensors = self._recent.get(t)
        if tensors is None:
            tensors = self._load_checked(t)
        return tensors, digest(t, tensors)

    def _keep(self, t: int, tensors: dict[str, torch.Tensor]) -> None:
        """The checkpoints read last, for `load` (read-only: a replay copies out of them): the
        last two always, more while they fit in `KEEP_BYTES` (a small model's whole proof, so
        that a random segment chosen after the pass does not read its checkpoints again)."""
        self._recent.pop(t, None)
        self._recent[t] = tensors
        self._sizes[t] = sum(v.numel() * v.element_size() for v in tensors.values())
        while len(self._recent) > 2 and sum(self._sizes[u] for u in self._recent) > KEEP_BYTES:
            self._sizes.pop(u := next(iter(self._recent)), None)
            self._recent.pop(u)

    def _load_checked(self, t: int) -> dict[str, torch.Tensor]:
        early = self._early.pop(t, None)
        tensors = early.result() if early is not None else self.proof.load_checkpoint(t)
        for k, v in tensors.items():
            want = self.model_shapes.get(k, self.opt_shapes.get(k))
            if want is None or tuple(v.shape) != want:
                raise ProofFormatError(f"checkpoint at step {t}: entry {k} does not fit the model")
            if v.dtype != self.dtypes.get(k, v.dtype):
                raise ProofFormatError(f"checkpoint at step {t}: entry {k} is {v.dtype}, a "
                                       f"{self.precision} proof stores {self.dtypes[k]}")
        missing = [k for k in self.model_shapes if k not in tensors]
        if missing:
            raise ProofFormatError(f"checkpoint at step {t}: missing {missing[:3]}")
        bad = first_nonfinite(tensors, self.names)
        if bad is not None:
            raise ProofFormatError(f"checkpoint at step {t}: {bad} has NaN/Inf values")
        return tensors


def _no_digest(t: int, tensors: dict[str, torch.Tensor]) -> None:
    return None


def model_source_matches(spec) -> tuple[bool, str, str] | None:
    """(matches, proof digest, installed digest) for a user factory whose source the proof pins."""
    if not spec.model.source_sha256:
        return None
    from pol.registry import module_source_digest
    installed = module_source_digest(spec.model.arch.split(":")[0])
    return installed == spec.model.source_sha256, spec.model.source_sha256, installed

