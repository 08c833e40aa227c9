#!/usr/bin/env bash
# Prepared in session 10: the 114M GPT's exact training against float32 and bf16 over 200 steps
# at k = 100 on `pol train`'s path (`bench_exact.py`, warm-up runs of 10 steps: s10a's full-length
# warm-ups passed the call's limit), verified on the GPU; s10d measured 176 ms per exact step.
#   OUT=gpu-out bash benchmarks/gpu_s11b.sh
. "$(dirname "$0")/gpu_lib.sh"
T=400 run python benchmarks/bench_exact.py --tasks gpt --device cuda --verify-device cuda \
    --gpt-layers 16 --gpt-heads 12 --gpt-embd 768 --gpt-block 256 --gpt-steps 200 --k 100 \
    --repeats 1 --warmup-steps 10 --json "$OUT/res/exact_gpt114m.json"
finish
