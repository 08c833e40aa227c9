#!/usr/bin/env bash
# Session 5, first GPU-host call: (A) where exact mode's float64 step differs between the GPU and
# the CPU (diag_exact_devices.py); (B) exact mode re-measured GPU -> CPU after session 4's fixes
# (CPU input preparation, flushed zero gradients), and CPU -> GPU for digits-cnn; (C) the paper's
# Table 1 / 5 and Fig. 1 / 2 at the paper's CIFAR scale (ResNet-20, 50,000 CIFAR-shaped synthetic
# samples, batch 128), 2 epochs.
#   OUT=gpu-out bash benchmarks/gpu_s5a.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 60 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
T=120 run python benchmarks/diag_exact_devices.py --tasks resnet20,gpt --json "$OUT/diag_exact.json"
T=200 run python benchmarks/bench_exact.py --tasks digits-cnn,resnet20,gpt --device cuda \
    --verify-device cpu --resnet-steps 60 --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 \
    --gpt-steps 20 --repeats 1 --json "$OUT/exact_gpu_to_cpu.json"
T=40 run python benchmarks/bench_exact.py --tasks digits-cnn --device cpu --verify-device cuda \
    --repeats 1 --json "$OUT/exact_cpu_to_gpu.json"
T=170 run python -m pol experiment table1,table5,fig1,fig2 --size paper --device cuda --epochs 2 \
    --out "$OUT/experiments"
echo done >> "$OUT/log.txt"
