#!/usr/bin/env bash
# Session 9, second GPU call: exact mode after the round-to-even zone (eb8d01e). (1) the device
# tests; (2) where the 25M GPT's exact training time goes now (diag_graphed); (3) the 25M GPT's
# exact proof made on the GPU and verified on the CPU (bitwise, every replayed segment) with
# the training cost against float32 and bf16; (4) ResNet-20's, GPU -> CPU, every segment;
# (5) the 25M GPT's verified on the GPU (graphed replay).
#   OUT=gpu-out bash benchmarks/gpu_s9b.sh
. "$(dirname "$0")/gpu_lib.sh"
T=150 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_gemm_conv.py \
    tests/test_exact_mode.py
T=90 run python benchmarks/diag_graphed.py --task gpt --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 \
    --gpt-steps 30 --json "$OUT/res/diag_gpt.json"
E=benchmarks/bench_exact.py
T=180 run python $E --tasks gpt --device cuda --verify-device cpu --gpt-layers 8 --gpt-heads 8 \
    --gpt-embd 512 --gpt-steps 30 --k 10 --repeats 2 --breakdown 10 --json "$OUT/res/exact_gpt_cpu.json"
T=90 run python $E --tasks resnet20 --device cuda --verify-device cpu --k 20 --resnet-steps 100 \
    --all --repeats 1 --json "$OUT/res/exact_r20_cpu.json"
T=90 run python $E --tasks gpt --device cuda --verify-device cuda --gpt-layers 8 --gpt-heads 8 \
    --gpt-embd 512 --gpt-steps 30 --k 10 --repeats 1 --json "$OUT/res/exact_gpt_gpu.json"
finish
