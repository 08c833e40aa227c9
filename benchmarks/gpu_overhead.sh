#!/usr/bin/env bash
# Session 2, GPU call C: prover overhead (ResNet-20 at k = 1 and 10, with and without the lossless
# codec, A/A control) and the 114M-parameter transformer at k = 100. Writes to $OUT.
# zstandard travels as a wheel in wheels/ (git-ignored; pip download zstandard for the host's Python).
#   OUT=gpu-out bash benchmarks/gpu_overhead.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
python -m pip install -q --no-index --root-user-action=ignore wheels/*.whl 2>&1 | tail -2
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 30 | tee -a "$OUT/log.txt"; }
T=330 run python benchmarks/bench_overhead.py --task synthetic-resnet20 --device cuda --steps 400 \
    --ks 1,10 --repeats 4 --compress --json "$OUT/overhead_cuda.json"
cd benchmarks
T=240 run python bench_scale.py --device cuda --sizes large --repeats 2 --json "$OUT/scale_large.json"
echo done >> "$OUT/log.txt"
