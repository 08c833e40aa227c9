#!/usr/bin/env bash
# Session 11: issue 13's figures for the 114M GPT again, now that an exact proof's rounding log is
# decoded a segment ahead on a thread, its chunks several at a time (s11a: the per-segment decode
# sat inside the replay, 264 ms/step against 174 of training); ResNet-20's again with a cProfile
# whose callees show where a segment's time outside its steps goes.
#   OUT=gpu-out bash benchmarks/gpu_s11c.sh
. "$(dirname "$0")/gpu_lib.sh"
T=320 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --cli-repeats 1 --budget-s 300 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
T=170 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --repeats 1 \
    --cli-repeats 2 --pycache /tmp/pycache --budget-s 150 --work /tmp/bvs-r20 --profile \
    --out "$OUT/res/r20"
finish
