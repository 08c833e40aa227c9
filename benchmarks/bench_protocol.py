"""Throughput of the protocol layer: seal/open vs a plain file copy, and ledger append/verify rates.

Usage::

    python benchmarks/bench_protocol.py [--size-mb 100] [--entries 10000] [--repeat 3] [--workdir DIR]

Seal/open rates are "proof bytes per second" (payload, not file size) with a
warm page cache, so they measure CPU cost (archive + SHA-256 + AES-GCM +
Python) rather than the disk.  The baseline copies the same files with
``shutil.copyfile`` (kernel copy, no crypto).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pol.crypto import hpke
from pol.crypto.archive import pack
from pol.crypto.ledger import Ledger
from pol.crypto.seal import open_sealed, seal


def make_fake_proof(root: Path, size_mb: int) -> int:
    """manifest.json + indices.npy + a few checkpoint files of random bytes; returns total bytes."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"format": "fake", "root_digest": "ab" * 32}))
    (root / "indices.npy").write_bytes(os.urandom(1024 * 1024))
    remaining = size_mb * 1024 * 1024 - 1024 * 1024
    n_ckpt = 8
    block = os.urandom(1024 * 1024)
    for i in range(n_ckpt):
        size = remaining // (n_ckpt - i)
        with open(root / "checkpoints" / f"step_{(i + 1) * 10:09d}.safetensors", "wb") as fh:
            left = size
            while left:
                n = min(left, len(block))
                fh.write(block[:n])
                left -= n
        remaining -= size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(fn, repeat: int, cleanup=None) -> list[float]:
    """Wall times of ``fn``; ``cleanup`` (untimed) removes its output between runs."""
    out = []
    for _ in range(repeat):
        if cleanup is not None:
            cleanup()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


class _Null:
    def write(self, data) -> None:
        pass


def bench_seal(work: Path, size_mb: int, repeat: int) -> None:
    proof = work / "proof"
    total = make_fake_proof(proof, size_mb)
    mb = total / 1e6
    prover, verifier = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    files = [p for p in proof.rglob("*") if p.is_file()]

    def copy_tree() -> None:
        dst = work / "copy"
        for p in files:
            target = dst / p.relative_to(proof)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)

    def do_seal() -> None:
        seal(proof, verifier.public_key(), prover, work / "p.sealed")

    def do_open() -> None:
        open_sealed(work / "p.sealed", verifier, work / "opened", prover.public_key())

    def rm(path: Path):
        return lambda: shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    copy_tree()  # warm the page cache
    t_copy = timed(copy_tree, repeat, rm(work / "copy"))
    t_pack = timed(lambda: pack(proof, _Null()), repeat)
    t_seal = timed(do_seal, repeat, rm(work / "p.sealed"))
    t_open = timed(do_open, repeat, rm(work / "opened"))
    sealed_size = (work / "p.sealed").stat().st_size

    print(f"fake proof: {len(files)} files, {mb:.1f} MB; sealed file {sealed_size / 1e6:.1f} MB "
          f"(+{(sealed_size - total) / 1e3:.1f} kB); HPKE backend: "
          f"{'cryptography' if hpke.HAVE_LIBRARY_HPKE else 'builtin'}; repeat={repeat}, median times")
    rows = [
        ("shutil.copyfile (baseline)", t_copy),
        ("pack only (no crypto, no write)", t_pack),
        ("seal (pack+sign+HPKE+AES-GCM+write+fsync)", t_seal),
        ("open (verify+decrypt+unpack+write)", t_open),
    ]
    base = statistics.median(t_copy)
    for name, ts in rows:
        med = statistics.median(ts)
        print(f"  {name:<44} {med:7.3f} s  {mb / med:8.1f} MB/s  ({med / base:4.1f}x copy time)")


def bench_ledger(work: Path, n: int) -> None:
    key = Ed25519PrivateKey.generate()
    print(f"ledger: {n} entries, payload like a 'proof' publication")
    for sync in ("FULL", "NORMAL"):
        path = work / f"ledger-{sync}.db"
        with Ledger(path, synchronous=sync) as led:
            t = time.perf_counter()
            for i in range(n):
                led.append("proof", {"root_digest": f"{i:064x}", "sealed_file_sha256": f"{i * 7:064x}"}, key)
            t_app = time.perf_counter() - t
            t = time.perf_counter()
            report = led.verify()
            t_ver = time.perf_counter() - t
            assert report.ok and report.entries == n
        print(f"  synchronous={sync:<6} append {n / t_app:8.0f} entries/s ({t_app:6.2f} s)   "
              f"verify {n / t_ver:8.0f} entries/s ({t_ver:5.2f} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="Where to put temporary files (default: a temp dir).")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pol-bench-", dir=args.workdir))
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workdir {work}")
        bench_seal(work, args.size_mb, args.repeat)
        bench_ledger(work, args.entries)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
