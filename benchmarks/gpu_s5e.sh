#!/usr/bin/env bash
# Session 5, fifth GPU-host call: where exact mode's training time goes (bench_exact --breakdown:
# float32, the same step in float64 without rounding, exact mode, its rounding) for the 25.5M GPT
# and ResNet-20.
#   OUT=gpu-out bash benchmarks/gpu_s5e.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 70 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
T=110 run python benchmarks/bench_exact.py --tasks gpt,resnet20 --device cuda --verify-device cuda \
    --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 --gpt-steps 10 --resnet-steps 20 --repeats 1 \
    --breakdown 10 --json "$OUT/exact_breakdown.json"
echo done >> "$OUT/log.txt"
