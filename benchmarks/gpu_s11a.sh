#!/usr/bin/env bash
# Prepared in session 10 for the next GPU call (not run: session 10's device time was spent):
# (1) the device tests; (2) issue 13's figures for the 114M GPT in exact mode with the rounding
# log of version 3 (read a segment at a time: s10d's 20.7 s "read" decoded the whole log first);
# (3) ResNet-20's issue 13 figures again (s9d: --all replay 1.24, wall 1.26 / 1.44, fixed cost
# 3.6 s), with a cProfile and -X importtime of one `pol verify --all`.
#   OUT=gpu-out bash benchmarks/gpu_s11a.sh
. "$(dirname "$0")/gpu_lib.sh"
T=60 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_exact_mode.py
T=320 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --cli-repeats 1 --budget-s 300 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
T=170 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --repeats 1 \
    --cli-repeats 2 --pycache /tmp/pycache --budget-s 150 --work /tmp/bvs-r20 --profile \
    --out "$OUT/res/r20"
finish
