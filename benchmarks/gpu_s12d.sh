#!/usr/bin/env bash
# Session 12, all of the session's last device time: ResNet-20's issue 13 figures with the KS
# p-values from a helper process (scipy.stats off the replay's GIL), the CIFAR load and content
# key on threads and the GIL in short slices beside the replay; three verify --all in one
# process (the first verification's one-off); then the 114M GPT's in-process figures (no pol
# verify processes: the time left allows the in-process rounds only), whose top-Q replay was
# 1.136 in s11f (1.053 in s11c), now with each epoch's first pick guessed and its log decoded
# ahead while the checkpoints are read. First, what imports and CUDA's start cost in a fresh process.
#   OUT=gpu-out bash benchmarks/gpu_s12d.sh
. "$(dirname "$0")/gpu_lib.sh"
T=90 run python benchmarks/diag_import_costs.py --repeats 2 --json "$OUT/res/import_costs.json"
T=200 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --repeats 2 \
    --cli-repeats 1 --pycache /tmp/pycache --budget-s 170 --work /tmp/bvs-r20 \
    --out "$OUT/res/r20"
T=60 run python benchmarks/diag_first_verify.py --task cifar10-resnet20 \
    --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --verifies 3 \
    --json "$OUT/res/first_verify_r20.json"
T=270 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --no-cli --budget-s 225 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
finish
