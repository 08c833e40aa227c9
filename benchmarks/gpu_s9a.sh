#!/usr/bin/env bash
# Prepared in session 8 for the next GPU-host call (not run yet): (1) the device tests (fced04b
# changed when graphed steps are captured, tested on the CPU only); (2) the 25M GPT's exact
# training after the chunked rounding log (s8e, before it: 9.1x float32), with where its time
# goes (diag_graphed: each step's time and kind, cProfile); (3) ResNet-20's exact proof verified
# on the GPU with graphed replays, every segment (segments from checkpoint 0 and later ones:
# the eager first step, then the graphs on the loaded state); (4) issue 13's ResNet-20 figures on
# CIFAR-10 binary files (replay and wall ratios, the CLI's fixed cost).
#   OUT=gpu-out bash benchmarks/gpu_s9a.sh
. "$(dirname "$0")/gpu_lib.sh"
T=120 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_gemm_conv.py \
    tests/test_replay_prefetch.py
T=120 run python benchmarks/diag_graphed.py --task gpt --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 \
    --gpt-steps 30 --json "$OUT/res/diag_gpt.json"
E=benchmarks/bench_exact.py
T=150 run python $E --tasks gpt --device cuda --verify-device cuda --gpt-layers 8 --gpt-heads 8 \
    --gpt-embd 512 --gpt-steps 30 --k 10 --repeats 2 --breakdown 10 --json "$OUT/res/exact_gpt.json"
T=120 run python $E --tasks resnet20 --device cuda --verify-device cuda --k 20 --resnet-steps 100 \
    --all --repeats 1 --json "$OUT/res/exact_r20_gpu_verify.json"
T=150 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 --write-cifar /tmp/cifar10-synth \
    --epochs 1 --k 100 --device cuda --repeats 1 --cli-repeats 2 --pycache /tmp/pycache \
    --budget-s 130 --work /tmp/bvs-r20 --out "$OUT/res/r20"
finish
