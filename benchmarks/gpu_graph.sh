#!/usr/bin/env bash
# Session 2: check the CUDA-graph snapshot on the GPU (bitwise the same checkpoints as the eager
# gather, exact replay) and measure the training thread's snapshot cost with it. Writes to $OUT.
#   OUT=gpu-out bash benchmarks/gpu_graph.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
export CUBLAS_WORKSPACE_CONFIG=:4096:8
python -m pip install -q --no-index --root-user-action=ignore wheels/*.whl 2>&1 | tail -2
run() { echo "== $*" | tee -a "$OUT/log.txt"; timeout "${T:-300}" "$@" 2>&1 | grep -v "^\s*$" | tail -n 30 | tee -a "$OUT/log.txt"; }
T=200 run python - <<'PY'
import json, os, subprocess, tempfile
from pathlib import Path
tmp = Path(tempfile.mkdtemp())
common = ["--task", "synthetic-resnet20", "--device", "cuda", "--deterministic", "--k", "1",
          "--epochs", "1"]
for graphs in ("1", "0"):
    env = dict(os.environ, POL_SNAPSHOT_GRAPHS=graphs)
    subprocess.run(["python", "-m", "pol.cli", "train", *common, "--out", str(tmp / f"g{graphs}")],
                   check=True, env=env, capture_output=True)
a = json.loads((tmp / "g1" / "manifest.json").read_text())["files"]
b = json.loads((tmp / "g0" / "manifest.json").read_text())["files"]
ck = [n for n in a if n.startswith("checkpoints/")]
same = sum(a[n] == b[n] for n in ck)
print(json.dumps({"checkpoints": len(ck), "identical_graph_vs_eager": same}))
r = subprocess.run(["python", "-m", "pol.cli", "verify", str(tmp / "g1"), "--all", "--device", "cuda"],
                   capture_output=True, text=True)
print("verify --all (graph snapshots):", r.returncode,
      [ln for ln in r.stdout.splitlines() if "exact replay" in ln or "verdict" in ln])
PY
T=150 run python benchmarks/profile_prover.py --device cuda --k 1 --steps 300 --repeats 4 --out "$OUT/prof_k1_graph"
echo done >> "$OUT/log.txt"
