#!/usr/bin/env bash
# Session 8, last GPU-host call: (1) CPU -> GPU with the GPU's replays as CUDA graphs: exact
# proofs of digits-cnn and ResNet-20 recorded on the host's CPU, verified on the GPU, every
# segment; (2) the 25M GPT's exact training again after the rounding log's faster encoding
# (s8d: 7.5 s of 15.8 s were the log's encoding at the end), verified on the GPU.
#   OUT=gpu-out bash benchmarks/gpu_s8e.sh
. "$(dirname "$0")/gpu_lib.sh"
E=benchmarks/bench_exact.py
T=150 run python $E --tasks digits-cnn,resnet20 --device cpu --verify-device cuda --epochs 1 \
    --resnet-steps 40 --k 20 --all --repeats 1 --json "$OUT/res/exact_cpu_to_gpu.json"
T=120 run python $E --tasks gpt --device cuda --verify-device cuda --gpt-layers 8 --gpt-heads 8 \
    --gpt-embd 512 --gpt-steps 30 --k 10 --repeats 2 --json "$OUT/res/exact_gpt_encode.json"
finish
