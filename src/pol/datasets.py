"""Datasets as raw numpy arrays, deterministic batch preparation, recorded-RNG augmentation.

Why this split into three stages:

* `load_dataset` returns the *raw* arrays (uint8 images, float32 features). These bytes are what
  the proof commits to (per-sample hashes under a Merkle root), so loading must be a pure function
  of (name, params, files): no shuffling with a global RNG, no float transforms that could differ
  between machines.
* `PREPARE` (in `pol.step.data`) turns a raw batch into model input with no randomness at all, so
  the verifier can recompute it from the committed bytes.
* `AUGMENT` (in `pol.step.data`) draws every random choice from an explicit `torch.Generator` whose
  seed is recorded, so a verifier replaying a step gets bit-identical augmented inputs.

Nothing here downloads anything, and nothing uses pickle: CIFAR is read from the binary
distribution, user data from `.npz` with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pol.errors import ConfigError, ProofFormatError
from pol.util import atomic_write, cache_dir, in_ranges, sha256_file

__all__ = [
    "ArrayDataset",
    "DatasetNotFound",
    "LazyDataset",
    "TokenFile",
    "TorchDatasetSource",
    "HFDatasetSource",
    "DATASETS",
    "DEFAULT_PREPARE",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "load_dataset",
    "check_generation_budget",
    "generation_bytes",
    "train_test_split",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# Largest synthetic dataset we agree to generate: params come from a possibly hostile proof.
_MAX_SYNTHETIC = 100_000


class DatasetNotFound(FileNotFoundError):
    """Dataset files are not where they were expected. pol never downloads; the message says
    which files to fetch and where to put them."""


@dataclass(frozen=True)
class ArrayDataset:
    """Raw samples `x` (first axis = sample) and integer labels `y` (int64, same length).

    Arrays are C-contiguous so that per-sample hashing sees one canonical byte layout.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.x, np.ndarray) or not isinstance(self.y, np.ndarray):
            raise TypeError("ArrayDataset needs numpy arrays for x and y")
        if self.x.ndim < 1:
            raise ValueError("x must have a leading sample axis")
        if self.x.dtype.kind not in "biuf":
            raise ValueError(f"x must be a numeric array, got dtype {self.x.dtype}")
        if self.y.ndim < 1:  # 1-D labels, or per-sample target rows (next tokens of an LM)
            raise ValueError(f"y must have a leading sample axis, got shape {self.y.shape}")
        if self.y.dtype != np.int64:
            raise ValueError(f"y must be int64, got {self.y.dtype}")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)} labels")
        if not self.x.flags.c_contiguous:
            object.__setattr__(self, "x", np.ascontiguousarray(self.x))
        if not self.y.flags.c_contiguous:
            object.__setattr__(self, "y", np.ascontiguousarray(self.y))

    def __len__(self) -> int:
        return len(self.y)


# --------------------------------------------------------------------------------------------------
# Parameter handling (params come from JSON inside a proof: validate strictly)
# --------------------------------------------------------------------------------------------------


def _check_params(name: str, params: dict[str, Any], allowed: set[str]) -> None:
    extra = set(params) - allowed - {"limit"}
    if extra:
        known = ", ".join(sorted(allowed | {"limit"}))
        raise ValueError(f"dataset {name!r}: unknown parameter(s) {', '.join(sorted(extra))}; "
                         f"accepted: {known}")


