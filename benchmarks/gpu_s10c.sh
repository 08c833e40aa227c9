#!/usr/bin/env bash
# Session 10: the 114M GPT's exact recording outside its step (diag_exact_record.py: timers on
# the rounding log's hand-over and the writer thread, a cProfile of the training thread), and
# bench_exact at 60 steps, k = 20 (s10a's 200-step run passed its 200 s limit).
#   OUT=gpu-out bash benchmarks/gpu_s10c.sh
. "$(dirname "$0")/gpu_lib.sh"
G="--gpt-layers 16 --gpt-heads 12 --gpt-embd 768 --gpt-block 256"
T=200 run python benchmarks/diag_exact_record.py --device cuda $G --gpt-steps 60 --k 20 --fp32 \
    --json "$OUT/res/diag_record_gpt114m.json"
T=240 run python benchmarks/bench_exact.py --tasks gpt --device cuda --verify-device cuda $G \
    --gpt-steps 60 --k 20 --repeats 1 --json "$OUT/res/exact_gpt114m_60.json"
finish
