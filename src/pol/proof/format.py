"""Proof format v1 and v2: names, limits, the manifest schema and the root digest.

Layout of a proof directory::

    manifest.json                    format, version, spec, E/S/T/k, checkpoint steps, files + SHA-256,
                                     root digest (SHA-256 over the canonical manifest without it)
    indices.npy                      int64 [T, B]  batch indices per step (-1 pads a short batch)
    batch_hashes.npy                 uint8 [T, 32] Merkle root of each batch's sample leaves
    lrs.npy                          float64 [T, G] learning rate of every parameter group per step
    losses.npy                       float32 [T]   training loss per step (informational)
    checkpoints/step_<t:09d>.safetensors   model + optimizer state at step t (t = 0, k, 2k, ..., T)
    roundlog.polr                    exact-mode proofs only (spec.step.exact): the rounding log,
                                     `pol.proof.roundlog`

Format v2 (written only with the lossless checkpoint codec, `pol train --compress`) is v1 with
each checkpoint stored as `checkpoints/step_<t:09d>.polz` (see `pol.proof.codec`) instead of
`.safetensors`. Its manifest adds::

    codec     {"name": "xor-shuffle-zstd", "version": 1, "keyframe_interval": N}
    decoded   {"checkpoints/step_<t:09d>.safetensors": {"sha256", "size"}}  the decoded checkpoint

`files` lists the stored files (the `.polz` digests cover the compressed bytes); `decoded` binds
the bytes each checkpoint decodes to. `Manifest.files` is the logical view that readers use: the
arrays, and each checkpoint under its v1 name with its decoded digest and size, so a v2 checkpoint
is the same object as the v1 one; `Manifest.stored` lists what is on disk.

`progress.json` exists only while a proof is being written; a directory with it and without
manifest.json is an incomplete proof. manifest.json is written last, atomically.

This module is the format alone: json, hashlib and plain strings. It imports no torch (the sealed
file reader and `pol inspect` read manifests without it) and knows no optimizer: tensor dtypes are
named by the strings of `DTYPES`, and which dtype an entry is stored in is the caller's to compute
(`pol.step.optimizers.storage_dtype_name`, from the optimizer rows); `pol.proof.host` is the torch
side (host tensors only).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from pol import util
from pol.errors import LIMIT_OPTIONS, IntegrityError, LimitExceeded, ProofFormatError  # noqa: F401
from pol.spec import TrainingSpec

FORMAT_NAME = "pol-proof"
FORMAT_VERSION = 1  # what the writer writes by default (no codec): unchanged, byte for byte
CODEC_FORMAT_VERSION = 2  # written with the lossless checkpoint codec
SUPPORTED_VERSIONS = (1, 2)
STORED_EXT = ".polz"

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
INDICES = "indices.npy"
BATCH_HASHES = "batch_hashes.npy"
LRS = "lrs.npy"
LOSSES = "losses.npy"
ROUNDLOG = "roundlog.polr"
CKPT_DIR = "checkpoints"

# The one table of the tensor dtypes a proof stores, by name (torch's dtype name, which is numpy's
# where numpy has the type): safetensors code, item size, .npy descr ("" where .npy has none).
DTYPES: dict[str, tuple[str, int, str]] = {
    "float64": ("F64", 8, "<f8"), "float32": ("F32", 4, "<f4"), "float16": ("F16", 2, "<f2"),
    "bfloat16": ("BF16", 2, ""), "int64": ("I64", 8, "<i8"), "int32": ("I32", 4, "<i4"),
    "int16": ("I16", 2, "<i2"), "int8": ("I8", 1, "|i1"), "uint8": ("U8", 1, "|u1"),
    "bool": ("BOOL", 1, "|b1"),
}
# safetensors code -> item size (what a checkpoint header may name)
SAFETENSORS_ITEMSIZE: dict[str, int] = {code: size for code, size, _ in DTYPES.values()}
# the per-step arrays and their dtypes
ARRAY_DTYPES: dict[str, str] = {"indices": "int64", "batch_hashes": "uint8", "lrs": "float64",
                                "losses": "float32"}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,3}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def checkpoint_name(t: int) -> str:
    return f"{CKPT_DIR}/step_{t:09d}.safetensors"


def stored_checkpoint_name(t: int, version: int) -> str:
    """The file a checkpoint is stored in: v1 safetensors, v2 compressed."""
    if version >= CODEC_FORMAT_VERSION:
        return f"{CKPT_DIR}/step_{t:09d}{STORED_EXT}"
    return checkpoint_name(t)


def checkpoint_steps(T: int, k: int) -> list[int]:
    """Checkpoints every k steps plus the final state: 0, k, 2k, ..., T."""
    steps = list(range(0, T, k))
    steps.append(T)
    return steps


@dataclass(frozen=True)
class Limits:
    """Resource limits for reading a proof from an untrusted party. Raise them for big proofs
    (`pol verify --max-proof-gb`); every size read from a proof is checked against these before any
    allocation.

    The last four are the verifier's own budget: the work a proof can make the verifier do,
    whatever its own size (a short manifest can claim millions of checkpoints, a small file can
    decompress to gigabytes, a few dataset parameters can ask for gigabytes of generated data, one
    segment can claim millions of steps). Each is checked before that work starts; going over one
    raises `LimitExceeded` (exit 2), whose message names the limit and the option that raises it.
    See docs/LIMITS.md for why the defaults fit every honest proof of pol's built-in tasks."""

    max_manifest_bytes: int = 64 * 2**20
    max_total_bytes: int = 64 * 2**30
    max_file_bytes: int = 16 * 2**30
    max_files: int = 1_000_000
    max_steps: int = 100_000_000
    max_batch: int = 1 << 20
    max_safetensors_header: int = 16 * 2**20
    # verifier budget
    max_checkpoints: int = 250_000  # checkpoints a manifest may list (T/k + 1)
    max_checkpoint_bytes: int = 2 * 2**30  # one checkpoint as loaded (v2: decoded) bytes
    max_replay_steps: int = 1_000_000  # steps replayed by one verification (chosen segments)
    max_dataset_bytes: int = 2**30  # memory to generate a dataset from the proof's parameters


