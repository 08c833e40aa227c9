#!/usr/bin/env bash
# Session 10, last call: exact proofs with the coarser gradient grid (StepSpec.exact_grid = 8,
# new proofs' default) recorded on the GPU and verified on the host's CPU (hardened, every
# replayed segment compared by digest): the 25M GPT (8×512), digits-cnn, ResNet-20.
#   OUT=gpu-out bash benchmarks/gpu_s10e.sh
. "$(dirname "$0")/gpu_lib.sh"
E=benchmarks/bench_exact.py
T=90 run python $E --tasks gpt --device cuda --verify-device cpu --gpt-layers 8 --gpt-heads 8 \
    --gpt-embd 512 --gpt-steps 30 --k 10 --repeats 1 --json "$OUT/res/exact_gpt25m_gpu_cpu.json"
T=40 run python $E --tasks digits-cnn --device cuda --verify-device cpu --repeats 1 \
    --json "$OUT/res/exact_digits_gpu_cpu.json"
T=70 run python $E --tasks resnet20 --device cuda --verify-device cpu --resnet-steps 20 --k 10 \
    --repeats 1 --json "$OUT/res/exact_resnet20_gpu_cpu.json"
finish
