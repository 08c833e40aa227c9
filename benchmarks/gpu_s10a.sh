#!/usr/bin/env bash
# Prepared in session 9 for the next GPU call (not run yet; session 9's device time was spent):
# (1) the device tests; (2) the 114M GPT (bench_scale's large size) in exact mode, now pol
# train's default on a GPU: its training cost against float32 and bf16 at k = 100, verified on
# the GPU; (3) issue 13's figures for it on pol train's path (exact, the default); (4) the
# README Recorder's overhead
# (unchanged code since s8b: k = 1 1.11, target 1.02).
#   OUT=gpu-out bash benchmarks/gpu_s10a.sh
. "$(dirname "$0")/gpu_lib.sh"
T=90 run python -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_exact_mode.py \
    tests/test_gemm_conv.py
T=200 run python benchmarks/bench_exact.py --tasks gpt --device cuda --verify-device cuda \
    --gpt-layers 16 --gpt-heads 12 --gpt-embd 768 --gpt-block 256 --gpt-steps 200 --k 100 \
    --repeats 1 --json "$OUT/res/exact_gpt114m.json"
T=150 run python benchmarks/bench_verify_speed.py --task synthetic-gpt --gpt-size large \
    --dataset-arg n_train=3200 --dataset-arg block_size=256 --batch-size 16 --k 100 \
    --device cuda --repeats 1 --cli-repeats 1 --budget-s 140 --work /tmp/bvs-gpt --out "$OUT/res/gpt"
T=100 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --blocks 8 --block 50 \
    --ks 1,10 --modes plain,plain2,rec,attach --json "$OUT/res/user_loop_resnet20_cuda.json"
finish
