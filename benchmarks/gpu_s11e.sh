#!/usr/bin/env bash
# Session 11: the device tests after the rounding log's decode-ahead; ResNet-20's issue 13 figures
# with the verifier warmed up as the training is (an untimed verify --all first: s11d showed the
# first verification in a process paying one-off costs that the warm training does not), two
# rounds, and the pol verify processes (cold, what a user pays); then three verify --all in one
# process, each segment and each graph capture timed (diag_first_verify.py): where the first
# verification's one-off goes.
#   OUT=gpu-out bash benchmarks/gpu_s11e.sh
. "$(dirname "$0")/gpu_lib.sh"
T=60 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_exact_mode.py
T=200 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --repeats 2 \
    --cli-repeats 1 --pycache /tmp/pycache --budget-s 180 --work /tmp/bvs-r20 --out "$OUT/res/r20"
T=120 run python benchmarks/diag_first_verify.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --verifies 3 \
    --json "$OUT/res/first_verify_r20.json"
finish
