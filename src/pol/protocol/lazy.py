"""Lazy verification with private data (paper §V-D1/D2).

1. The verifier runs the checkpoint pass without the data, picks the segments it will replay
   (top-Q per epoch) and writes a request: the union of those segments' batch indices, the proof's
   root digest and a fresh nonce (`pol verify DIR --request-data REQ.json`).
2. The prover reveals only those samples, each with its Merkle inclusion path against the
   committed dataset root (`pol reveal`): an .npz of plain arrays, no pickle.
3. The verifier finishes with the revealed samples only (`pol verify DIR --reveal REVEAL.npz`): each
   sample's leaf (raw bytes + dtype + shape + label) must reach spec.data.root by its path, at its
   own index (the path's left/right pattern is recomputed from the index and the dataset size).

Eq. (4) predicts the fraction of the dataset revealed: 1 − (1 − Q·k/S)^E.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np

from pol.errors import ConfigError, ProofFormatError
from pol.proof.hashing import _parent, sample_leaves
from pol.util import atomic_write, loads_strict

REQUEST_FORMAT = "pol-data-request/1"
REVEAL_FORMAT = "pol-reveal/1"


def eq4_fraction(q: int, k: int, S: int, E: int) -> float:
    p = min(1.0, q * k / S)
    return 1.0 - (1.0 - p) ** E


def needed_indices(proof, chosen: list[tuple[int, str]]) -> np.ndarray:
    ck = proof.manifest.checkpoints
    parts = [proof.batch(t) for i, _ in chosen for t in range(ck[i], ck[i + 1])]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts)).astype(np.int64)


def write_request(path: str, proof, chosen, idx: np.ndarray, q: int,
                  nonce: str | None = None) -> dict:
    m = proof.manifest
    n = m.spec.data.size
    req = {"format": REQUEST_FORMAT, "root_digest": m.root_digest,
           "nonce": nonce or secrets.token_hex(16), "data_root": m.spec.data.root,
           "dataset_size": n, "segments": [[m.checkpoints[i], m.checkpoints[i + 1]]
                                           for i, _ in chosen],
           "indices": [int(i) for i in idx], "fraction": len(idx) / n,
           "q": q, "eq4_fraction": eq4_fraction(q, m.k, m.steps_per_epoch, m.epochs)}
    atomic_write(Path(path), json.dumps(req).encode())
    return req


def read_request(path: str) -> dict:
    try:
        req = loads_strict(Path(path).read_bytes(), str(path), error=ValueError)
    except FileNotFoundError:
        raise ConfigError(f"--request {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--request {path}: not a data request ({e})") from None
    if (not isinstance(req, dict) or req.get("format") != REQUEST_FORMAT
            or not isinstance(req.get("indices"), list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in req["indices"])
            or not isinstance(req.get("root_digest"), str)):
        raise ConfigError(f"--request {path}: not a pol data request")
    return req


# ------------------------------------------------------------------------------- Merkle paths

def _levels(leaves: np.ndarray) -> list[list[bytes]]:
    level = [bytes(r) for r in np.asarray(leaves, dtype=np.uint8).reshape(-1, 32)]
    levels = [level]
    while len(level) > 1:
        nxt = [_parent(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    return levels


def path_shape(index: int, n: int) -> list[bool]:
    """The sibling-is-left flags of leaf `index`'s path in a tree of n leaves (odd nodes are
    promoted, so the shape depends on n as well as on the index)."""
    out = []
    size = n
    while size > 1:
        sib = index ^ 1
        if sib < size:
            out.append(sib < index)
        size = (size + 1) // 2
        index //= 2
    return out


def _path_from_levels(levels, index: int) -> list[tuple[bytes, bool]]:
    path = []
    for level in levels[:-1]:
        sib = index ^ 1
        if sib < len(level):
            path.append((level[sib], sib < index))
        index //= 2
    return path


def make_reveal(request: dict, proof_path: str, data_path: str, out: str) -> dict:
    """Prover side: write the requested samples with their inclusion paths."""
    from pol.proof.reader import read_manifest
    m = read_manifest(proof_path)
    if request["root_digest"] != m.root_digest:
        raise ConfigError("the request is for another proof (root digest differs)")
    if not os.path.isfile(data_path):
        raise ConfigError(f"--data {data_path}: no such file")
    try:
        with np.load(data_path, allow_pickle=False) as z:
            x, y = z["x"], z["y"].astype(np.int64)
    except (KeyError, ValueError, OSError) as e:
        raise ConfigError(f"--data {data_path}: expected an .npz with arrays x and y ({e})") from None
    leaves = sample_leaves(x, y)
    levels = _levels(leaves)
    if len(x) != m.spec.data.size or levels[-1][0].hex() != m.spec.data.root:
        raise ConfigError("the data given is not the dataset this proof committed to")
    idx = np.asarray(request["indices"], dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(x)):
        raise ConfigError("the request names indices outside the dataset")
    depth = max(1, len(levels) - 1)
    sibs = np.zeros((len(idx), depth, 32), dtype=np.uint8)
    left = np.zeros((len(idx), depth), dtype=bool)
    plen = np.zeros(len(idx), dtype=np.int32)
    for j, i in enumerate(idx):
        p = _path_from_levels(levels, int(i))
        plen[j] = len(p)
        for d, (s, is_left) in enumerate(p):
            sibs[j, d] = np.frombuffer(s, dtype=np.uint8)
            left[j, d] = is_left
    with open(out, "wb") as f:
        np.savez(f, format=np.array(REVEAL_FORMAT), root_digest=np.array(m.root_digest),
                 nonce=np.array(str(request.get("nonce", ""))), dataset_size=np.int64(len(x)),
                 indices=idx, x=np.ascontiguousarray(x[idx]), y=y[idx], path_siblings=sibs,
                 path_left=left, path_len=plen)
    return {"samples": int(len(idx)), "fraction": len(idx) / len(x), "out": out}


class SparseArray:
    """Rows of a dataset known only at revealed indices; indexing anything else raises."""

    def __init__(self, indices: np.ndarray, rows: np.ndarray, n: int):
        order = np.argsort(indices)
        self.indices = indices[order]
        self.rows = rows[order]
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.searchsorted(self.indices, idx)
        pos = np.clip(pos, 0, max(0, len(self.indices) - 1))
        if len(self.indices) == 0 or (self.indices[pos] != idx).any():
            raise ProofFormatError("the replay needs a sample that was not revealed")
        return self.rows[pos]


class RevealedData:
    def __init__(self, indices, x, y, n):
        self.x = SparseArray(indices, x, n)
        self.y = SparseArray(indices, y, n)
        self.n = n

    def __len__(self) -> int:
        return self.n


def load_reveal(path: str, manifest) -> tuple[RevealedData, np.ndarray, np.ndarray, list[str]]:
    """(data, leaves [N, 32] with zeros where not revealed, revealed indices, problems)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--reveal {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise ProofFormatError(f"--reveal {path}: not a readable .npz ({e})") from None
    need = {"format", "root_digest", "nonce", "dataset_size", "indices", "x", "y",
            "path_siblings", "path_left", "path_len"}
    if not need <= set(arrs) or str(arrs["format"]) != REVEAL_FORMAT:
        raise ProofFormatError(f"--reveal {path}: not a pol reveal file")
    spec = manifest.spec
    n = spec.data.size
    idx, x, y = arrs["indices"], arrs["x"], arrs["y"]
    sibs, left, plen = arrs["path_siblings"], arrs["path_left"], arrs["path_len"]
    M = len(idx)
    if (idx.dtype.kind != "i" or y.dtype.kind not in "iu" or len(x) != M or len(y) != M
            or sibs.ndim != 3 or sibs.shape[0] != M or sibs.shape[2] != 32
            or sibs.dtype != np.uint8 or left.shape != sibs.shape[:2] or plen.shape != (M,)):
        raise ProofFormatError(f"--reveal {path}: arrays of inconsistent shapes or types")
    problems = []
    if str(arrs["root_digest"]) != manifest.root_digest:
        problems.append("the reveal is for another proof (root digest differs)")
    if int(arrs["dataset_size"]) != n:
        problems.append(f"the reveal claims {int(arrs['dataset_size'])} samples, the proof "
                        f"committed to {n}")
    idx = idx.astype(np.int64)
    if M and (idx.min() < 0 or idx.max() >= n):
        raise ProofFormatError(f"--reveal {path}: an index is outside the dataset")
    if len(np.unique(idx)) != M:
        problems.append("the reveal repeats an index")
    root = bytes.fromhex(spec.data.root)
    leaves_m = sample_leaves(x, y.astype(np.int64)) if M else np.zeros((0, 32), np.uint8)
    bad = []
    for j in range(M):
        L = int(plen[j])
        if not 0 <= L <= sibs.shape[1]:
            bad.append(int(idx[j]))
            continue
        flags = [bool(b) for b in left[j, :L]]
        if flags != path_shape(int(idx[j]), n):
            bad.append(int(idx[j]))
            continue
        node = bytes(leaves_m[j])
        for d in range(L):
            s = bytes(sibs[j, d])
            node = _parent(s, node) if flags[d] else _parent(node, s)
        if node != root:
            bad.append(int(idx[j]))
    if bad:
        problems.append(f"{len(bad)} revealed sample(s) do not verify against the committed "
                        f"dataset root (first: index {bad[0]})")
    leaves = np.zeros((n, 32), dtype=np.uint8)
    if M:
        leaves[idx] = leaves_m
    return RevealedData(idx, x, y.astype(np.int64), n), leaves, idx, problems