def _int_param(params: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"parameter {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def train_test_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed 80/20 split used by every built-in tabular dataset: a permutation from
    `np.random.default_rng(0)`, first floor(0.8 n) indices train, the rest test."""
    perm = np.random.default_rng(0).permutation(n)
    n_train = (n * 4) // 5
    return perm[:n_train], perm[n_train:]


def _split(x: np.ndarray, y: np.ndarray) -> tuple[ArrayDataset, ArrayDataset]:
    tr, te = train_test_split(len(y))
    return (ArrayDataset(np.ascontiguousarray(x[tr]), np.ascontiguousarray(y[tr])),
            ArrayDataset(np.ascontiguousarray(x[te]), np.ascontiguousarray(y[te])))


# --------------------------------------------------------------------------------------------------
# scikit-learn toy datasets (bundled with sklearn, no download)
# --------------------------------------------------------------------------------------------------


def _load_digits(params: dict[str, Any], data_dir: str | None) -> tuple[ArrayDataset, ArrayDataset]:
    """8x8 handwritten digits, float32 [N, 64] with the original 0..16 values."""
    _check_params("digits", params, set())
    x, y = _sklearn_xy("load_digits")
    return _split(x.astype(np.float32), y.astype(np.int64))


def _standardized(loader: Callable[..., Any], name: str):
    def load(params: dict[str, Any], data_dir: str | None) -> tuple[ArrayDataset, ArrayDataset]:
        _check_params(name, params, set())
        x, y = loader()
        x = np.asarray(x, dtype=np.float64)
        tr, _ = train_test_split(len(y))
        mean = x[tr].mean(axis=0)
        std = x[tr].std(axis=0)
        std[std == 0] = 1.0
        return _split(((x - mean) / std).astype(np.float32), np.asarray(y, dtype=np.int64))

    load.__doc__ = f"sklearn {name}, float32, standardized with train-split mean/std."
    return load


def _sk(fn_name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    return lambda: _sklearn_xy(fn_name)


# the data file each loader reads, inside sklearn/datasets/data/
_SKLEARN_FILES = {"load_digits": "digits.csv.gz", "load_iris": "iris.csv",
                  "load_wine": "wine_data.csv", "load_breast_cancer": "breast_cancer.csv"}
_SKLEARN_CACHE_VERSION = "1"


def _sklearn_xy(fn_name: str) -> tuple[np.ndarray, np.ndarray]:
    """`sklearn.datasets.<fn_name>(return_X_y=True)`, from pol's disk cache
    (`pol.util.cache_dir("datasets")`) where it holds the arrays of the same bundled data file
    (keyed by its SHA-256): importing scikit-learn takes 1.7 s (it imports pandas, which imports
    torch's compiler stack), a `pol verify` of a digits task's proof more than half its fixed
    cost. The cache is as trusted as the leaf cache beside it; the data is checked against the
    proof's dataset commitment either way."""
    src = _sklearn_data_file(fn_name)
    d = cache_dir("datasets")
    path = None
    if src is not None and d is not None:
        key = f"{_SKLEARN_CACHE_VERSION}|{fn_name}|{sha256_file(src)[0]}"
        path = os.path.join(d, hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["x"], z["y"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass  # absent or unreadable: load it and write it anew
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, fn_name)(return_X_y=True)
    if path is not None:
        _write_npz_cache(path, x, y)
    return x, y


def _sklearn_data_file(fn_name: str) -> str | None:
    """The bundled data file of a scikit-learn loader, found without importing scikit-learn."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        f = os.path.join(root, "datasets", "data", _SKLEARN_FILES.get(fn_name, ""))
        if os.path.isfile(f):
            return f
    return None


def _write_npz_cache(path: str, x: np.ndarray, y: np.ndarray) -> None:
    """Best effort: a cache that cannot be written is only slower next time."""
    buf = io.BytesIO()
    np.savez(buf, x=np.asarray(x), y=np.asarray(y))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, buf.getvalue(), durable=False)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# synthetic-cifar
# --------------------------------------------------------------------------------------------------


def _periodic_patterns(rng: np.random.Generator, m: int, k: int = 6, max_freq: int = 3,
                       size: int = 32) -> np.ndarray:
    """m smooth, 32-periodic colour patterns [m, size, size, 3], quantized to int16.

    Each is a sum of k plane waves with integer frequencies <= max_freq, so a circular shift is a
    plain index roll. Portability of the bytes (they are hashed into the proof and regenerated by
    the verifier, maybe on another machine): every random draw in this generator is an exact
    integer or uniform draw (no normal draws, whose ziggurat calls libm exp/log), and cos() is the
    only transcendental; it runs in float64 and is quantized right away, so a last-ulp libm
    difference has a ~1e-13 chance per value of changing anything. The remaining steps are integer
    arithmetic or single IEEE float32 operations, which are exact and portable.
    """
    fx = rng.integers(-max_freq, max_freq + 1, size=(m, k))
    fy = rng.integers(0, max_freq + 1, size=(m, k))
    fy[(fx == 0) & (fy == 0)] = 1
    phase = rng.uniform(0.0, 2 * np.pi, size=(m, k))
    amp = rng.uniform(-1.0, 1.0, size=(m, k, 3)) * math.sqrt(3.0 / k)  # unit variance per wave
    coords = np.arange(size, dtype=np.float64) * (2 * np.pi / size)
    acc = np.zeros((m, size, size, 3), dtype=np.float64)
    for j in range(k):  # fixed summation order (no einsum/BLAS whose order may vary)
        arg = (fy[:, j, None, None] * coords[None, :, None]
               + fx[:, j, None, None] * coords[None, None, :] + phase[:, j, None, None])
        acc += np.cos(arg)[..., None] * amp[:, j, None, None, :]
    return np.rint(50.0 * acc).astype(np.int16)


def _load_synthetic_cifar(params: dict[str, Any],
                          data_dir: str | None) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-shaped (uint8 [N, 32, 32, 3]) data that needs no download.

    Each class has a smooth random prototype; a sample is its prototype circularly shifted by up
    to 5 pixels, plus a random distractor pattern (from a shared bank, shifted anywhere), a random
    brightness/colour offset and pixel noise. A linear model on raw pixels gets well above chance
    but a small CNN does clearly better after a few epochs, which is what the demos and benchmarks
    need: training that visibly learns, in seconds.
    """
    _check_params("synthetic-cifar", params, {"seed", "n_train", "n_test", "num_classes"})
    seed = _int_param(params, "seed", 0, 0, 2**63 - 1)
    n_train = _int_param(params, "n_train", 2000, 1, _MAX_SYNTHETIC)
    n_test = _int_param(params, "n_test", 500, 0, _MAX_SYNTHETIC)
    num_classes = _int_param(params, "num_classes", 10, 2, 1000)
    n = n_train + n_test
    size, shift, bank_size = 32, 5, 64

    rng = np.random.default_rng(seed)
    protos = _periodic_patterns(rng, num_classes)
    bank = _periodic_patterns(rng, bank_size)
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)  # balanced classes
    d = rng.integers(-shift, shift + 1, size=(n, 2))
    which = rng.integers(0, bank_size, size=n)
    e = rng.integers(0, size, size=(n, 2))
    bright = rng.uniform(0.7, 1.3, size=n).astype(np.float32)
    offset = rng.uniform(-25.0, 25.0, size=(n, 3)).astype(np.float32)
    # Pixel noise: sum of 4 uniform integers in [0, 42], centred (std ~25, near-Gaussian shape).
    noise = np.full((n, size, size, 3), -84, dtype=np.int16)
    for _ in range(4):
        noise += rng.integers(0, 43, size=(n, size, size, 3), dtype=np.uint8)

    r = np.arange(size)
    rows = (r[None, :] + d[:, 0:1]) % size
    cols = (r[None, :] + d[:, 1:2]) % size
    # int16 arithmetic: every term stays within a few hundred, far from overflow.
    img = protos[y[:, None, None], rows[:, :, None], cols[:, None, :]]
    rows = (r[None, :] + e[:, 0:1]) % size
    cols = (r[None, :] + e[:, 1:2]) % size
    img += bank[which[:, None, None], rows[:, :, None], cols[:, None, :]]
    img += 128
    out = img.astype(np.float32)
    out *= bright[:, None, None, None]
    out += offset[:, None, None, :]
    out += noise
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    x = out.astype(np.uint8)
    return (ArrayDataset(np.ascontiguousarray(x[:n_train]), y[:n_train].copy()),
            ArrayDataset(np.ascontiguousarray(x[n_train:]), y[n_train:].copy()))


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (binary version)
# --------------------------------------------------------------------------------------------------

_CIFAR_LAYOUT = {
    # name: (folder inside the tarball, train files, test files, label bytes, label index, classes)
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                ["test_batch.bin"], 1, 0, 10),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1, 100),
}
_PIXELS = 3 * 32 * 32