# `LimitExceeded` (exit 2, naming the `Limits` field and the option that raises it) and
# `LIMIT_OPTIONS` live in the one error tree, `pol.errors`; imported above, so the old names stay.


def num_checkpoints(T: int, k: int) -> int:
    """len(checkpoint_steps(T, k)), without building the list."""
    return -(-T // k) + 1


# An honest manifest holds at most 7 JSON items (list elements and object members) per checkpoint
# (its step, its file entry of 2 members, v2: its decoded entry of 2 more) plus the spec.
_ITEMS_PER_CHECKPOINT = 8
_ITEMS_SLACK = 1 << 17


def check_manifest_items(raw_bytes: bytes, limits: Limits) -> None:
    """Before parsing: an upper bound of the manifest's JSON items (every item but the first of a
    container follows a comma; a comma inside a string only raises the bound), counted at C speed.
    A manifest claiming millions of checkpoints is refused here in milliseconds, before the JSON
    parser builds millions of Python objects."""
    items = raw_bytes.count(b",") + raw_bytes.count(b"[") + raw_bytes.count(b"{")
    allowed = _ITEMS_PER_CHECKPOINT * limits.max_checkpoints + _ITEMS_SLACK
    if items > allowed:
        raise LimitExceeded(f"manifest.json holds up to {items:,} JSON items, more than a proof "
                            f"of {limits.max_checkpoints:,} checkpoints has (at most {allowed:,})",
                            "max_checkpoints", limits.max_checkpoints)


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON of the manifest's root digest: `pol.util.canonical_json` in its ASCII
    form (`\\uXXXX` escapes), the bytes every existing proof's root digest was computed over."""
    return util.canonical_json(obj, ascii_only=True)


def no_duplicate_keys(name: str):
    """`json.loads` hook that refuses duplicate keys (kept for old callers; parse untrusted JSON
    with `pol.util.loads_strict`, which does this and more)."""
    def hook(pairs: list) -> dict:
        d: dict = {}
        for k, v in pairs:
            if k in d:
                raise ProofFormatError(f"{name}: duplicate key {k!r}")
            d[k] = v
        return d
    return hook


def root_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "root_digest"}
    return hashlib.sha256(b"pol.manifest.v1\x00" + canonical_json(body)).hexdigest()


def check_name(name: Any) -> str:
    if (not isinstance(name, str) or not _NAME_RE.match(name)
            or any(part in (".", "..") for part in name.split("/"))):
        raise ProofFormatError(f"invalid file name in manifest: {name!r}")
    return name


