#!/usr/bin/env bash
# Session 9, third GPU call: issue 14's targets after the round-to-even zone and the log's
# pieces. (1) device tests; (2) the 25M GPT's exact training cost at k = 100 over 200 steps
# (each mode warmed up once, untimed), verified on the GPU; (3) bitwise both ways: digits-cnn
# GPU -> CPU and CPU -> GPU, ResNet-20 at k = 100 GPU -> CPU (200 steps) and CPU -> GPU (100),
# the 25M GPT CPU -> GPU (GPU -> CPU: s9b).
#   OUT=gpu-out bash benchmarks/gpu_s9c.sh
. "$(dirname "$0")/gpu_lib.sh"
T=90 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_exact_mode.py
E=benchmarks/bench_exact.py
G="--gpt-layers 8 --gpt-heads 8 --gpt-embd 512"
T=150 run python $E --tasks gpt --device cuda --verify-device cuda $G --gpt-steps 200 --k 100 \
    --repeats 2 --json "$OUT/res/exact_gpt_k100.json"
T=60 run python $E --tasks digits-cnn --device cuda --verify-device cpu --repeats 1 \
    --json "$OUT/res/exact_digits_gpu_cpu.json"
T=60 run python $E --tasks digits-cnn --device cpu --verify-device cuda --repeats 1 \
    --json "$OUT/res/exact_digits_cpu_gpu.json"
T=130 run python $E --tasks resnet20 --device cuda --verify-device cpu --k 100 --resnet-steps 200 \
    --repeats 1 --json "$OUT/res/exact_r20_gpu_cpu_k100.json"
T=90 run python $E --tasks resnet20 --device cpu --verify-device cuda --k 100 --resnet-steps 100 \
    --repeats 1 --json "$OUT/res/exact_r20_cpu_gpu_k100.json"
T=100 run python $E --tasks gpt --device cpu --verify-device cuda $G --gpt-steps 20 --k 10 \
    --repeats 1 --json "$OUT/res/exact_gpt_cpu_gpu.json"
finish