def _cifar_dir(name: str, data_dir: str | None) -> Path:
    folder, train_files, test_files, *_ = _CIFAR_LAYOUT[name]
    files = train_files + test_files
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    if data_dir is None:
        raise DatasetNotFound(
            f"{pretty} needs data_dir: a folder holding {', '.join(files)} (or its parent holding "
            f"{folder}/). Download the {pretty} binary version from {CIFAR_URL} and unpack it "
            f"into that folder; pol never downloads."
        )
    base = Path(data_dir)
    candidates = [base, base / folder]
    for cand in candidates:
        if all((cand / f).is_file() for f in files):
            return cand
    # Report against whichever candidate has more of the files (usually the intended one).
    best = max(candidates, key=lambda c: sum((c / f).is_file() for f in files))
    missing = [f for f in files if not (best / f).is_file()]
    raise DatasetNotFound(
        f"{pretty} binary files not found: expected {', '.join(files)} in {base} or in "
        f"{base / folder} (missing in {best}: {', '.join(missing)}). Download the {pretty} binary "
        f"version from {CIFAR_URL} and unpack it into {base}; pol never downloads."
    )


def _read_cifar_file(path: Path, label_bytes: int, label_index: int,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(records [N, label_bytes + 3072] uint8 as stored, labels int64) of one binary file."""
    record = label_bytes + _PIXELS
    nbytes = os.path.getsize(path)
    if nbytes == 0 or nbytes % record:
        raise ValueError(
            f"{path}: size {nbytes} bytes is not a positive multiple of the {record}-byte record "
            f"size; the file is truncated or not the binary version of the dataset"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    labels = raw[:, label_index].astype(np.int64)
    if labels.max() >= num_classes:
        raise ValueError(f"{path}: label {int(labels.max())} out of range for {num_classes} "
                         f"classes; wrong file?")
    return raw, labels


_CIFAR_COPY_MIN = 4096  # images per thread of the transposing copy, at least


def _cifar_images(raws: list[np.ndarray], label_bytes: int) -> np.ndarray:
    """The records' images as one uint8 [N, 32, 32, 3] array: records store CHW planes (R, G, B),
    we return HWC like the other image datasets. The transposing copy runs on threads (numpy
    copies outside the GIL): single-threaded it took 0.5 s of a 50,000-image set's 0.6 s load."""
    n = sum(len(r) for r in raws)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    spans, at = [], 0
    for r in raws:
        spans.append((at, r))
        at += len(r)

    def copy(a: int, b: int) -> None:
        for start, r in spans:  # the part of [a, b) in this file's records
            lo, hi = max(a, start), min(b, start + len(r))
            if lo < hi:
                out[lo:hi] = (r[lo - start:hi - start, label_bytes:]
                              .reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

    in_ranges(n, copy, min_items=_CIFAR_COPY_MIN)
    return out


def _cifar_loader(name: str):
    def load(params: dict[str, Any], data_dir: str | None) -> tuple[ArrayDataset, ArrayDataset]:
        _check_params(name, params, set())
        _, train_files, test_files, lb, li, nc = _CIFAR_LAYOUT[name]
        root = _cifar_dir(name, data_dir)

        def read(files: list[str]) -> ArrayDataset:
            parts = [_read_cifar_file(root / f, lb, li, nc) for f in files]
            return ArrayDataset(_cifar_images([p[0] for p in parts], lb),
                                np.concatenate([p[1] for p in parts]))

        return read(train_files), read(test_files)

    load.__doc__ = f"{name} from the binary distribution in data_dir, uint8 HWC."
    return load


# --------------------------------------------------------------------------------------------------
# npz (user data)
# --------------------------------------------------------------------------------------------------


def _npz_array(f: Any, key: str, path: Path) -> np.ndarray:
    try:
        arr = f[key]
    except ValueError as e:  # object arrays refuse to load with allow_pickle=False
        raise ValueError(f"{path}: array {key!r} cannot be loaded without pickle ({e}); store "
                         f"plain numeric arrays") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{path}: array {key!r} has unsupported dtype {arr.dtype}; "
                         f"expected a numeric array")
    return arr


def _labels(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if arr.ndim != 1:
        raise ValueError(f"{path}: {key!r} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{path}: {key!r} must hold integer class labels, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{path}: {key!r} contains negative labels")
    return arr.astype(np.int64)


def _load_npz(params: dict[str, Any], data_dir: str | None) -> tuple[ArrayDataset, ArrayDataset]:
    """User data: arrays x, y (and optionally x_test, y_test) from an .npz; without a test pair,
    the same fixed 80/20 split as the built-in tabular datasets. A relative `path` is resolved
    against data_dir when one is given (so a proof's params stay portable)."""
    _check_params("npz", params, {"path"})
    p = params.get("path")
    if not isinstance(p, str) or not p:
        raise ValueError("dataset 'npz' needs parameter 'path' (a .npz file with arrays x, y)")
    path = Path(p)
    if not path.is_absolute() and data_dir is not None:
        path = Path(data_dir) / path
    if not path.is_file():
        raise DatasetNotFound(f"npz dataset file {path} not found (expected a .npz with arrays "
                              f"x, y and optionally x_test, y_test)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read as .npz ({e})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (use numpy.savez with arrays x, y)")
    try:
        with loaded as f:
            keys = set(f.files)
            missing = {"x", "y"} - keys
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(sorted(missing))}; found "
                                 f"{', '.join(sorted(keys)) or 'none'}")
            if ("x_test" in keys) != ("y_test" in keys):
                raise ValueError(f"{path}: x_test and y_test must be given together")
            x = _npz_array(f, "x", path)
            y = _labels(_npz_array(f, "y", path), "y", path)
            xt = yt = None
            if "x_test" in keys:
                xt = _npz_array(f, "x_test", path)
                yt = _labels(_npz_array(f, "y_test", path), "y_test", path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: corrupt .npz archive ({e})") from None
    if len(x) != len(y):
        raise ValueError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    if xt is None:
        return _split(x, y)
    if len(xt) != len(yt):
        raise ValueError(f"{path}: x_test has {len(xt)} samples but y_test has {len(yt)}")
    if xt.shape[1:] != x.shape[1:]:
        raise ValueError(f"{path}: x_test sample shape {xt.shape[1:]} differs from x {x.shape[1:]}")
    return (ArrayDataset(np.ascontiguousarray(x), y), ArrayDataset(np.ascontiguousarray(xt), yt))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

Loader = Callable[[dict[str, Any], "str | None"], tuple[ArrayDataset, ArrayDataset]]

def _load_synthetic_tokens(params: dict[str, Any],
                           data_dir: str | None) -> tuple[ArrayDataset, ArrayDataset]:
    """Token sequences from a seeded sparse Markov chain (each token has 4 likely successors):
    learnable next-token prediction for language-model benchmarks. x: int64 [N, block],
    y: the next tokens, int64 [N, block]."""
    _check_params("synthetic-tokens", params,
                  {"seed", "n_train", "n_test", "block_size", "vocab_size"})
    seed = _int_param(params, "seed", 0, 0, 2**63 - 1)
    n_train = _int_param(params, "n_train", 2048, 1, 1_000_000)
    n_test = _int_param(params, "n_test", 256, 0, 1_000_000)
    block = _int_param(params, "block_size", 128, 2, 65536)
    vocab = _int_param(params, "vocab_size", 256, 2, 1_000_000)
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, size=(vocab, 4))
    n = n_train + n_test
    seq = np.empty((n, block + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(0, vocab, size=n)
    for t in range(block):
        pick = rng.integers(0, 4, size=n)
        noise = rng.random(n) < 0.1
        nxt = succ[seq[:, t], pick]
        seq[:, t + 1] = np.where(noise, rng.integers(0, vocab, size=n), nxt)
    x, y = np.ascontiguousarray(seq[:, :-1]), np.ascontiguousarray(seq[:, 1:])
    return ArrayDataset(x[:n_train], y[:n_train]), ArrayDataset(x[n_train:], y[n_train:])


DATASETS: dict[str, Loader] = {
    "digits": _load_digits,
    "iris": _standardized(_sk("load_iris"), "iris"),
    "wine": _standardized(_sk("load_wine"), "wine"),
    "breast-cancer": _standardized(_sk("load_breast_cancer"), "breast-cancer"),
    "synthetic-cifar": _load_synthetic_cifar,
    "cifar10": _cifar_loader("cifar10"),
    "cifar100": _cifar_loader("cifar100"),
    "npz": _load_npz,
    "synthetic-tokens": lambda params, data_dir: _load_synthetic_tokens(params, data_dir),
}

_BUILTIN_LOADERS = dict(DATASETS)

# The PREPARE entry that fits each dataset's raw arrays.
DEFAULT_PREPARE: dict[str, str] = {
    "digits": "digits",
    "iris": "float",
    "wine": "float",
    "breast-cancer": "float",
    "synthetic-cifar": "image-hwc-uint8",
    "cifar10": "image-hwc-uint8",
    "cifar100": "image-hwc-uint8",
    "npz": "float",
    "synthetic-tokens": "tokens",
}


# In-process cache of the built-in datasets that are pure functions of (name, params): generated
# (synthetic-*) or bundled with scikit-learn, never files on disk (which may change). A prover and a
# verifier in one process (benchmarks, tests, `pol train` then `pol verify`) build them once; every
# caller gets fresh copies, so nothing can alter a cached array.
_PURE_DATASETS = frozenset({"digits", "iris", "wine", "breast-cancer", "synthetic-cifar",
                            "synthetic-tokens"})
_CACHE_MAX_BYTES = 256 * 2**20
_CACHE_MAX_ENTRIES = 4
_load_cache: dict[tuple, tuple[Any, ArrayDataset, ArrayDataset]] = {}


def _copy(d: ArrayDataset) -> ArrayDataset:
    return ArrayDataset(d.x.copy(), d.y.copy())


def _cached_load(name: str, loader: Loader, params: dict[str, Any],
                 data_dir: str | None) -> tuple[ArrayDataset, ArrayDataset]:
    import json
    key = None
    if name in _PURE_DATASETS:
        try:
            key = (name, json.dumps(params, sort_keys=True, allow_nan=False))
        except (TypeError, ValueError):
            key = None
    hit = _load_cache.get(key) if key is not None else None
    if hit is not None and hit[0] is loader:  # the same (built-in) loader, not a replaced one
        return _copy(hit[1]), _copy(hit[2])
    train, test = loader(params, data_dir)
    if key is not None and train.x.nbytes + test.x.nbytes <= _CACHE_MAX_BYTES:
        while len(_load_cache) >= _CACHE_MAX_ENTRIES:
            _load_cache.pop(next(iter(_load_cache)))
        _load_cache[key] = (loader, _copy(train), _copy(test))
    return train, test


# --------------------------------------------------------------------------------------------------
# Generation budget: a verifier rebuilds a synthetic dataset from the parameters in a proof, which a
# hostile prover chooses. The memory it takes is estimated from the parameters alone, before
# anything is generated (measured peak of the generators, numpy allocations, plus a margin).
# --------------------------------------------------------------------------------------------------


def _synthetic_cifar_bytes(params: dict[str, Any]) -> tuple[int, str]:
    n_train = _int_param(params, "n_train", 2000, 1, _MAX_SYNTHETIC)
    n_test = _int_param(params, "n_test", 500, 0, _MAX_SYNTHETIC)
    num_classes = _int_param(params, "num_classes", 10, 2, 1000)
    pixels = 32 * 32 * 3
    # int16 noise + int16 image + float32 working copy + uint8 draws and result: 9.2-9.6x the
    # samples measured; the patterns are summed in float64 (27x their pixels measured)
    need = 10 * (n_train + n_test) * pixels + 28 * (num_classes + 64) * pixels
    return need, f"n_train={n_train}, n_test={n_test}, num_classes={num_classes}"


def _synthetic_tokens_bytes(params: dict[str, Any]) -> tuple[int, str]:
    n_train = _int_param(params, "n_train", 2048, 1, 1_000_000)
    n_test = _int_param(params, "n_test", 256, 0, 1_000_000)
    block = _int_param(params, "block_size", 128, 2, 65536)
    vocab = _int_param(params, "vocab_size", 256, 2, 1_000_000)
    n = n_train + n_test
    # int64 sequences [n, block + 1], then x and y copied out of them (1.5x x + y measured), the
    # per-position draws, and the successor table (int64 [vocab, 4])
    need = 25 * n * (block + 1) + 64 * n + 40 * vocab + 2**16
    return need, f"n_train={n_train}, n_test={n_test}, block_size={block}, vocab_size={vocab}"


# Datasets generated from their parameters. The others are fixed: bundled with scikit-learn, or
# read from files the verifier supplies itself (CIFAR, npz).
GENERATION_BYTES: dict[str, Callable[[dict[str, Any]], tuple[int, str]]] = {
    "synthetic-cifar": _synthetic_cifar_bytes,
    "synthetic-tokens": _synthetic_tokens_bytes,
}


def _estimate(name: Any, params: dict | None) -> tuple[int, str] | None:
    est = GENERATION_BYTES.get(name) if isinstance(name, str) else None
    if est is None or DATASETS.get(name) is not _BUILTIN_LOADERS.get(name):
        return None  # fixed data, or a loader replaced by the user
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"dataset params must be a dict, got {type(params).__name__}")
    return est(dict(params or {}))


def generation_bytes(name: str, params: dict | None) -> int | None:
    """Estimated peak memory of generating dataset `name` with `params` (train and test splits
    together: both come from one random stream), or None for a dataset that is not generated.
    Raises ValueError for parameters the generator would refuse."""
    got = _estimate(name, params)
    return None if got is None else got[0]


def check_generation_budget(name: str, params: dict | None, max_bytes: int) -> None:
    """Refuse (`pol.proof.format.LimitExceeded`, exit 2) to generate a dataset whose estimated
    memory is over `max_bytes` (`Limits.max_dataset_bytes`); O(1), before anything is
    generated. Raises ValueError for parameters the generator would refuse."""
    got = _estimate(name, params)
    if got is None:
        return
    need, what = got
    if need > max_bytes:
        from pol.errors import LimitExceeded
        raise LimitExceeded(f"generating dataset {name} ({what}) needs about "
                            f"{need / 2**30:.3g} GiB of memory", "max_dataset_bytes", max_bytes)


def load_dataset(name: str, params: dict | None = None,
                 data_dir: str | None = None, *,
                 max_bytes: int | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) raw arrays for a registered dataset.

    Every dataset also accepts `limit` (int): keep only the first `limit` training samples (the
    test split is unchanged), handy for quick runs on CIFAR.

    `max_bytes`: refuse a generated dataset whose estimated memory is larger
    (`check_generation_budget`), before generating it. None (the prover, whose own parameters
    they are): no budget.
    """
    try:
        loader = DATASETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known: {known}") from None
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"dataset params must be a dict, got {type(params).__name__}")
    params = dict(params or {})
    if max_bytes is not None:
        check_generation_budget(name, params, max_bytes)
    limit = None
    if "limit" in params:
        limit = _int_param(params, "limit", 0, 1, 2**62)
    train, test = _cached_load(name, loader, params, data_dir)
    if limit is not None and limit < len(train):
        train = ArrayDataset(np.ascontiguousarray(train.x[:limit]), train.y[:limit].copy())
    return train, test




# ----- the training set of a proof (the verifier's, and a forger's public data)

def load_training_set(spec, data: str | None):
    """The training set the verifier replays on: built-in datasets are rebuilt from their name and
    parameters (they take no `data`: one given is an error, never silently ignored); local (CIFAR)
    and user data come from `data` (a directory, or an .npz file); a token file from `data` (the
    file, its sha256 checked against the proof's); a torch Dataset from the factory `data` names
    (`module:callable`, called with the proof's `kwargs`; the commitment check holds it to the
    prover's bytes). Every problem with `data` is a
    ConfigError (exit 2) naming it."""
    name = spec.data.name
    if name in _LAZY_LOADERS:  # read on demand: a token file, a torch Dataset's factory
        return _LAZY_LOADERS[name](spec, data)
    if data is not None and name in _PURE_DATASETS:
        raise ConfigError(f"--data {data}: this proof's dataset {name!r} is built into pol and "
                          "rebuilt from the proof's own parameters; it takes no --data (leave "
                          "--data out)")
    if data is not None and not os.path.exists(data):
        raise ConfigError(f"--data {data}: no such file or directory")
    try:
        if name in ("user", "npz"):
            return _load_user_npz(data)
        if data is not None and name in ("cifar10", "cifar100") and not os.path.isdir(data):
            raise ConfigError(f"--data {data} is a file: the {name} dataset is read from the "
                              "directory holding its binary files")
        train, _ = load_dataset(name, dict(spec.data.params), data)
        return train
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ProofFormatError(f"cannot load the proof's dataset {name!r}: {e}") from None


def _load_user_npz(data: str | None):
    if not data:
        raise ConfigError("this proof was made on user data: pass it with --data FILE.npz "
                          "(arrays x and y)")
    if os.path.isdir(data):
        raise ConfigError(f"--data {data} is a directory: this proof was made on user "
                          "data, pass the .npz file with arrays x and y")
    if not zipfile.is_zipfile(data):
        raise ConfigError(f"--data {data} is not an .npz archive: save the training set "
                          "with numpy.savez(PATH, x=..., y=...) (CSV and .npy files are "
                          "not read)")
    try:
        with np.load(data, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise ConfigError(f"{data}: expected arrays named x and y")
            return ArrayDataset(z["x"], z["y"].astype(np.int64))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"--data {data}: not a readable .npz archive of arrays x and "
                          f"y ({e})") from None


# ----- data read on demand: a torch Dataset, a memory-mapped token file (issue 12)
#
# A `LazyDataset` holds no arrays: `.x[idx]` and `.y[idx]` gather a batch from its source, so
# every caller written for an ArrayDataset (`ds.x[idx]`, `ds.y[idx]`, `len(ds)`) reads it as is.
# Its per-sample leaves are hashed in one streaming pass (`pol.proof.hashing.source_leaves`, which
# `sample_leaves(ds.x, ds.y)` calls for it) over exactly the bytes an ArrayDataset of the same
# arrays would hash, so the same data gives the same Merkle root however it is held.

TOKEN_DTYPES = ("uint16", "uint32")
FACTORY_FORM = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class _Column:
    """`x` or `y` of a LazyDataset: indexing with an integer array (or a slice) reads that batch."""

    def __init__(self, source: Any, which: int) -> None:
        self.pol_source = source  # what pol.proof.hashing streams the leaves from
        self._which = which

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, slice):
            idx = np.arange(len(self.pol_source))[idx]
        return self.pol_source.batch(np.asarray(idx, dtype=np.int64).reshape(-1))[self._which]

    def __len__(self) -> int:
        return len(self.pol_source)

    def __reduce__(self) -> tuple:
        # pickled alone (the verifier hands small data to its replay workers this way): the
        # column's values, as the ndarray an ArrayDataset holds. A whole LazyDataset pickles as
        # its source instead (DataLoader workers started by spawn), never materialized.
        return (np.ascontiguousarray, (self[np.arange(len(self), dtype=np.int64)],))

    @property
    def dtype(self) -> np.dtype:
        return self.pol_source.dtypes[self._which]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.pol_source),) + self.pol_source.shapes[self._which]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class LazyDataset:
    """A dataset read on demand from a source (`TorchDatasetSource`, `TokenFile`): `.x[idx]` and
    `.y[idx]` gather a batch as numpy arrays, like an ArrayDataset's; nothing is materialized."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.x = _Column(source, 0)
        self.y = _Column(source, 1)

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"])

    def __repr__(self) -> str:
        return f"LazyDataset({self.source!r})"


def _item_arrays(item: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, label) of a Dataset item as numpy arrays; ConfigError for anything else."""
    import torch
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ConfigError(f"dataset item {i} is a {type(item).__name__}: pol reads items that are "
                          "pairs (input tensor or array, integer label or label array)")
    x, y = item
    try:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
    except TypeError as e:  # bfloat16 and other dtypes numpy has no bytes for
        raise ConfigError(f"dataset item {i}: {e}: return a tensor of a numpy dtype") from None
    x, y = np.ascontiguousarray(x), np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"dataset item {i}: input of dtype {x.dtype}, expected a numeric array")
    if y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise ConfigError(f"dataset item {i}: label {y!r} is not a non-negative integer (or an "
                          "array of them)")
    return x, y.astype(np.int64)


class TorchDatasetSource:
    """A map-style `torch.utils.data.Dataset` whose items are (input, integer label) pairs.

    `content_key`: a string that names the dataset's content (e.g. a digest of the files it reads;
    it must change whenever any item would); given, the leaves are cached on disk under it.
    Without one, a dataset that has a `pol_content_key` attribute (a string, or a method returning
    one) names it itself; otherwise nothing is cached on disk."""

    def __init__(self, dataset: Any, content_key: str | None = None) -> None:
        from torch.utils.data import IterableDataset
        if isinstance(dataset, IterableDataset):
            raise ConfigError(f"{type(dataset).__name__} is an IterableDataset: pol reads "
                              "map-style datasets (it commits to every sample by its index)")
        try:
            n = len(dataset)
        except TypeError:
            raise ConfigError(f"{type(dataset).__name__} has no len(): pol reads map-style "
                              "datasets (an IterableDataset has no indices to commit to)") from None
        if n < 1:
            raise ConfigError("the dataset is empty")
        self.dataset, self.n = dataset, n
        if content_key is None:
            named = getattr(dataset, "pol_content_key", None)
            content_key = named() if callable(named) else named
        if content_key is not None and not isinstance(content_key, str):
            raise ConfigError("pol_content_key must be a string")
        self._key = content_key
        x0, y0 = self.item(0)
        self.dtypes = (x0.dtype, np.dtype(np.int64))
        self.shapes = (x0.shape, y0.shape)
        self._last: tuple[bytes, tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None}

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            item = self.dataset[int(i)]
        except Exception as e:  # noqa: BLE001 - user code: a named error, never a crash
            raise ConfigError(f"reading dataset item {int(i)} failed: {type(e).__name__}: "
                              f"{e}") from None
        return _item_arrays(item, int(i))

    def content_key(self) -> str | None:
        return None if self._key is None else f"torch-dataset:{self._key}:{self.n}"

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = idx.tobytes()
        last = self._last  # x[idx] then y[idx] read the items once
        if last is not None and last[0] == key:
            return last[1]
        xs, ys = zip(*(self.item(i) for i in idx)) if len(idx) else ((), ())
        for i, a, b in zip(idx, xs, ys):
            if a.dtype != self.dtypes[0] or a.shape != self.shapes[0] or b.shape != self.shapes[1]:
                raise ConfigError(f"dataset item {int(i)} is {a.dtype}{list(a.shape)} with label "
                                  f"shape {list(b.shape)}, item 0 {self.dtypes[0]}"
                                  f"{list(self.shapes[0])} with {list(self.shapes[1])}: every "
                                  "item must have one dtype and shape")
        out = (np.stack(xs) if xs else np.empty((0,) + self.shapes[0], self.dtypes[0]),
               np.stack(ys) if ys else np.empty((0,) + self.shapes[1], np.int64))
        self._last = (key, out)
        return out

    def __repr__(self) -> str:
        return f"TorchDatasetSource({type(self.dataset).__name__}, {self.n} items)"


class TokenFile:
    """A nanoGPT-style token file (a flat array of `dtype` tokens, little-endian, no header) read
    through `np.memmap`, as N = len // (block_size + 1) non-overlapping windows of block_size + 1
    tokens. Sample i is window i: input `tokens[w : w + block_size]` (the file's dtype) and
    targets `tokens[w + 1 : w + block_size + 1]` (int64), w = i·(block_size + 1) — what an
    ArrayDataset of those rows holds, so the leaves and root are the same.

    Why non-overlapping windows rather than nanoGPT's random offsets: the verifier checks that
    every epoch's indices are a permutation of the dataset, and a random-offset sampler draws with
    replacement from len - block_size overlapping windows (no epochs at all). Over the N disjoint
    windows an epoch (the seed's permutation of them) sees every token once, in random order; the
    sample indices recorded are window numbers (offset = index · (block_size + 1))."""

    def __init__(self, path: str | os.PathLike, block_size: int, dtype: str = "uint16",
                 sha256: str | None = None) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"block_size={block_size!r}: a positive integer")
        if dtype not in TOKEN_DTYPES:
            raise ConfigError(f"token dtype {dtype!r}: one of {', '.join(TOKEN_DTYPES)}")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ConfigError(f"token file {self.path}: no such file")
        if sha256 is None:
            from pol.util import sha256_file
            sha256 = sha256_file(self.path)[0]
        self.sha256, self.block_size, self.dtype = sha256, block_size, dtype
        self.n = os.path.getsize(self.path) // np.dtype(dtype).itemsize // (block_size + 1)
        if self.n < 1:
            raise ConfigError(f"token file {self.path} holds fewer than block_size + 1 = "
                              f"{block_size + 1} tokens")
        self.dtypes = (np.dtype("<" + np.dtype(dtype).str[1:]), np.dtype(np.int64))
        self.shapes = ((block_size,), (block_size,))
        self._open()

    def _open(self) -> None:
        w = self.block_size + 1
        self._windows = np.memmap(self.path, dtype=self.dtypes[0], mode="r",
                                  shape=(self.n, w))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_windows"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.n

    @property
    def params(self) -> dict[str, Any]:
        """The spec's data params: the file's digest, the block size and the token dtype."""
        return {"sha256": self.sha256, "block_size": self.block_size, "dtype": self.dtype}

    def content_key(self) -> str:
        return f"token-file:{self.sha256}:{self.dtype}:{self.block_size}"

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        win = self._windows[idx]
        return np.ascontiguousarray(win[:, :-1]), win[:, 1:].astype(np.int64)

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r}, block_size={self.block_size}, {self.n} windows)"


def _import_factory(ref: str) -> Any:
    """The callable `module:callable` names (the module from sys.path, else from the current
    directory); ConfigError for anything that fails."""
    import importlib
    import importlib.util
    import re
    import sys
    if not re.match(FACTORY_FORM, ref):
        raise ConfigError(f"--data {ref}: this proof's data comes from a torch Dataset; pass "
                          "the factory that builds it as --data module:callable")
    module_name, attr = ref.split(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            path = os.path.join(os.getcwd(), module_name + ".py")
            if "." in module_name or not os.path.isfile(path):
                raise
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        fn = getattr(module, attr)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code: never a crash
        raise ConfigError(f"--data {ref}: cannot import the dataset factory: "
                          f"{type(e).__name__}: {e}") from None
    if not callable(fn):
        raise ConfigError(f"--data {ref}: {attr} is not callable")
    return fn


def torch_dataset_from_factory(ref: str, kwargs: dict | None = None) -> LazyDataset:
    """The dataset a `module:callable` factory returns, called with `kwargs` (JSON values), read
    on demand."""
    fn = _import_factory(ref)
    try:
        ds = fn(**dict(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - user code
        raise ConfigError(f"dataset factory {ref} failed: {type(e).__name__}: {e}") from None
    return LazyDataset(TorchDatasetSource(ds))


# ----- a Hugging Face `datasets.Dataset` (pip install 'pol[hf]'; pol never imports datasets itself:
# an object can only be a datasets.Dataset once its user has imported the package)

HF_LABEL_COLUMNS = ("labels", "label")


def is_hf_dataset(obj: Any) -> bool:
    """Whether `obj` is a (map-style) `datasets.Dataset`."""
    mod = sys.modules.get("datasets")
    return mod is not None and isinstance(obj, getattr(mod, "Dataset", ()))


def hf_columns(names: list[str], columns: Any = None) -> tuple[str, str]:
    """(input column, label column) of a datasets.Dataset with these column names: `columns` as
    given, else `input_ids` with `labels` (a causal LM's: `input_ids` itself when there is no
    labels column), else the one column beside `labels` / `label`."""
    if columns is not None:
        if (not isinstance(columns, (list, tuple)) or len(columns) != 2
                or not all(isinstance(c, str) and c in names for c in columns)):
            raise ConfigError(f"columns={columns!r}: two of the dataset's columns, [input, label] "
                              f"(it has {', '.join(names)})")
        return columns[0], columns[1]
    if "input_ids" in names:
        return "input_ids", "labels" if "labels" in names else "input_ids"
    labels = [c for c in HF_LABEL_COLUMNS if c in names]
    rest = [c for c in names if c not in labels]
    if len(labels) == 1 and len(rest) == 1:
        return rest[0], labels[0]
    raise ConfigError(f"which columns of the datasets.Dataset are the input and the label? It has "
                      f"{', '.join(names)}: pass data_params={{'columns': [input, label]}}")


def _arrow_numpy(col: Any, name: str) -> np.ndarray:
    """A pyarrow column of numbers, or of (nested) lists of one length, as the numpy array of its
    raw values (their own dtype: int32 stays int32, float64 float64)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    shape = [len(arr)]
    while True:
        if isinstance(arr.type, pa.ExtensionType):
            arr = arr.storage
            continue
        if arr.null_count:
            raise ConfigError(f"column {name!r} holds missing values")
        t = arr.type
        if pa.types.is_fixed_size_list(t):
            width = t.list_size
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            width = int(lengths[0]) if len(lengths) else 0
            if np.any(lengths != width):
                raise ConfigError(f"column {name!r} holds lists of different lengths: pol reads "
                                  "samples of one shape (pad or cut them to one length)")
        else:
            break
        arr, shape = arr.flatten(), shape + [width]
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise ConfigError(f"column {name!r} is of type {t}: pol reads numbers or fixed-length "
                          "lists of numbers")
    out = arr.to_numpy(zero_copy_only=False)  # read-only where it is Arrow's own buffer
    return (out if out.flags.writeable else out.copy()).reshape(shape)


class HFDatasetSource:
    """A Hugging Face `datasets.Dataset` read on demand: sample i is (row i of the input column,
    row i of the label column) as numpy arrays of the Arrow data's own values (no formatting or
    casting), the label as int64; `columns` as `hf_columns` picks them. With `fingerprint_key`
    (the prover's own data), its `_fingerprint` names its content and its leaves are cached on
    disk under it; a verifier hashes the bytes it is given (a saved dataset's fingerprint is a
    file that whoever made the directory wrote)."""

    def __init__(self, dataset: Any, columns: Any = None, fingerprint_key: bool = True) -> None:
        mod = sys.modules.get("datasets")
        if mod is not None and isinstance(dataset, getattr(mod, "IterableDataset", ())):
            raise ConfigError("a datasets.IterableDataset (streaming): pol reads map-style "
                              "datasets (it commits to every sample by its index)")
        if not is_hf_dataset(dataset):
            raise ConfigError(f"{type(dataset).__name__} is not a datasets.Dataset (a "
                              "DatasetDict: pass the training split, e.g. ds['train'])")
        self.columns = hf_columns(list(dataset.column_names), columns)
        self.n = len(dataset)
        if self.n < 1:
            raise ConfigError("the dataset is empty")
        fp = getattr(dataset, "_fingerprint", None)
        self._key = fp if fingerprint_key and isinstance(fp, str) and fp else None
        self._rows = dataset.with_format("arrow", columns=list(dict.fromkeys(self.columns)))
        x0, y0 = self._read(np.zeros(1, dtype=np.int64))
        self.dtypes = (x0.dtype, np.dtype(np.int64))
        self.shapes = (x0.shape[1:], y0.shape[1:])

    def __len__(self) -> int:
        return self.n

    def _read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        table = self._rows[idx.tolist()]
        x = _arrow_numpy(table.column(self.columns[0]), self.columns[0])
        y = _arrow_numpy(table.column(self.columns[1]), self.columns[1])
        if x.dtype.kind not in "biuf":
            raise ConfigError(f"column {self.columns[0]!r}: dtype {x.dtype} is not numeric")
        if y.dtype.kind not in "iu":
            raise ConfigError(f"label column {self.columns[1]!r} holds {y.dtype}, not integers")
        return x, y.astype(np.int64)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(idx) == 0:
            return (np.empty((0,) + self.shapes[0], self.dtypes[0]),
                    np.empty((0,) + self.shapes[1], np.int64))
        x, y = self._read(idx)
        if x.dtype != self.dtypes[0] or x.shape[1:] != self.shapes[0] \
                or y.shape[1:] != self.shapes[1]:
            raise ConfigError(f"samples read as {x.dtype}{list(x.shape[1:])} with labels "
                              f"{list(y.shape[1:])}, sample 0 as {self.dtypes[0]}"
                              f"{list(self.shapes[0])} with {list(self.shapes[1])}: every sample "
                              "must have one dtype and shape")
        return x, y

    def content_key(self) -> str | None:
        if self._key is None:
            return None
        return f"hf-dataset:{self._key}:{self.columns[0]}:{self.columns[1]}:{self.n}"

    def __repr__(self) -> str:
        return f"HFDatasetSource({self.n} rows, columns {list(self.columns)})"


def hf_dataset_from(ref: str, kwargs: dict | None = None) -> Any:
    """The datasets.Dataset that a `--data` argument names: a directory written by
    `Dataset.save_to_disk`, or a `module:callable` factory (called with `kwargs`)."""
    import re
    if os.path.isdir(ref):
        try:
            import datasets
        except ImportError:
            raise ConfigError("this proof's data is a Hugging Face dataset: install datasets "
                              "(pip install 'pol[hf]')") from None
        try:
            ds = datasets.load_from_disk(ref)
        except Exception as e:  # noqa: BLE001 - a foreign directory: a named error
            raise ConfigError(f"--data {ref}: not a dataset saved by Dataset.save_to_disk "
                              f"({type(e).__name__}: {e})") from None
    elif re.match(FACTORY_FORM, ref):
        fn = _import_factory(ref)
        try:
            ds = fn(**dict(kwargs or {}))
        except Exception as e:  # noqa: BLE001 - user code
            raise ConfigError(f"dataset factory {ref} failed: {type(e).__name__}: {e}") from None
    else:
        raise ConfigError(f"--data {ref}: this proof's data is a Hugging Face datasets.Dataset; "
                          "pass the directory it was saved to (Dataset.save_to_disk) or the "
                          "factory that builds it (module:callable)")
    if not is_hf_dataset(ds):
        raise ConfigError(f"--data {ref} gives a {type(ds).__name__}, not a datasets.Dataset "
                          "(a DatasetDict: save or return the training split)")
    return ds


def _load_hf_dataset(spec, data: str | None) -> LazyDataset:
    p = spec.data.params
    cols, kwargs = p.get("columns"), p.get("kwargs", {})
    if (not isinstance(cols, list) or len(cols) != 2 or not all(isinstance(c, str) for c in cols)
            or not isinstance(kwargs, dict)):
        raise ProofFormatError("hf-dataset data params need columns [input, label] (and kwargs "
                               "an object)")
    if not data:
        made = f" (the prover's factory was {p['factory']!r})" if "factory" in p else ""
        raise ConfigError("this proof was made on a Hugging Face datasets.Dataset: pass it with "
                          "--data DIR (saved by Dataset.save_to_disk) or --data module:callable "
                          f"(a factory that returns it){made}; pol imports only the code you name")
    return LazyDataset(HFDatasetSource(hf_dataset_from(data, kwargs), cols,
                                       fingerprint_key=False))


def _load_token_file(spec, data: str | None) -> LazyDataset:
    p = spec.data.params
    if not data or os.path.isdir(data):
        raise ConfigError("this proof was made on a token file: pass it with --data FILE (its "
                          f"sha256 is {p.get('sha256')})")
    block, dtype, want = p.get("block_size"), p.get("dtype", "uint16"), p.get("sha256")
    if not isinstance(want, str) or not isinstance(block, int) or dtype not in TOKEN_DTYPES:
        raise ProofFormatError("token-file data params need sha256, block_size and dtype")
    tf = TokenFile(data, block, dtype)
    if tf.sha256 != want:
        raise ConfigError(f"--data {data}: its sha256 {tf.sha256[:16]}… is not the proof's token "
                          f"file ({want[:16]}…): the dataset commitment cannot hold")
    return LazyDataset(tf)


def _load_torch_dataset(spec, data: str | None) -> LazyDataset:
    p = spec.data.params
    if not data:
        raise ConfigError("this proof was made on a torch Dataset: pass the factory that builds "
                          f"it as --data module:callable (the prover's was {p.get('factory')!r}); "
                          "pol imports only the code you name")
    kwargs = p.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ProofFormatError("torch-dataset data params: kwargs must be an object")
    return torch_dataset_from_factory(data, kwargs)


_LAZY_LOADERS = {"token-file": _load_token_file, "torch-dataset": _load_torch_dataset,
                 "hf-dataset": _load_hf_dataset}
