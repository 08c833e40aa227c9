#!/usr/bin/env bash
# Session 8, fourth GPU-host call: (1) the device tests; (2) where the 8x512 GPT's exact
# training time goes with CUDA graphs (s8b: 8.4x float32 in training against 1.43x in the step
# breakdown; s8c's diagnosis did not run); (3) the 25M GPT's exact cost with graphs, its proof
# verified on the host's CPU; (4) ResNet-20's step breakdown again (s8c's recording capture
# failed there; since then no garbage collection runs inside a capture).
#   OUT=gpu-out bash benchmarks/gpu_s8d.sh
. "$(dirname "$0")/gpu_lib.sh"
T=100 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py
T=120 run python benchmarks/diag_graphed.py --task gpt --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 \
    --gpt-steps 30 --json "$OUT/res/diag_gpt.json"
E=benchmarks/bench_exact.py
T=240 run python $E --tasks gpt --device cuda --verify-device cpu --gpt-layers 8 --gpt-heads 8 \
    --gpt-embd 512 --gpt-steps 30 --k 10 --repeats 2 --breakdown 10 --json "$OUT/res/exact_gpt_graphs.json"
T=80 run python $E --tasks resnet20 --device cuda --verify-device cuda --resnet-steps 60 --k 20 \
    --repeats 1 --breakdown 30 --json "$OUT/res/exact_r20_breakdown.json"
finish
