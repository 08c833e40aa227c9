#!/usr/bin/env bash
# Session 10, after s10a found the 114M GPT's exact training past 200 s for 200 steps (float32:
# 17.7 s in session 5): where an exact step of the 114M GPT goes (float32, float64 without
# rounding, exact, and torch.profiler tables of an exact step recorded and replayed).
#   OUT=gpu-out bash benchmarks/gpu_s10b.sh
. "$(dirname "$0")/gpu_lib.sh"
T=300 run python benchmarks/bench_exact.py --tasks gpt --device cuda --verify-device cuda \
    --gpt-layers 16 --gpt-heads 12 --gpt-embd 768 --gpt-block 256 --breakdown 20 --breakdown-only \
    --profile-out "$OUT/res/profile_gpt114m.txt" --json "$OUT/res/breakdown_gpt114m.json"
finish
