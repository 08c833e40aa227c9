#!/usr/bin/env bash
# Prepared in session 12: the 114M GPT's issue 13 figures with top-Q's guesses (each epoch's
# first pick's rounding log decoded while its checkpoints are read) and its remaining replays
# announced at the pass's end (s11f: top-Q replay 1.136, its segments waiting for ~69 M log rows
# each), plus the pol verify processes. About 7.5 min of device time: one call of its own.
#   OUT=gpu-out bash benchmarks/gpu_s13b.sh
. "$(dirname "$0")/gpu_lib.sh"
T=560 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --cli-repeats 1 --budget-s 520 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
finish
