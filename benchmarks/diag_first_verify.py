"""Where the first verification in a process pays what later ones do not (ResNet-20 on a GPU:
session 11 measured replay --all at 1.15-1.22× training for the first verification in a
process, 1.05 for a later one). Trains a warm-up proof and the measured proof (bench_verify_speed's
training), then runs `verify --all` of the measured proof `--verifies` times in this process,
timing each replayed segment (synchronized) and each CUDA-graph capture, and printing the
graphs' state (`pol.step.graphed.describe`).

    python benchmarks/diag_first_verify.py --task cifar10-resnet20 --write-cifar /tmp/cifar10 \
        --epochs 1 --k 100 --device cuda --json OUT.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_verify_speed as bvs  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    verifies, json_out = 3, None
    if "--verifies" in argv:
        i = argv.index("--verifies")
        verifies = int(argv[i + 1])
        del argv[i:i + 2]
    prof_out, prof_at = None, 2
    if "--profile" in argv:  # cProfile one verification (default the second, a warm one)
        i = argv.index("--profile")
        prof_out = argv[i + 1]
        del argv[i:i + 2]
    if "--profile-verify" in argv:  # which one (1: the first in the process)
        i = argv.index("--profile-verify")
        prof_at = int(argv[i + 1])
        del argv[i:i + 2]
    if "--json" in argv:
        i = argv.index("--json")
        json_out = argv[i + 1]
        del argv[i:i + 2]
    a = bvs.parse(argv + ["--no-verify-warmup"])
    import tempfile

    import torch

    from pol.step import graphed
    from pol.verifier import parallel, verify
    if a.write_cifar:
        a.data = str(bvs.write_cifar10(Path(a.write_cifar), a.write_cifar_n,
                                       max(a.write_cifar_n // 5, 1)))
    a.dataset_params = bvs.dataset_params(a)
    a.model_kw = bvs.model_overrides(a, a.dataset_params)
    work = Path(tempfile.mkdtemp(prefix="pol-diag-first-"))
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    bvs.train(a, work / "warmup")
    tr = bvs.train(a, work / "proof")
    print(f"training: {tr['ms_per_step']:.2f} ms/step", flush=True)
    log: dict = {}
    orig_seg, orig_cap = parallel.replay_segment, graphed.GraphedExactStep.capture

    def seg(ctx, proof, data, leaves, names, a_, b_, *rest, **kw):
        sync()
        t = time.perf_counter()
        out = orig_seg(ctx, proof, data, leaves, names, a_, b_, *rest, **kw)
        sync()
        log["segments"].append((a_, b_, time.perf_counter() - t, t - log["t0"]))
        log["ctx"] = ctx
        return out

    def cap(self, *args, **kw):
        sync()
        t = time.perf_counter()
        out = orig_cap(self, *args, **kw)
        sync()
        log["captures"].append(time.perf_counter() - t)
        return out
    parallel.replay_segment, graphed.GraphedExactStep.capture = seg, cap
    runs = []
    try:
        for v in range(verifies):
            log.update(segments=[], captures=[], ctx=None)
            sync()
            t = log["t0"] = time.perf_counter()
            prof = None
            if prof_out and v + 1 == prof_at:
                import cProfile
                prof = cProfile.Profile()
                prof.enable()
            rep = verify(work / "proof", all_segments=True, device=a.device, data=a.data,
                         entropy=b"diag")
            wall = time.perf_counter() - t
            if prof is not None:
                prof.disable()
                prof.dump_stats(prof_out)
                import pstats
                pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
            assert rep.valid, rep.render()
            steps = sum(b_ - a_ for a_, b_, *_ in log["segments"])
            replay = sum(s for _, _, s, _ in log["segments"])
            starts = [st for *_, st in log["segments"]]
            last_end = starts[-1] + log["segments"][-1][2]
            row = {"verify": v + 1, "wall_s": wall, "replay_s": replay,
                   "replay_ms_per_step": 1000 * replay / steps,
                   "over_training": 1000 * replay / steps / tr["ms_per_step"],
                   "segments_s": [round(s, 4) for _, _, s, _ in log["segments"]],
                   "segment_starts_s": [round(st, 4) for st in starts],
                   "after_last_segment_s": round(wall - last_end, 4),
                   "captures_s": [round(c, 4) for c in log["captures"]],
                   "graphs": graphed.describe(log["ctx"]) if log["ctx"] is not None else None}
            runs.append(row)
            print(json.dumps(row, default=str), flush=True)
    finally:
        parallel.replay_segment, graphed.GraphedExactStep.capture = orig_seg, orig_cap
    if json_out:
        Path(json_out).write_text(json.dumps({"training": tr, "verifies": runs}, indent=1,
                                             default=str))


if __name__ == "__main__":
    main()
