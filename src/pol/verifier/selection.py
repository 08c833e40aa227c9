"""Which segments a verification replays: the one selection of the verifier.

A segment [ck_i, ck_{i+1}) belongs to the epoch it starts in. Per epoch the selector takes the Q
segments with the largest claimed update d1 (Algorithm 2's top-Q), and under the hardened policy R
more drawn at random from a seed the prover cannot predict (the verifier's entropy mixed with the
proof's root digest); `--all` takes every segment. Three views of that one rule:

- `planned(manifest, ...)`: how many segments and at most how many steps, from the manifest alone
  (the budget check and the worker pool's size, before any checkpoint is read);
- `TopQStream`: the current epoch's top-Q while the checkpoint pass reads the checkpoints, so that
  their replays can start while the two checkpoints are still in memory;
- `choose(...)`: the final list, after the pass (the stream's choices are a subset of it).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pol.proof import format as fmt


def segments_per_epoch(manifest: fmt.Manifest) -> np.ndarray:
    """How many segments start in each epoch, from T, k and S alone (O(epochs), no list of
    checkpoints)."""
    k, S, E = manifest.k, manifest.steps_per_epoch, manifest.epochs
    n_seg = fmt.num_checkpoints(manifest.total_steps, k) - 1
    bounds = np.minimum(n_seg, -(-(np.arange(E + 1, dtype=np.int64) * S) // k))
    return np.diff(bounds)


def planned(manifest: fmt.Manifest, q: int, all_segments: bool,
            random_per_epoch: int = 0) -> tuple[int, int]:
    """(segments, steps at most) that `choose` will replay: every segment with `all_segments`,
    else min(segments in the epoch, q + random_per_epoch) per epoch, each at most k steps."""
    T, k = manifest.total_steps, manifest.k
    if all_segments:
        return fmt.num_checkpoints(T, k) - 1, T
    n = int(np.minimum(segments_per_epoch(manifest), q + random_per_epoch).sum())
    return n, min(T, n * k)


def by_epoch(checkpoints: list[int], S: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i in range(len(checkpoints) - 1):
        out.setdefault(checkpoints[i] // S, []).append(i)
    return out


def random_segments(root_digest: str, epochs: dict[int, list[int]], per_epoch: int,
                    exclude: set[int], entropy: bytes | None = None) -> list[int]:
    """Segments chosen at random per epoch; the prover cannot predict the verifier's entropy."""
    entropy = os.urandom(16) if entropy is None else entropy
    seed = int.from_bytes(hashlib.sha256(entropy + bytes.fromhex(root_digest)).digest()[:8],
                          "little")
    rng = np.random.default_rng(seed)
    out = []
    for e in sorted(epochs):
        pool = [i for i in epochs[e] if i not in exclude]
        if pool:
            out.extend(int(i) for i in rng.choice(pool, size=min(per_epoch, len(pool)),
                                                  replace=False))
    return out


def every_segment_chosen(manifest: fmt.Manifest, q: int, random_per_epoch: int = 0) -> bool:
    """Whether `choose` picks every segment whatever the updates: no epoch holds more segments
    than its Q largest plus its random ones (a short proof, a large Q)."""
    return bool((segments_per_epoch(manifest) <= q + random_per_epoch).all())


def choose(manifest: fmt.Manifest, d1s: list[float], q: int, all_segments: bool,
           random_per_epoch: int = 0, entropy: bytes | None = None) -> list[tuple[int, str]]:
    """The segments to replay, as sorted (segment index, why) pairs: why is "all", "top-q" or
    "random"."""
    ck = manifest.checkpoints
    if all_segments:
        return [(i, "all") for i in range(len(ck) - 1)]
    epochs = by_epoch(ck, manifest.steps_per_epoch)
    chosen = []
    for e in sorted(epochs):
        segs = sorted(epochs[e], key=lambda i: (-d1s[i], i))
        chosen.extend((i, "top-q") for i in segs[:q])
    if random_per_epoch:
        taken = {i for i, _ in chosen}
        chosen.extend((i, "random") for i in random_segments(
            manifest.root_digest, epochs, random_per_epoch, taken, entropy))
    return sorted(chosen)


@dataclass
class TopQStream:
    """The Q largest segments of the epoch being read, with their two checkpoints (2·Q in memory).
    `add` returns the previous epoch's picks when a new epoch starts; `flush` the last ones. The
    same order and tie-break as `choose` (largest d1 first, then the lower index)."""

    q: int
    steps_per_epoch: int
    checkpoints: list[int]
    _cand: list[tuple[float, int, Any, Any]] = field(default_factory=list)

    def add(self, i: int, d1: float, start: Any, end: Any) -> list[tuple[int, Any, Any]]:
        done = []
        S, ck = self.steps_per_epoch, self.checkpoints
        if self._cand and ck[self._cand[0][1]] // S != ck[i] // S:
            done = self.flush()
        self._cand.append((-d1, i, start, end))
        self._cand.sort(key=lambda c: (c[0], c[1]))
        del self._cand[self.q:]
        return done

    def leading(self) -> int | None:
        """The segment `flush` would return first now (the lowest index among the picks)."""
        return min((c[1] for c in self._cand), default=None)

    def flush(self) -> list[tuple[int, Any, Any]]:
        out = [(i, a, b) for _, i, a, b in sorted(self._cand, key=lambda c: c[1])]
        self._cand.clear()
        return out
