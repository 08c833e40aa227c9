#!/usr/bin/env bash
# Session 9, fifth GPU call: the 25M GPT's exact training over 600 steps at k = 100 (s9c: 1.53x
# over 200 steps, of which ~1 s is the run's fixed cost), verified on the GPU.
#   OUT=gpu-out bash benchmarks/gpu_s9e.sh
. "$(dirname "$0")/gpu_lib.sh"
T=280 run python benchmarks/bench_exact.py --tasks gpt --device cuda --verify-device cuda \
    --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 --gpt-steps 600 --k 100 --repeats 1 \
    --json "$OUT/res/exact_gpt_600.json"
finish
