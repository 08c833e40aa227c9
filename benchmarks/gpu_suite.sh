#!/usr/bin/env bash
# Every GPU measurement of this session in one run (device time is scarce). Writes JSON + logs to
# $OUT (default ./gpu-out). Run from the repository root:  bash benchmarks/gpu_suite.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=src
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt"
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout 420 "$@" 2>&1 | grep -v "^\s*$" | tail -n 25 | tee -a "$OUT/log.txt"; }
# 1. Table I on the GPU (default, non-deterministic), replayed on the GPU and on the CPU
run python benchmarks/bench_core.py --task synthetic-resnet20 --device cuda --epochs 2 \
    --n-train 10000 --ks 1,10,S --cross-device cpu --json "$OUT/core_cuda.json"
# 2. deterministic algorithms: exact replay on the same device type
CUBLAS_WORKSPACE_CONFIG=:4096:8 run python benchmarks/bench_core.py --task synthetic-resnet20 \
    --device cuda --epochs 2 --n-train 10000 --ks 10,S --deterministic --cross-device cpu \
    --json "$OUT/core_cuda_det.json"
# 3. prover overhead vs no proof and vs the reference pattern
run python benchmarks/bench_overhead.py --task synthetic-resnet20 --device cuda --steps 300 \
    --ks 1,10 --repeats 3 --json "$OUT/overhead_cuda.json"
CUBLAS_WORKSPACE_CONFIG=:4096:8 run python - <<'PY'
# deterministic-mode training cost on the GPU
import time, torch
from pol.registry import build_context
from pol.step import update
from pol.tasks import build_spec
spec, train, _ = build_spec("synthetic-resnet20", device="cuda")
res = {}
for det in (False, True, False, True):
    torch.use_deterministic_algorithms(det)
    ctx = build_context(spec, torch.device("cuda"))
    x = torch.from_numpy(train.x[:128]); y = torch.from_numpy(train.y[:128])
    for t in range(10): update(ctx, x, y, [0.1], t)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for t in range(200): update(ctx, x, y, [0.1], t)
    torch.cuda.synchronize(); res.setdefault(det, []).append((time.perf_counter() - t0) / 200)
print({"step_ms_default": min(res[False]) * 1e3, "step_ms_deterministic": min(res[True]) * 1e3,
       "ratio": min(res[True]) / min(res[False])})
PY
echo done >> "$OUT/log.txt"
