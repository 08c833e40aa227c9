# Shared by the session-7 GPU scripts (sourced): the output folder, cuBLAS's deterministic
# workspace, `run` (a command under a time limit, its output's last 40 lines into $OUT/log.txt)
# and `finish` (the results packed into $OUT/results.tgz, the log printed).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run() { echo "== $*" >> "$OUT/log.txt"; local t0=$SECONDS; timeout "${T:-300}" "$@" > "$OUT/cmd.txt" 2>&1; echo "rc=$?" >> "$OUT/cmd.txt"; grep -v "^\s*$" "$OUT/cmd.txt" | tail -n 40 >> "$OUT/log.txt"; echo "-- $((SECONDS - t0)) s" >> "$OUT/log.txt"; }
finish() {
  cp "$OUT/log.txt" "$OUT/res/log.txt"
  tar -czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
  grep -v '^ *"' "$OUT/log.txt" | tail -n 60
}
