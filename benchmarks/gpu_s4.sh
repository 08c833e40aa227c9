#!/usr/bin/env bash
# Session 4, first GPU-host call: the real-loops issue's GPU rows (the user-loop matrix on the GPU,
# deterministic algorithms, verified on the same GPU) and the README path's overhead (ResNet-20,
# batch 128, k = 1 and 10, A/A control), durable and not, with a cProfile of the Recorder at k = 1.
#   OUT=gpu-out bash benchmarks/gpu_s4.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 40 | tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/log.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/log.txt"
T=200 run python benchmarks/gpu_user_matrix.py --device cuda --json "$OUT/user_matrix_cuda.json"
T=260 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --steps 300 --repeats 5 \
    --ks 1,10 --json "$OUT/user_loop_resnet20_cuda.json"
T=120 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --steps 300 --repeats 3 \
    --ks 1 --no-durable --json "$OUT/user_loop_resnet20_cuda_nodurable.json"
T=60 run python benchmarks/bench_user_loop.py --task resnet20 --device cuda --steps 300 --ks 1 \
    --profile rec
echo done >> "$OUT/log.txt"
