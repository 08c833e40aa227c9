#!/usr/bin/env bash
# Session 2, GPU call A: profile the prover at k = 1, the cost of TF32 off / deterministic, and
# the GPU→CPU reproduction error with TF32 off (pol's new default). Writes to $OUT.
#   OUT=gpu-out bash benchmarks/gpu_profile.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import sys, torch; print(sys.version); print(torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt"
nproc >> "$OUT/gpu.txt"
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 40 | tee -a "$OUT/log.txt"; }
T=200 run python benchmarks/profile_prover.py --device cuda --k 1 --steps 300 --repeats 3 --out "$OUT/prof_k1"
T=120 run python - <<'PY'
# training-step cost of TF32 off and of deterministic algorithms (ResNet-20, batch 128)
import os, time, torch
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
from pol.registry import build_context
from pol.spec import set_tf32
from pol.step import update
from pol.tasks import build_spec
spec, train, _ = build_spec("synthetic-resnet20", device="cuda")
res = {}
for rep in range(3):
    for tf32 in ("on", "off"):
        for det in (False, True):
            set_tf32(tf32); torch.use_deterministic_algorithms(det)
            ctx = build_context(spec, torch.device("cuda"))
            x = torch.from_numpy(train.x[:128]); y = torch.from_numpy(train.y[:128])
            for t in range(10): update(ctx, x, y, [0.1], t)
            torch.cuda.synchronize(); t0 = time.perf_counter()
            for t in range(150): update(ctx, x, y, [0.1], t)
            torch.cuda.synchronize()
            res.setdefault(f"tf32={tf32},det={det}", []).append((time.perf_counter() - t0) / 150 * 1e3)
best = {k: min(v) for k, v in res.items()}
base = best["tf32=on,det=False"]
print({k: (round(v, 3), round(v / base, 3)) for k, v in best.items()})
PY
T=330 run python benchmarks/bench_core.py --task synthetic-resnet20 --device cuda --epochs 2 \
    --n-train 10000 --ks 1,10,S --deterministic --cross-device cpu --json "$OUT/core_cuda_det_tf32off.json"
echo done >> "$OUT/log.txt"
