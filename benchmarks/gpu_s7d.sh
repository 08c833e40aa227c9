#!/usr/bin/env bash
# Session 7, last GPU-host call: the device tests of this session's GPU paths (exact mode's
# matrix-product convolutions; the verifier's batch prefetch thread, whose CUDA path s7c ran in
# bench_verify_speed but whose log was lost), the prefetch A/B in one process
# (bench_replay_host), and exact mode's ResNet-20 step cost repeated (Function, composite,
# Function again: the spread between calls of one formulation is the noise).
#   OUT=gpu-out bash benchmarks/gpu_s7d.sh
. "$(dirname "$0")/gpu_lib.sh"
T=90 run python -m pytest -q -p no:cacheprovider tests/test_gemm_conv.py tests/test_replay_prefetch.py
T=90 run python benchmarks/bench_replay_host.py --device cuda --repeats 3 --n-train 16384
E=benchmarks/bench_exact.py
A="--tasks resnet20 --device cuda --verify-device cuda --resnet-steps 20 --repeats 1 --breakdown 20"
T=60 run python $E $A --json "$OUT/res/exact_r20_function_1.json"
T=60 run python $E $A --conv-composite --json "$OUT/res/exact_r20_composite.json"
T=60 run python $E $A --json "$OUT/res/exact_r20_function_2.json"
finish
