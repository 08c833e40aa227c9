#!/usr/bin/env bash
# Prepared in session 11 (not run: its device time was spent): the 114M GPT's issue 13 figures
# with the rounding log read as narrow columns (`Log.columns`, 15 bytes a row where int64 rows
# took 32; s11c held two segments of ~69 M rows as int64, RSS +8.9 GB), the verifier warmed up
# by an untimed verify --all as bench_verify_speed.py now does (a longer first phase: budget 420 s).
#   OUT=gpu-out bash benchmarks/gpu_s11f.sh
. "$(dirname "$0")/gpu_lib.sh"
T=450 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --cli-repeats 1 --budget-s 420 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
finish
