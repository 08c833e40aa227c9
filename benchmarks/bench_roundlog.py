"""The rounding log's cost at the end of an exact-mode run, chunked (version 2, what pol writes)
against one frame encoded at the close (version 1, before): a GPT trained in exact mode on this
machine's CPU; its log's rows, the journal's bytes, the close's time, and the close's time had the
same rows been journaled raw and encoded at the end.

    python benchmarks/bench_roundlog.py --gpt-layers 4 --gpt-embd 256 --gpt-steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_exact import add_task_args, task_spec  # noqa: E402

from pol.proof import format as fmt  # noqa: E402
from pol.proof import roundlog  # noqa: E402
from pol.proof import writer as writer_mod  # noqa: E402
from pol.proof.reader import open_proof  # noqa: E402
from pol.prover.trainer import train_spec  # noqa: E402
from pol.spec import StepSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=10)
    add_task_args(ap, gpt_embd=256, gpt_block=64, gpt_batch=8, gpt_steps=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    spec, train, _ = task_spec("gpt", args, torch.device("cpu"))
    spec = spec.with_(step=StepSpec(exact=True))
    close = {}
    real = writer_mod.ProofWriter._save_roundlog

    def timed(self, chunks):
        t0 = time.perf_counter()
        real(self, chunks)
        close["seconds"] = time.perf_counter() - t0
        close["journal_bytes"] = len(chunks)
    writer_mod.ProofWriter._save_roundlog = timed
    with tempfile.TemporaryDirectory() as tmp:
        r = train_spec(spec, train, None, Path(tmp) / "p", device=torch.device("cpu"),
                       durable=False, overwrite=True)
        p = open_proof(Path(tmp) / "p")
        rows, file_bytes = p.roundlog, p.manifest.files[fmt.ROUNDLOG][1]
    writer_mod.ProofWriter._save_roundlog = real
    t0 = time.perf_counter()  # the same rows the version 1 way: validated and encoded at the end
    roundlog.validate(rows, fmt.ROUNDLOG, r.spec.epochs * 10 ** 6)
    v1 = roundlog.encode(rows, version=1)
    old = time.perf_counter() - t0
    out = {"rows": int(len(rows)), "steps": p.manifest.total_steps, "file_bytes": file_bytes,
           "v1_file_bytes": len(v1), "journal_bytes": close["journal_bytes"],
           "raw_journal_bytes": int(len(rows)) * 32, "close_s": close["seconds"],
           "v1_close_s": old, "train_seconds": r.train_seconds}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
