"""Opening an exact-mode proof's rounding log: version 2 (decoded and validated whole when the
proof is opened) against version 3 (chunk headers at open, a segment's chunks when it is
replayed), on a synthetic log of 10 M rows (100 steps, two rounding points, chunks of 2^19 rows
as the recorder hands them to the writer). Prints the open's seconds, one 10-step segment's as
int64 rows (`Log.between`) and as the columns a replay reads (`Log.columns`, 15 bytes a row),
and the memory each holds.

    python benchmarks/bench_log_open.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from pol.proof import roundlog


def synthetic(steps: int, per_step: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = np.zeros((steps * per_step, 4), dtype=np.int64)
    half = per_step // 2
    rows[:, 0] = np.repeat(np.arange(steps), per_step)
    rows[:, 1] = np.tile(np.repeat([0, 2], half), steps)
    rows[:, 2] = np.tile(np.arange(half) * 37, 2 * steps)
    rows[:, 3] = rng.integers(0, 2, len(rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rows-per-step", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rows = synthetic(a.steps, a.rows_per_step)
    piece = 1 << 19
    for version in (2, 3):
        data = roundlog.header(len(rows), version) + b"".join(
            roundlog.encode_chunk(rows[i:i + piece], version) for i in range(0, len(rows), piece))
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            log = roundlog.Log(data, "bench", a.steps, 1 << 40)
            t1 = time.perf_counter()
            seg = log.between(a.steps * 4 // 10, a.steps // 2)
            t2 = time.perf_counter()
            cols = log.columns(a.steps * 4 // 10, a.steps // 2)  # what a replay reads
            t3 = time.perf_counter()
            held = log._rows.nbytes if log._rows is not None else seg.nbytes
            print(f"version {version}: open {t1 - t0:.3f} s, a {a.steps // 10}-step segment "
                  f"{t2 - t1:.3f} s ({len(seg):,} rows), rows held {held / 2**20:.0f} MiB; "
                  f"as the replay's columns {t3 - t2:.3f} s, "
                  f"{sum(c.nbytes for c in cols) / 2**20:.0f} MiB")
            assert np.array_equal(seg, rows[np.searchsorted(rows[:, 0], a.steps * 4 // 10):
                                            np.searchsorted(rows[:, 0], a.steps // 2)])


if __name__ == "__main__":
    main()
