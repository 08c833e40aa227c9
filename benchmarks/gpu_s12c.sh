#!/usr/bin/env bash
# Session 12: ResNet-20's issue 13 figures after the CIFAR load on threads, the content key
# hashed on threads and the short GIL slices beside the replay (s12a/s12b: 0.83 s before the
# first segment, 0.68 s of it the CIFAR load and 0.12 s the content key; the first verification's
# first segment 1.2 s slower while the KS thread imported scipy.stats), with the profile of a
# pol verify --all process and its -X importtime; then three verify --all in one process.
#   OUT=gpu-out bash benchmarks/gpu_s12c.sh
. "$(dirname "$0")/gpu_lib.sh"
T=260 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --repeats 2 \
    --cli-repeats 1 --pycache /tmp/pycache --budget-s 230 --profile --work /tmp/bvs-r20 \
    --out "$OUT/res/r20"
T=120 run python benchmarks/diag_first_verify.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --verifies 3 \
    --json "$OUT/res/first_verify_r20.json"
finish
