#!/usr/bin/env bash
# Session 8, third GPU-host call: (1) the device tests (graphed recording and replay against
# eager; a failed capture leaves the device's random numbers usable); (2) where the 8x512 GPT's
# exact training time goes with CUDA graphs (s8b: 8.4x float32 in training, 1.43x in the step
# breakdown), ResNet-20 as the control; (3) ResNet-20 at the task's k = 100 (200 steps): exact
# training against float32 and bf16 (three runs each), the step breakdown (graphed and eager,
# recording and replaying), verified on the host's CPU, every segment; (4) the same proof kind
# verified on the GPU (graphed replays), every segment.
#   OUT=gpu-out bash benchmarks/gpu_s8c.sh
. "$(dirname "$0")/gpu_lib.sh"
T=150 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_gemm_conv.py
D=benchmarks/diag_graphed.py
T=120 run python $D --task gpt --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 --gpt-steps 30 --json "$OUT/res/diag_gpt.json"
T=60 run python $D --task resnet20 --resnet-steps 60 --json "$OUT/res/diag_r20.json"
E=benchmarks/bench_exact.py
T=200 run python $E --tasks resnet20 --device cuda --verify-device cpu --k 100 --resnet-steps 200 \
    --all --repeats 3 --breakdown 30 --json "$OUT/res/exact_r20_k100_graphs.json"
T=100 run python $E --tasks resnet20 --device cuda --verify-device cuda --k 100 --resnet-steps 200 \
    --all --repeats 1 --json "$OUT/res/exact_r20_k100_gpu_verify.json"
finish
