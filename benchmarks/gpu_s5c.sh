#!/usr/bin/env bash
# Session 5, third GPU-host call: verification at the speed of training (issue 13) for the 114M GPT
# (k = 100, 200 steps) and ResNet-20 (CIFAR-10 binary files of the synthetic set, 1 epoch, k = 100),
# with torch.profiler; then the paper's Table 1 / 5 and Fig. 1 / 2 at CIFAR scale, 1 epoch. The
# outputs are packed into one archive (the device tool returns a few files only).
#   OUT=gpu-out bash benchmarks/gpu_s5c.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 45 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
B=benchmarks/bench_verify_speed.py
T=240 run python $B --task synthetic-gpt --gpt-size large --dataset-arg n_train=3200 \
    --dataset-arg block_size=256 --batch-size 16 --k 100 --device cuda --repeats 1 --no-cli \
    --no-topq --torch-profile --profile-steps 2 --budget-s 200 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
rm -rf /tmp/bvs-gpt
T=190 run python $B --task cifar10-resnet20 --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 \
    --device cuda --repeats 1 --cli-repeats 1 --torch-profile --pycache /tmp/pycache \
    --budget-s 160 --work /tmp/bvs-r20 --out "$OUT/res/r20"
T=120 run python -m pol experiment table1,table5,fig1,fig2 --size paper --device cuda --epochs 1 \
    --out "$OUT/res/experiments"
tar -czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
echo done >> "$OUT/log.txt"
