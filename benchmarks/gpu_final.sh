#!/usr/bin/env bash
# Session 2, last GPU-host call: verifier workers on the host's 16 CPU cores, CPU prover overhead
# at k = 10 (issue 5 target ≤ 1.02), and the k = 1 GPU profile after this session's changes
# (with and without the codec). Writes to $OUT.
#   OUT=gpu-out PART=1 bash benchmarks/gpu_final.sh; OUT=gpu-out PART=2 bash benchmarks/gpu_final.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
python -m pip install -q --no-index --root-user-action=ignore wheels/*.whl 2>&1 | tail -2
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 30 | tee -a "$OUT/log.txt"; }
if [ "${PART:-1}" = 1 ]; then
T=60 run python benchmarks/profile_snapshot.py --json "$OUT/snapshot_pieces.json"
T=230 run python benchmarks/bench_verify.py --task synthetic-resnet20 --epochs 2 --k 2 --n-train 2048 \
    --workers 1,2,4,8 --repeats 2 --no-memory --json "$OUT/verify_workers_16core.json"
T=100 run python benchmarks/bench_overhead.py --task digits-cnn --device cpu --steps 300 --ks 10 \
    --repeats 4 --json "$OUT/overhead_cpu_digits_cnn.json"
T=150 run python benchmarks/bench_overhead.py --task synthetic-resnet20 --device cpu --steps 30 --ks 10 \
    --repeats 3 --json "$OUT/overhead_cpu_resnet20.json"
else
T=120 run python benchmarks/profile_prover.py --device cuda --k 1 --steps 300 --repeats 4 --out "$OUT/prof_k1_after"
T=120 run python benchmarks/profile_prover.py --device cuda --k 1 --steps 300 --repeats 3 --compress --out "$OUT/prof_k1_compress"
fi
echo done >> "$OUT/log.txt"
