#!/usr/bin/env bash
# Session 5, fourth GPU-host call: exact mode with the gradient noise bound (StepSpec.exact_noise,
# default 2^-40), GPU -> CPU for digits-cnn, ResNet-20 at the task's k = 100 (100 steps: one
# segment) and a 25M GPT; CPU -> GPU for digits-cnn and ResNet-20 (20 steps).
#   OUT=gpu-out bash benchmarks/gpu_s5d.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 70 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
T=230 run python benchmarks/bench_exact.py --tasks digits-cnn,gpt,resnet20 --device cuda \
    --verify-device cpu --k 100 --resnet-steps 100 --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 \
    --gpt-steps 20 --repeats 1 --json "$OUT/exact_gpu_to_cpu.json"
T=90 run python benchmarks/bench_exact.py --tasks digits-cnn,resnet20 --device cpu \
    --verify-device cuda --resnet-steps 20 --repeats 1 --json "$OUT/exact_cpu_to_gpu.json"
echo done >> "$OUT/log.txt"