@dataclass(frozen=True)
class Manifest:
    version: int
    spec: TrainingSpec
    epochs: int
    steps_per_epoch: int
    total_steps: int
    k: int
    checkpoints: tuple[int, ...]
    files: dict[str, tuple[str, int]]  # logical name -> (sha256 hex, size); v2: decoded checkpoints
    init: dict
    root_digest: str
    created: str
    raw: dict
    stored: dict[str, tuple[str, int]] | None = None  # files on disk (v2); None: same as files
    codec: dict | None = None  # v2: {"name", "version", "keyframe_interval"}

    @property
    def stored_files(self) -> dict[str, tuple[str, int]]:
        return self.files if self.stored is None else self.stored

    def stored_name(self, t: int) -> str:
        return stored_checkpoint_name(t, self.version)

    @property
    def num_groups(self) -> int:
        return int(self.raw["param_groups"])


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProofFormatError(f"manifest.{key}: expected an integer in [{lo}, {hi}], got {v!r}")
    return v


def parse_manifest(raw_bytes: bytes, limits: Limits) -> Manifest:
    """Validate a manifest completely before anything else of the proof is touched. The checks
    run in a fixed order (the JSON, the run's shape, the files, then init and the root digest), so
    a manifest wrong in several ways is always refused for the same reason."""
    raw, version = _load_manifest(raw_bytes, limits)
    spec = TrainingSpec.from_dict(raw.get("spec"))
    E = _int(raw, "epochs", 1, 10**6)
    S = _int(raw, "steps_per_epoch", 1, limits.max_steps)
    T = _int(raw, "total_steps", 1, limits.max_steps)
    k = _int(raw, "k", 1, 2**40)
    _int(raw, "param_groups", 1, 1024)
    if T != E * S:
        raise ProofFormatError(f"manifest: total_steps {T} != epochs {E} x steps_per_epoch {S}")
    if E != spec.epochs or k != spec.k:
        raise ProofFormatError("manifest: epochs/k disagree with the spec")
    expected_n = S * spec.batch_size if spec.drop_last else None
    if expected_n is not None and spec.data.size < expected_n:
        raise ProofFormatError("manifest: dataset too small for the claimed steps per epoch")
    n_ck = num_checkpoints(T, k)
    if n_ck > limits.max_checkpoints:
        raise LimitExceeded(f"the proof claims {n_ck:,} checkpoints (T = {T:,}, k = {k:,})",
                            "max_checkpoints", limits.max_checkpoints)
    ckpts = raw.get("checkpoints")
    # length and types first: never build a list from the claimed T and k before that
    if (not isinstance(ckpts, list) or len(ckpts) != n_ck
            or any(type(c) is not int for c in ckpts) or ckpts != checkpoint_steps(T, k)):
        raise ProofFormatError("manifest.checkpoints: expected steps 0, k, 2k, ..., T")
    extra = (ROUNDLOG,) if spec.step.exact else ()
    files, stored, codec = _manifest_files(raw, version, ckpts, limits, extra)
    init, rd, created = _check_init_and_digest(raw, spec)
    return Manifest(version=version, spec=spec, epochs=E, steps_per_epoch=S, total_steps=T, k=k,
                    checkpoints=tuple(ckpts), files=files, init=init, root_digest=rd,
                    created=created, raw=raw, stored=stored, codec=codec)


def _load_manifest(raw_bytes: bytes, limits: Limits) -> tuple[dict, int]:
    """The manifest's JSON object and format version, with no field beyond the version's."""
    if len(raw_bytes) > limits.max_manifest_bytes:
        raise ProofFormatError(f"manifest.json is larger than the limit of "
                               f"{limits.max_manifest_bytes} bytes")
    check_manifest_items(raw_bytes, limits)
    # no duplicate keys, no NaN/Infinity, valid UTF-8 and nesting; ProofFormatError naming the file
    raw = util.loads_strict(raw_bytes, MANIFEST, max_bytes=None)
    if not isinstance(raw, dict):
        raise ProofFormatError("manifest.json is not a JSON object")
    if raw.get("format") != FORMAT_NAME:
        raise ProofFormatError("manifest.json is not a pol proof manifest")
    version = raw.get("version")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise ProofFormatError(f"unsupported proof format version {version!r}; this pol reads "
                               f"version(s) {', '.join(map(str, SUPPORTED_VERSIONS))} — "
                               "upgrade pol to verify newer proofs")
    allowed = {"format", "version", "created", "pol_version", "spec", "epochs", "steps_per_epoch",
               "total_steps", "k", "checkpoints", "files", "init", "param_groups", "root_digest",
               "dataset_size"}
    if version >= CODEC_FORMAT_VERSION:
        allowed |= {"codec", "decoded"}
    extra = set(raw) - allowed
    if extra:
        raise ProofFormatError(f"manifest.json has unknown field(s): {', '.join(sorted(extra))}")
    return raw, version


