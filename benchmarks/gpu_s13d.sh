#!/usr/bin/env bash
# Session 13: the 114M GPT's top-Q after a top-Q that picks every segment (here 2 per epoch,
# Q = 1 plus 1 random) replays them as the pass reads them, as --all does (s13b: top-Q replay
# 1.094, its first segment waiting for its rounding log); in-process rounds only (no pol verify
# processes: s13b has them). About 5 min of device time.
#   OUT=gpu-out bash benchmarks/gpu_s13d.sh
. "$(dirname "$0")/gpu_lib.sh"
T=420 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --no-cli --init-mparams 1 --budget-s 400 --work /tmp/bvs-gpt \
    --out "$OUT/res/gpt"
finish
