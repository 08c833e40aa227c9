#!/usr/bin/env bash
# Session 4, last GPU-host call: (A) the README path's overhead after this session's fixes,
# block-interleaved, with the writer-less Recorder as diagnostic; (B) exact mode: proofs recorded on
# the GPU, verified on the host's CPU (digits-cnn, ResNet-20 from init at k = 100, a 25M GPT).
#   OUT=gpu-out bash benchmarks/gpu_s4c.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 40 | tee -a "$OUT/log.txt"; }
T=170 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --blocks 20 --block 50 \
    --ks 1,10 --modes plain,plain2,rec,rec-nowrite,attach --json "$OUT/user_loop_blocks_resnet20_cuda.json"
T=300 run python benchmarks/bench_exact.py --tasks digits-cnn,resnet20,gpt --device cuda \
    --verify-device cpu --resnet-steps 100 --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 \
    --gpt-steps 20 --repeats 1 --json "$OUT/exact_gpu_to_cpu.json"
echo done >> "$OUT/log.txt"