def _manifest_files(raw: dict, version: int, ckpts: list[int], limits: Limits,
                    extra: tuple[str, ...] = ()
                    ) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]] | None,
                               dict | None]:
    """(files, stored, codec) of `Manifest`: the file entries, each under its limits. `extra`:
    the files the spec adds (an exact-mode proof's rounding log)."""
    n_ck = len(ckpts)
    files_raw = raw.get("files")
    if not isinstance(files_raw, dict) or len(files_raw) > limits.max_files:
        raise ProofFormatError("manifest.files: expected an object of file entries")
    # the four per-step arrays, one file per checkpoint, the spec's extra files
    if len(files_raw) != n_ck + 4 + len(extra):
        raise ProofFormatError(f"manifest.files: {len(files_raw)} entries, expected "
                               f"{n_ck + 4 + len(extra)} (the per-step arrays"
                               + "".join(f", {e}" for e in extra) + f" and {n_ck} checkpoints)")
    codec = _parse_codec(raw.get("codec"), version) if version >= CODEC_FORMAT_VERSION else None
    files, total = _file_entries(files_raw, "files", limits)
    if total > limits.max_total_bytes:
        raise ProofFormatError(f"proof is {total} bytes, over the reader's limit of "
                               f"{limits.max_total_bytes} (raise it with --max-proof-gb)")
    required = ({INDICES, BATCH_HASHES, LRS, LOSSES, *extra}
                | {stored_checkpoint_name(t, version) for t in ckpts})
    if set(files) != required:
        missing = sorted(required - set(files))[:3]
        extra_f = sorted(set(files) - required)[:3]
        raise ProofFormatError(f"manifest.files: missing {missing}, unexpected {extra_f}")
    stored = None
    if version >= CODEC_FORMAT_VERSION:
        dec_raw = raw.get("decoded")
        if not isinstance(dec_raw, dict) or len(dec_raw) != len(ckpts):
            raise ProofFormatError("manifest.decoded: expected one entry per checkpoint")
        decoded, dec_total = _file_entries(dec_raw, "decoded", limits)
        if dec_total > limits.max_total_bytes:  # decoding does that much work, however small
            raise ProofFormatError(f"proof decodes to {dec_total} bytes of checkpoints, over "
                                   f"the reader's limit of {limits.max_total_bytes} (raise it "
                                   "with --max-proof-gb)")
        if set(decoded) != {checkpoint_name(t) for t in ckpts}:
            raise ProofFormatError("manifest.decoded: expected the checkpoints' names")
        stored = files
        files = {n: v for n, v in files.items() if not n.startswith(CKPT_DIR + "/")}
        files.update(decoded)
    for t in ckpts:
        size = files[checkpoint_name(t)][1]  # v1: the file; v2: what it decodes to
        if size > limits.max_checkpoint_bytes:
            raise LimitExceeded(f"{checkpoint_name(t)} is {size:,} bytes"
                                + (" decoded" if stored is not None else ""),
                                "max_checkpoint_bytes", limits.max_checkpoint_bytes)
    return files, stored, codec


def _check_init_and_digest(raw: dict, spec: TrainingSpec) -> tuple[dict, str, str]:
    """(init, root_digest, created): the init record, and the root digest over the manifest."""
    init = raw.get("init")
    if not isinstance(init, dict) or init.get("kind") not in ("strategy", "parent"):
        raise ProofFormatError("manifest.init: expected {kind: strategy|parent, ...}")
    if init["kind"] == "parent" and not (isinstance(init.get("root_digest"), str)
                                         and _HEX64.match(init["root_digest"])):
        raise ProofFormatError("manifest.init.root_digest: expected 64 hex characters")
    rd = raw.get("root_digest")
    if not isinstance(rd, str) or not _HEX64.match(rd):
        raise ProofFormatError("manifest.root_digest: expected 64 hex characters")
    try:
        actual = root_digest(raw)
    except ValueError as e:
        raise ProofFormatError(f"manifest.json: {e}") from None
    if actual != rd:
        raise IntegrityError("manifest.json was modified: its root digest does not match")
    created = raw.get("created", "")
    if not isinstance(created, str) or not isinstance(raw.get("pol_version", ""), str):
        raise ProofFormatError("manifest.created / pol_version: expected strings")
    if "dataset_size" in raw and (type(raw["dataset_size"]) is not int
                                  or raw["dataset_size"] != spec.data.size):
        raise ProofFormatError("manifest.dataset_size: expected the spec's dataset size")
    if init["kind"] == "strategy" and not isinstance(init.get("strategy"), str):
        raise ProofFormatError("manifest.init.strategy: expected a string")
    return init, rd, created


