"""Hashing throughput of data read on demand (issue 12): a nanoGPT-style uint16 token file
(`pol.datasets.TokenFile`) and a CIFAR-shaped uint8 memmap behind a torch Dataset, each hashed into
per-sample leaves cold (no leaf cache) and cached (leaves read back from the disk cache).

    python benchmarks/bench_data_hashing.py --mb 200 [--workers 2] [--dir /tmp/polbench]

MB/s is over the file's bytes. "cold" means the leaves are not cached; the file itself is in the
OS page cache (it was just written). The token file's sha256 (the spec's digest, also the cache
key) is timed separately: the verifier computes it on every run, cached or not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch


class CifarMemmap(torch.utils.data.Dataset):
    """uint8 [N, 32, 32, 3] images and int64 labels in two memmaps; names its content by the
    files' digests (the leaves are then cached on disk)."""

    def __init__(self, images: str, labels: str, key: str) -> None:
        self.x = np.load(images, mmap_mode="r")
        self.y = np.load(labels, mmap_mode="r")
        self.pol_content_key = key

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    from pol.datasets import LazyDataset, TokenFile, TorchDatasetSource
    from pol.proof import hashing
    from pol.util import sha256_file

    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--cifar-samples", type=int, default=None,
                    help="CIFAR-shaped samples (default: --mb worth)")
    ap.add_argument("--no-tokens", action="store_true")
    a = ap.parse_args()
    work = a.dir or tempfile.mkdtemp(prefix="pol-hash-")
    os.makedirs(work, exist_ok=True)
    os.environ["POL_CACHE_DIR"] = os.path.join(work, "cache")
    rng = np.random.default_rng(0)
    nbytes = a.mb * 2**20

    src = []
    if not a.no_tokens:
        tok = os.path.join(work, "tokens.bin")
        rng.integers(0, 50257, size=nbytes // 2, dtype=np.uint16).tofile(tok)
        _, t_sha = _timed(lambda: sha256_file(tok))
        print(f"sha256 of the token file: {a.mb / t_sha:.0f} MB/s ({t_sha:.2f} s)")
        tf = TokenFile(tok, a.block)
        src.append(("tokens uint16, block %d (%d windows)" % (a.block, len(tf)), tf, nbytes))

    n = a.cifar_samples or nbytes // 3072
    imgs, labs = os.path.join(work, "x.npy"), os.path.join(work, "y.npy")
    x = np.lib.format.open_memmap(imgs, mode="w+", dtype=np.uint8, shape=(n, 32, 32, 3))
    for i in range(0, n, 65536):  # in chunks: never the whole array in memory
        x[i:i + 65536] = rng.integers(0, 256, size=x[i:i + 65536].shape, dtype=np.uint8)
    x.flush()
    del x
    np.save(labs, rng.integers(0, 10, size=n).astype(np.int64))
    (key, t_key) = _timed(lambda: sha256_file(imgs)[0] + sha256_file(labs)[0])
    print(f"sha256 of the CIFAR-shaped files (the Dataset's content key): "
          f"{n * 3072 / 2**20 / t_key:.0f} MB/s ({t_key:.2f} s)")
    src.append(("CIFAR-shaped uint8 torch Dataset (%d samples)" % n,
                TorchDatasetSource(CifarMemmap(imgs, labs, key)), n * 3072))

    for name, s, size in src:
        hashing._cache.clear()
        cold, t_cold = _timed(lambda: hashing.source_leaves(s, workers=a.workers))
        hashing._cache.clear()
        warm, t_warm = _timed(lambda: hashing.source_leaves(s, workers=a.workers))
        assert np.array_equal(cold, warm)
        mb = size / 2**20
        print(f"{name}: cold {mb / t_cold:.0f} MB/s ({t_cold:.2f} s), cached "
              f"{mb / t_warm:.0f} MB/s ({t_warm:.3f} s), workers={a.workers}")
        _, t1 = _timed(lambda: hashing.stream_leaves(s, workers=1))
        print(f"  one thread, cold: {mb / t1:.0f} MB/s ({t1:.2f} s)")
        ds = LazyDataset(s)
        assert np.array_equal(hashing.sample_leaves(ds.x, ds.y), cold)


if __name__ == "__main__":
    main()
