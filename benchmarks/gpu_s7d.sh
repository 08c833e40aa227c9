#!/usr/bin/env bash
# Session 7, last GPU-host call: the device tests of this session's GPU paths (exact mode's
# matrix-product convolutions; the verifier's batch prefetch thread, whose CUDA path s7c ran in
# bench_verify_speed but whose log was lost), the prefetch A/B in one process
# (bench_replay_host), and exact mode's ResNet-20 step cost repeated (Function, composite,
# Function again: the spread between calls of one formulation is the noise).
#   OUT=gpu-out bash benchmarks/gpu_s7d.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" >> "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" > "$OUT/cmd.txt" 2>&1; echo "rc=$?" >> "$OUT/cmd.txt"; grep -v "^\s*$" "$OUT/cmd.txt" | tail -n 40 >> "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" >> "$OUT/log.txt"; }
T=90 run python -m pytest -q -p no:cacheprovider tests/test_gemm_conv.py tests/test_replay_prefetch.py
T=90 run python benchmarks/bench_replay_host.py --device cuda --repeats 3 --n-train 16384
E=benchmarks/bench_exact.py
A="--tasks resnet20 --device cuda --verify-device cuda --resnet-steps 20 --repeats 1 --breakdown 20"
T=60 run python $E $A --json "$OUT/res/exact_r20_function_1.json"
T=60 run python $E $A --conv-composite --json "$OUT/res/exact_r20_composite.json"
T=60 run python $E $A --json "$OUT/res/exact_r20_function_2.json"
cp "$OUT/log.txt" "$OUT/res/log.txt"
tar -czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
cat "$OUT/log.txt" | grep -v '^ *"' | tail -n 60
