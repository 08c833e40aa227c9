#!/usr/bin/env bash
# Session 6, second GPU-host call: exact mode's cost after the host waits found by the first call
# were removed, with torch.profiler tables of its steps.
#   OUT=gpu-out bash benchmarks/gpu_s6b.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 30 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
T=150 run python benchmarks/bench_exact.py --tasks gpt,resnet20 --device cuda --verify-device cuda \
    --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 --gpt-steps 10 --resnet-steps 20 --repeats 1 \
    --breakdown 10 --profile-out "$OUT/res/exact_profile.txt" --json "$OUT/res/exact_breakdown.json"
cp "$OUT/log.txt" "$OUT/res/log.txt"
tar -czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
echo done >> "$OUT/log.txt"
