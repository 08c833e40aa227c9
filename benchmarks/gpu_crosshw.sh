#!/usr/bin/env bash
# Session 2, GPU call B: GPU→CPU reproduction error after the fix that draws augmentation on the
# CPU (spec.augment_rng), and the calibrated-δ security picture (bench_crosshw). Writes to $OUT.
#   OUT=gpu-out bash benchmarks/gpu_crosshw.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 30 | tee -a "$OUT/log.txt"; }
T=280 run python benchmarks/bench_core.py --task synthetic-resnet20 --device cuda --epochs 2 \
    --n-train 10000 --ks 1,10,S --cross-device cpu --json "$OUT/core_cuda_xcpu.json"
T=280 run python benchmarks/bench_crosshw.py --n-train 5000 --epochs 2 --k 10 --json "$OUT/crosshw_k10.json"
echo done >> "$OUT/log.txt"
