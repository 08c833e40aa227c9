#!/usr/bin/env bash
# Session 7, second GPU-host call (patches by one strided copy, not F.unfold): exact mode's float64 convolutions as matrix products
# (pol.step.gemm_conv) — per-layer timings against cuDNN, its GPU test, ResNet-20's exact step
# cost (breakdown + torch.profiler), and a ResNet-20 exact proof recorded on the GPU verified
# bitwise on the CPU (k = 50, two segments, --all).
#   OUT=gpu-out bash benchmarks/gpu_s7b.sh
. "$(dirname "$0")/gpu_lib.sh"
T=60 run python benchmarks/diag_gemm_conv.py --json "$OUT/res/gemm_conv.json"
T=60 run python -m pytest -q -p no:cacheprovider tests/test_gemm_conv.py
T=150 run python benchmarks/bench_exact.py --tasks resnet20,gpt --device cuda --verify-device cuda \
    --gpt-layers 8 --gpt-heads 8 --gpt-embd 512 --gpt-steps 10 --resnet-steps 20 --repeats 1 --breakdown 10 --profile-out "$OUT/res/exact_profile.txt" \
    --json "$OUT/res/exact_breakdown.json"
T=200 run python benchmarks/bench_exact.py --tasks resnet20 --device cuda --verify-device cpu \
    --k 50 --resnet-steps 100 --all --repeats 1 --json "$OUT/res/exact_r20_gpu_to_cpu.json"
finish
