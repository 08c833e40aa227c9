#!/usr/bin/env bash
# Session 11: where ResNet-20's exact replay loses to training on the GPU (s11c: --all 1.21,
# top-Q 1.06): does the replay's write of the logged directions (`index_put_`, deterministic
# algorithms on) wait for the device (diag_index_put.py); a torch.profiler window over exact
# training steps and over one replayed segment; the replay with that write done by the
# non-deterministic kernel (the indices are unique: the same bytes) and by `scatter_`
# (POL_DIRS_WRITE, a benchmark toggle).
#   OUT=gpu-out bash benchmarks/gpu_s11d.sh
. "$(dirname "$0")/gpu_lib.sh"
T=60 run python benchmarks/diag_index_put.py --json "$OUT/res/index_put.json"
R20="--task cifar10-resnet20 --write-cifar /tmp/cifar10-synth --epochs 1 --k 100 --device cuda --repeats 1 --no-cli --work /tmp/bvs-r20"
T=150 run python benchmarks/bench_verify_speed.py $R20 --torch-profile --profile-steps 3 \
    --budget-s 120 --out "$OUT/res/r20"
T=100 run env POL_DIRS_WRITE=nondet python benchmarks/bench_verify_speed.py $R20 --budget-s 80 \
    --out "$OUT/res/r20-nondet"
T=100 run env POL_DIRS_WRITE=scatter python benchmarks/bench_verify_speed.py $R20 --budget-s 80 \
    --out "$OUT/res/r20-scatter"
finish
