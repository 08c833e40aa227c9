#!/usr/bin/env bash
# Session 9, fourth GPU call (diagnosis): (1) where the 25M GPT's exact step spends its time
# (torch.profiler tables: float32, exact recording as graphs and eagerly, replay); (2) the 25M
# GPT's exact training at k = 100, step by step, with cProfile of the training thread;
# (3) issue 13 on ResNet-20 with pol train's default on a GPU now (exact mode): replay and wall
# ratios, the CLI's fixed cost, with cProfile and -X importtime of a `pol verify` process.
#   OUT=gpu-out bash benchmarks/gpu_s9d.sh
. "$(dirname "$0")/gpu_lib.sh"
G="--gpt-layers 8 --gpt-heads 8 --gpt-embd 512"
T=120 run python benchmarks/bench_exact.py --tasks gpt --device cuda $G --breakdown-only \
    --breakdown 10 --profile-out "$OUT/res/prof_gpt.txt" --json "$OUT/res/breakdown_gpt.json"
T=90 run python benchmarks/diag_graphed.py --task gpt $G --gpt-steps 200 --k 100 \
    --json "$OUT/res/diag_gpt_k100.json"
T=170 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 --write-cifar /tmp/cifar10-synth \
    --epochs 1 --k 100 --device cuda --repeats 1 --cli-repeats 2 --pycache /tmp/pycache \
    --budget-s 150 --work /tmp/bvs-r20 --profile --out "$OUT/res/r20"
finish
