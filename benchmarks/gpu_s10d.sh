#!/usr/bin/env bash
# Session 10, after StepSpec.exact_grid (new proofs: the gradient grid 2^8·ν·M, not 16·ν·M):
# the 114M GPT's exact recording again (s10c: 3.1 M log rows per step, 93% gradient-grid rows,
# the writer thread bound the run: exact 28.9 s vs float32 7.9 s for 60 steps), the device
# tests, and issue 13's figures for the 114M GPT on `pol train`'s path (exact, the default).
#   OUT=gpu-out bash benchmarks/gpu_s10d.sh
. "$(dirname "$0")/gpu_lib.sh"
G="--gpt-layers 16 --gpt-heads 12 --gpt-embd 768 --gpt-block 256"
T=60 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_exact_mode.py
T=150 run python benchmarks/diag_exact_record.py --device cuda $G --gpt-steps 60 --k 20 --fp32 \
    --json "$OUT/res/diag_record_gpt114m.json"
T=330 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --cli-repeats 1 --budget-s 300 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
finish
