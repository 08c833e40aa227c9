#!/usr/bin/env bash
# Session 6, profile of ResNet-20's verification on the H200 (issue 13): where the replay's 6-8%
# over training and the wall time beyond the steps go, now that training runs at ~14 ms/step.
#   OUT=gpu-out bash benchmarks/gpu_s6d.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 40 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
T=150 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 --write-cifar /tmp/cifar10-synth \
    --write-cifar-n 25000 --epochs 1 --k 100 --device cuda --repeats 1 --no-cli --torch-profile \
    --budget-s 120 --work /tmp/bvs-r20 --out "$OUT/res/r20"
cp "$OUT/log.txt" "$OUT/res/log.txt"
tar -czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
echo done >> "$OUT/log.txt"
