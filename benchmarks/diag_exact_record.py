"""Where an exact-mode recording's time goes outside the step (session 10: the 114M GPT's 200
exact steps took 93.5 s in `pol train`'s path while its step alone times 167 ms): the
recording run of `train_spec` with timers around the rounding log's hand-over (in flight,
collected, taken, put), the writer thread's chunk encoding and checkpoint work, and a cProfile
of the training thread.

    python benchmarks/diag_exact_record.py --device cuda --gpt-layers 16 --gpt-heads 12 \
        --gpt-embd 768 --gpt-block 256 --gpt-steps 60 --k 20
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_exact import add_task_args, task_spec  # noqa: E402

from pol.proof import roundlog, writer  # noqa: E402
from pol.proof.reader import open_proof  # noqa: E402
from pol.prover.trainer import train_spec  # noqa: E402
from pol.step import exact  # noqa: E402
from pol.spec import StepSpec  # noqa: E402
from pol.registry import resolve_device  # noqa: E402

TIMES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])


def timed(owner, name: str, label: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def w(*a, **kw):
        t0 = time.perf_counter()
        try:
            return f(*a, **kw)
        finally:
            key = f"{label} [{threading.current_thread().name}]"
            TIMES[key][0] += time.perf_counter() - t0
            TIMES[key][1] += 1
    setattr(owner, name, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--fp32", action="store_true", help="a float32 run first, for comparison")
    ap.add_argument("--json", default=None)
    add_task_args(ap, gpt_steps=60)
    a = ap.parse_args()
    device = resolve_device(a.device)
    spec, train, _ = task_spec("gpt", a, device)
    tmp = Path(tempfile.mkdtemp(prefix="pol-diag-rec-"))
    out = {}
    try:
        # untimed warm-up of both modes (a process's CUDA context, kernels)

        for m, st in (("fp32", StepSpec()), ("exact", StepSpec(exact=True))):
            if a.fp32 or m == "exact":
                r = train_spec(spec.with_(step=st), train, None, tmp / m, device=device,
                               durable=False, overwrite=True)
                out[f"{m}_warm_s"] = r.train_seconds
        for owner, name, label in [
                (exact._InFlight, "__init__", "in flight (compact, copy)"),
                (exact._InFlight, "rows", "in flight -> rows"),
                (exact.RoundingLog, "take", "take"),
                (exact.RoundingLog, "record", "record"),
                (writer.ProofWriter, "put_log", "put_log"),
                (writer.ProofWriter, "put", "put checkpoint"),
                (writer.ProofWriter, "_log_chunk", "log chunk (validate+encode)"),
                (roundlog, "encode_chunk", "encode_chunk"),
                (roundlog, "validate", "validate")]:
            if hasattr(owner, name):
                timed(owner, name, label)
        prof = cProfile.Profile()
        prof.enable()
        r = train_spec(spec.with_(step=StepSpec(exact=True)), train, None, tmp / "exact",
                       device=device, durable=False, overwrite=True)
        prof.disable()
        out["exact_s"] = r.train_seconds
        out["steps"] = r.total_steps
        out["timers"] = {k: {"s": round(v[0], 3), "calls": v[1]} for k, v in
                         sorted(TIMES.items(), key=lambda kv: -kv[1][0])}
        p = open_proof(tmp / "exact")
        out["log_rows"] = int(len(p.roundlog))
        out["rows_per_step"] = len(p.roundlog) / r.total_steps
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
        out["profile"] = s.getvalue()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        out["profile_tottime"] = s.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prof_text = out.pop("profile") + out.pop("profile_tottime")
    print(json.dumps(out, indent=1))
    print(prof_text)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
        Path(a.json).with_suffix(".prof.txt").write_text(prof_text)


if __name__ == "__main__":
    main()
