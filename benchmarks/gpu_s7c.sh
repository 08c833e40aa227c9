#!/usr/bin/env bash
# Session 7, third GPU-host call: (1) device tests of this session's GPU paths (exact mode's
# matrix-product convolutions, the verifier's batch prefetch thread); (2) the two formulations of
# those convolutions in ResNet-20's float64 forward/backward (host and wall time); (3) exact mode's
# cost after the per-tensor host operations were cut (ResNet-20 with both formulations, the 8x512
# GPT), with torch.profiler; (4) a ResNet-20 exact proof recorded on the GPU verified bitwise on
# the CPU; (5) issue 13: ResNet-20's replay with batches prefetched (bench_replay_host on the GPU,
# then bench_verify_speed on CIFAR-10 files with the CLI's fixed cost).
#   OUT=gpu-out bash benchmarks/gpu_s7c.sh
. "$(dirname "$0")/gpu_lib.sh"
T=90 run python -m pytest -q -p no:cacheprovider tests/test_gemm_conv.py tests/test_replay_prefetch.py
T=60 run python benchmarks/diag_gemm_conv.py --json "$OUT/res/gemm_conv.json"
E=benchmarks/bench_exact.py
T=150 run python $E --tasks resnet20,gpt --device cuda --verify-device cuda --gpt-layers 8 \
    --gpt-heads 8 --gpt-embd 512 --gpt-steps 10 --resnet-steps 20 --repeats 1 --breakdown 10 \
    --profile-out "$OUT/res/exact_profile.txt" --json "$OUT/res/exact_breakdown.json"
T=60 run python $E --tasks resnet20 --device cuda --verify-device cuda --resnet-steps 20 \
    --repeats 1 --breakdown 10 --conv-composite --json "$OUT/res/exact_breakdown_composite.json"
T=120 run python $E --tasks resnet20 --device cuda --verify-device cpu --k 50 --resnet-steps 100 \
    --all --repeats 1 --json "$OUT/res/exact_r20_gpu_to_cpu.json"
T=60 run python benchmarks/bench_replay_host.py --device cuda --repeats 3 --n-train 16384
T=130 run python benchmarks/bench_verify_speed.py --task cifar10-resnet20 --write-cifar /tmp/cifar10-synth \
    --epochs 1 --k 100 --device cuda --repeats 1 --cli-repeats 2 --pycache /tmp/pycache \
    --budget-s 110 --work /tmp/bvs-r20 --out "$OUT/res/r20"
finish
