#!/usr/bin/env bash
# Before/after comparison of two code trees on one machine (architecture issue: no regression).
#   A=dir/of/after B=dir/of/before OUT=dir bash benchmarks/ab_trees.sh
# Each tree is a checkout whose src/ is put on PYTHONPATH in turn. Runs are interleaved
# (after, before, after-again) over ROUNDS rounds: the ratio after/before and the A/A control
# after-again/after come from the same rounds. Proofs are made once, by the after tree.
set -u
A=${A:?after tree}; B=${B:?before tree}; OUT=${OUT:-ab-out}; ROUNDS=${ROUNDS:-3}
PY=${PY:-python3}
mkdir -p "$OUT"
W=$(mktemp -d)
PYTHONPATH=$A/src $PY -m pol.cli train --task digits-cnn --epochs 2 --k 10 --out "$W/cnn" >/dev/null
if [ "${CUDA:-0}" = 1 ]; then
  PYTHONPATH=$A/src $PY -c "from pol.prover.trainer import train_task; train_task('synthetic-resnet20', '$W/r20', epochs=1, k=10, device='cuda', dataset_params={'seed': 0, 'n_train': 12800, 'n_test': 100})"
fi
run_verify() { PYTHONPATH=$1/src $PY "$A/benchmarks/bench_ab_verify.py" "$2" --device "$3" --repeats 3; }
run_overhead() { PYTHONPATH=$1/src $PY "$A/benchmarks/bench_overhead.py" --task "$2" --device "$3" --steps "$4" --ks 1,10 --repeats 2 --json "$5" >/dev/null 2>&1; cat "$5"; }
for r in $(seq "$ROUNDS"); do
  for tree in after before again; do
    case $tree in after|again) T=$A;; before) T=$B;; esac
    echo "{\"round\": $r, \"tree\": \"$tree\", \"what\": \"verify-cpu-cnn\", \"result\": $(run_verify "$T" "$W/cnn" cpu)}" >> "$OUT/ab.jsonl"
    echo "{\"round\": $r, \"tree\": \"$tree\", \"what\": \"overhead-cpu-cnn\", \"result\": $(run_overhead "$T" digits-cnn cpu 150 "$W/o.json")}" >> "$OUT/ab.jsonl"
    if [ "${CUDA:-0}" = 1 ]; then
      echo "{\"round\": $r, \"tree\": \"$tree\", \"what\": \"verify-cuda-r20\", \"result\": $(run_verify "$T" "$W/r20" cuda)}" >> "$OUT/ab.jsonl"
      echo "{\"round\": $r, \"tree\": \"$tree\", \"what\": \"overhead-cuda-r20\", \"result\": $(run_overhead "$T" synthetic-resnet20 cuda 200 "$W/o.json")}" >> "$OUT/ab.jsonl"
    fi
  done
done
echo done