def _file_entries(files_raw: Any, field: str, limits: Limits
                  ) -> tuple[dict[str, tuple[str, int]], int]:
    if not isinstance(files_raw, dict) or len(files_raw) > limits.max_files:
        raise ProofFormatError(f"manifest.{field}: expected an object of file entries")
    files: dict[str, tuple[str, int]] = {}
    total = 0
    for name, entry in files_raw.items():
        check_name(name)
        if (isinstance(entry, dict) and isinstance(entry.get("size"), int)
                and entry["size"] > limits.max_file_bytes):
            raise ProofFormatError(f"{name} is {entry['size']} bytes, over the reader's per-file "
                                   f"limit of {limits.max_file_bytes} (raise it with --max-proof-gb)")
        if (not isinstance(entry, dict) or set(entry) != {"sha256", "size"}
                or not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"])
                or isinstance(entry["size"], bool) or not isinstance(entry["size"], int)
                or not 0 <= entry["size"] <= limits.max_file_bytes):
            raise ProofFormatError(f"manifest.{field}[{name!r}]: malformed entry")
        total += entry["size"]
        files[name] = (entry["sha256"], entry["size"])
    return files, total


def _parse_codec(c: Any, version: int) -> dict:
    from pol.proof import codec as _codec
    if c is None:
        raise ProofFormatError(f"manifest.codec: missing; a format version {version} proof "
                               "describes its checkpoint codec")
    if (not isinstance(c, dict) or set(c) != {"name", "version", "keyframe_interval"}
            or c["name"] != _codec.CODEC_NAME or type(c["version"]) is not int
            or c["version"] != _codec.CODEC_VERSION or type(c["keyframe_interval"]) is not int
            or not 1 <= c["keyframe_interval"] <= _codec.MAX_KEYFRAME_INTERVAL):
        raise ProofFormatError(f"manifest.codec: expected {{name: {_codec.CODEC_NAME}, version: "
                               f"{_codec.CODEC_VERSION}, keyframe_interval: 1..."
                               f"{_codec.MAX_KEYFRAME_INTERVAL}}}")
    return dict(c)


def npy_descr(dtype: str) -> str:
    """The .npy descr of the dtype named `dtype` (a name of `DTYPES`)."""
    descr = DTYPES[dtype][2]
    if not descr:
        raise ValueError(f"dtype {dtype} has no .npy form")
    return descr


def safetensors_dtype(dtype: str) -> str:
    """The safetensors code of the dtype named `dtype`; ValueError for a dtype a proof cannot
    store. Which dtype a checkpoint entry is stored in (fp16 proofs round floats, keep counters,
    store Adam's moments in bfloat16) is the caller's to compute: see `pol.step`."""
    try:
        return DTYPES[dtype][0]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in a proof") from None


_STEP_SLOT = "@@pol-step-slot-@@@@"  # 20 bytes, replaced by the zero-padded step number


class CheckpointHeader:
    """The safetensors header of a checkpoint whose tensors lie back to back in the order given,
    as (name, stored dtype name, shape). Built once per layout (the JSON of a ResNet costs ~0.3 ms
    holding the GIL); per checkpoint only the fixed-width step field changes."""

    def __init__(self, entries: Iterable[tuple[str, str, Sequence[int]]]) -> None:
        self.tensors: dict[str, dict] = {}
        off = 0
        for name, dtype, shape in entries:
            code = safetensors_dtype(dtype)
            n = SAFETENSORS_ITEMSIZE[code]
            for d in shape:
                n *= int(d)
            self.tensors[name] = {"dtype": code, "shape": [int(d) for d in shape],
                                  "data_offsets": [off, off + n]}
            off += n
        self.data_size = off
        self._template: bytes | None = None

    def bytes(self, step: int) -> bytes:
        """The header of checkpoint `step`: 8-byte length, JSON padded with spaces to 8 bytes."""
        if self._template is None:
            h = json.dumps({"__metadata__": {"format": FORMAT_NAME, "step": _STEP_SLOT},
                            **self.tensors}, separators=(",", ":")).encode()
            h += b" " * (-len(h) % 8)
            self._template = len(h).to_bytes(8, "little") + h
        return self._template.replace(_STEP_SLOT.encode(), f"{step:020d}".encode(), 1)


def __getattr__(name: str) -> Any:
    """`storage_dtype(name, tensor, precision)` (a torch dtype) moved to `pol.step` (the optimizer
    table decides which entries an fp16 proof stores in which dtype); `fmt.storage_dtype` keeps
    working for its callers, and importing this module still imports no torch."""
    if name == "storage_dtype":
        from pol.step.state import storage_dtype
        return storage_dtype
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
