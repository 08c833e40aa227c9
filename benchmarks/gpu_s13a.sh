#!/usr/bin/env bash
# Prepared in session 12 (its device time was spent): ResNet-20's issue 13 figures after W_0's
# checks moved behind the replays (s12d's top-Q wall, 1.35, waited for the KS helper) and top-Q's
# remaining replays announced at the pass's end; three verify --all in one process; the import
# probe with an untimed run first. About 4 min of device time from a warm start.
#   OUT=gpu-out bash benchmarks/gpu_s13a.sh
. "$(dirname "$0")/gpu_lib.sh"
T=120 run python benchmarks/diag_import_costs.py --repeats 2 --json "$OUT/res/import_costs.json"
T=200 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --repeats 2 \
    --cli-repeats 1 --pycache /tmp/pycache --budget-s 170 --work /tmp/bvs-r20 --out "$OUT/res/r20"
T=60 run python benchmarks/diag_first_verify.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --verifies 3 \
    --json "$OUT/res/first_verify_r20.json"
finish
