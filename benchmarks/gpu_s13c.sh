#!/usr/bin/env bash
# Session 13: the first-rank case, measured: an honest float32 GPU proof of ResNet-20 at the
# task's k = 100 (`--no-exact`), verified on the same host's CPU. Before session 13 its verdict
# was INVALID (relative error 0.68 > 0.5); now INCONCLUSIVE (exit 4) where only the drift checks
# fail. Its own exact-mode proof beside it (the default) must be VALID on the CPU. Needs the
# CIFAR directory gpu_s13a.sh writes, else writes it. About 3 min of device time.
#   OUT=gpu-out bash benchmarks/gpu_s13c.sh
. "$(dirname "$0")/gpu_lib.sh"
D=/tmp/cifar10-synth
[ -f $D/data_batch_1.bin ] || T=120 run python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import bench_verify_speed as b; b.write_cifar10(Path('$D'))"
for mode in no-exact exact; do
  T=150 run python -m pol train --task cifar10-resnet20 --data $D --epochs 1 --k 100 --device cuda \
      --$mode --out /tmp/r20-$mode --force
  T=240 run python -m pol verify /tmp/r20-$mode --data $D --device cpu --json "$OUT/res/r20_${mode}_on_cpu.json"
  grep -E "^\s+(FAIL|\?\?\?\?|warn)|verdict|rc=" "$OUT/cmd.txt" >> "$OUT/res/verdicts.txt"
done
finish
