#!/usr/bin/env bash
# Session 8, second GPU-host call: exact mode's step as CUDA graphs (pol.step.graphed).
# (1) the device tests (graphed steps bitwise equal to eager ones; a failed capture; the
# matrix-product convolutions); (2) ResNet-20 at the task's k = 100, 200 steps: exact-mode
# training against float32 and bf16 (three interleaved runs each), the step breakdown (graphed
# and eager exact steps), and the GPU proof verified on the host's CPU, every segment; (3) the
# 8x512 GPT (25M parameters): the same costs, verified on the GPU; (4) the README Recorder's
# overhead on ResNet-20 at k = 1 and 10 (bench_user_loop, blocks interleaved).
#   OUT=gpu-out bash benchmarks/gpu_s8b.sh
. "$(dirname "$0")/gpu_lib.sh"
T=150 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_gemm_conv.py
E=benchmarks/bench_exact.py
T=240 run python $E --tasks resnet20 --device cuda --verify-device cpu --resnet-steps 200 --all \
    --repeats 3 --breakdown 30 --json "$OUT/res/exact_r20_graphs.json"
T=200 run python $E --tasks gpt --device cuda --verify-device cuda --gpt-layers 8 --gpt-heads 8 \
    --gpt-embd 512 --gpt-steps 30 --k 10 --repeats 2 --breakdown 10 --json "$OUT/res/exact_gpt_graphs.json"
T=100 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --blocks 8 --block 50 \
    --ks 1,10 --modes plain,plain2,rec,attach --json "$OUT/res/user_loop_resnet20_cuda.json"
finish
