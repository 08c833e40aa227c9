#!/usr/bin/env bash
# Session 5, second GPU-host call: (A) exact mode: which gradient values differ between the GPU and
# the CPU beyond the window, and what a per-tensor flush would leave; (B) the distributed job with
# untrusted workers sharing the GPU (ResNet-20, CIFAR-shaped set); (C) the paper's Table 1 / 5 and
# Fig. 1 / 2 at CIFAR scale (ResNet-20, 50,000 CIFAR-shaped synthetic samples, batch 128), 1 epoch.
#   OUT=gpu-out bash benchmarks/gpu_s5b.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 60 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
T=60 run python benchmarks/diag_exact_devices.py --tasks resnet20 --variants boundary --json "$OUT/diag_exact_flush.json"
T=250 run python benchmarks/bench_cluster_gpu.py --out "$OUT/cluster"
T=220 run python -m pol experiment table1,table5,fig1,fig2 --size paper --device cuda --epochs 1 \
    --out "$OUT/experiments"
echo done >> "$OUT/log.txt"
