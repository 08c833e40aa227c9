"""Data commitments: per-sample leaf hashes and Merkle roots.

A sample's leaf is SHA-256 over its raw bytes plus dtype, shape and label, with a domain prefix, so
that a changed pixel, a reinterpreted dtype or a relabelled sample all change the leaf (the reference
code hashed `str(array)`, which NumPy abbreviates). A batch's hash is the Merkle root of its samples'
leaves in batch order; the dataset's commitment is the Merkle root of all leaves in index order.
Merkle trees (rather than a flat hash) let a prover later reveal single samples with an inclusion
proof (lazy verification).

Leaves are computed once per dataset and cached by the dataset's content digest, so the training
step never hashes data: a batch hash is 2·B SHA-256 calls over 32-byte leaves, done off the step path.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

LEAF_PREFIX = b"pol.sample.v1\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"pol.empty.v1").digest()

_cache: dict[str, np.ndarray] = {}
_cache_lock = threading.Lock()


def content_digest(x: np.ndarray, y: np.ndarray) -> str:
    """Digest of a whole dataset's bytes (cache key; not part of the proof format)."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def sample_leaves(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample leaf hashes, shape [N, 32] uint8. Cached by content."""
    key = content_digest(x, y)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    x = np.ascontiguousarray(x)
    labels = np.ascontiguousarray(y.astype("<i8", copy=False))
    header = LEAF_PREFIX + f"{x.dtype.str}|{list(x.shape[1:])}|".encode()
    out = np.empty((len(x), 32), dtype=np.uint8)
    base = hashlib.sha256(header)
    for i in range(len(x)):
        h = base.copy()
        h.update(memoryview(x[i]).cast("B"))
        h.update(labels[i].tobytes())
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    out.setflags(write=False)
    with _cache_lock:
        if len(_cache) > 16:
            _cache.clear()
        _cache[key] = out
    return out


def _parent(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + a + b).digest()


def merkle_root(leaves: np.ndarray) -> bytes:
    """Root of a binary Merkle tree; an odd node is promoted unchanged (no duplication, so two
    different leaf lists can never share a root by repeating the last leaf)."""
    level = [bytes(r) for r in np.asarray(leaves, dtype=np.uint8).reshape(-1, 32)]
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        nxt = [_parent(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_path(leaves: np.ndarray, index: int) -> list[tuple[bytes, bool]]:
    """Inclusion proof of leaf `index`: a list of (sibling, sibling_is_left)."""
    level = [bytes(r) for r in np.asarray(leaves, dtype=np.uint8).reshape(-1, 32)]
    if not 0 <= index < len(level):
        raise IndexError(index)
    path: list[tuple[bytes, bool]] = []
    while len(level) > 1:
        sib = index ^ 1
        if sib < len(level):
            path.append((level[sib], sib < index))
        nxt = [_parent(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, index = nxt, index // 2
    return path


def verify_merkle_path(leaf: bytes, path: list[tuple[bytes, bool]], root: bytes) -> bool:
    node = leaf
    for sib, sib_left in path:
        node = _parent(sib, node) if sib_left else _parent(node, sib)
    return node == root


def batch_hashes(leaves: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Merkle root of each row of `indices` (padding −1 ignored), shape [T, 32] uint8."""
    out = np.empty((len(indices), 32), dtype=np.uint8)
    for t, row in enumerate(indices):
        row = row[row >= 0]
        out[t] = np.frombuffer(merkle_root(leaves[row]), dtype=np.uint8)
    return out
