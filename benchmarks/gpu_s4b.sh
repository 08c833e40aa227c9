#!/usr/bin/env bash
# Session 4, second GPU-host call: the README path's overhead, block-interleaved (ResNet-20, batch
# 128, deterministic algorithms in every mode, k = 1 and 10, A/A control), with the time spent
# inside pol's calls on the training thread.   OUT=gpu-out bash benchmarks/gpu_s4b.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 40 | tee -a "$OUT/log.txt"; }
T=280 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --blocks 30 --block 50 \
    --ks 1,10 --json "$OUT/user_loop_blocks_resnet20_cuda.json"
echo done >> "$OUT/log.txt"
