#!/usr/bin/env bash
# Session 6, last GPU-host call: (1) the Recorder's GPU snapshot path and the device tests on a
# real GPU; (2) the README Recorder's overhead on ResNet-20 (bench_user_loop, k = 1 and 10);
# (3) verification speed (issue 13) for the 114M GPT (k = 100, 200 steps, with torch.profiler)
# and ResNet-20 on CIFAR-10 binary files (with the CLI's fixed cost); (4) exact mode's cost after
# the fill kernels of deterministic algorithms were turned off in pol's numerics.
#   OUT=gpu-out bash benchmarks/gpu_s6c.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 40 | tee -a "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"; }
T=90 run python -m pytest -q -p no:cacheprovider tests/test_recorder_calls.py \
    tests/test_proof_format_pure.py tests/test_cluster_device.py tests/test_init_ks.py
T=90 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --blocks 8 --block 50 \
    --ks 1,10 --modes plain,plain2,rec,attach --json "$OUT/res/user_loop_resnet20_cuda.json"
B=benchmarks/bench_verify_speed.py
T=200 run python $B --task synthetic-gpt --gpt-size large --dataset-arg n_train=3200 \
    --dataset-arg block_size=256 --batch-size 16 --k 100 --device cuda --repeats 1 --no-cli \
    --no-topq --torch-profile --profile-steps 2 --budget-s 170 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
rm -rf /tmp/bvs-gpt
T=130 run python $B --task cifar10-resnet20 --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 \
    --device cuda --repeats 1 --cli-repeats 2 --pycache /tmp/pycache \
    --budget-s 110 --work /tmp/bvs-r20 --out "$OUT/res/r20"
T=80 run python benchmarks/bench_exact.py --tasks gpt,resnet20 --device cuda --verify-device cuda \
    --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 --gpt-steps 10 --resnet-steps 20 --repeats 1 \
    --breakdown 10 --json "$OUT/res/exact_breakdown.json"
cp "$OUT/log.txt" "$OUT/res/log.txt"
tar -czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
echo done >> "$OUT/log.txt"
