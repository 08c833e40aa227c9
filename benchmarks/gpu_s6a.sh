#!/usr/bin/env bash
# Session 6, first GPU-host call: exact mode without host waits inside a step (issue 14): its cost
# against float32 with the host synchronizations per step counted (bench_exact --breakdown), a
# ResNet-20 proof over two k = 100 segments recorded on the GPU and verified --all on the CPU, and
# a 25.5M GPT recorded on the CPU and verified on the GPU.
#   OUT=gpu-out bash benchmarks/gpu_s6a.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 60 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
B=benchmarks/bench_exact.py
T=120 run python $B --tasks gpt,resnet20 --device cuda --verify-device cuda --gpt-layers 8 \
    --gpt-heads 8 --gpt-embd 512 --gpt-steps 10 --resnet-steps 20 --repeats 1 --breakdown 10 \
    --json "$OUT/res/exact_breakdown.json"
T=100 run python $B --tasks gpt --device cpu --verify-device cuda --k 10 --gpt-layers 8 \
    --gpt-heads 8 --gpt-embd 512 --gpt-steps 20 --repeats 1 --json "$OUT/res/exact_gpt_cpu_to_gpu.json"
T=260 run python $B --tasks resnet20 --device cuda --verify-device cpu --k 100 --resnet-steps 200 \
    --all --repeats 1 --json "$OUT/res/exact_r20_gpu_to_cpu_2seg.json"
cp "$OUT/log.txt" "$OUT/res/log.txt"
tar -czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
echo done >> "$OUT/log.txt"
