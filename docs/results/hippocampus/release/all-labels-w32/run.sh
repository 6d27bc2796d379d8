#!/usr/bin/env bash
# The all-labels trial at width 32 in bfloat16, towards the next `hippocampus` release: as
# ../all-labels-120/run.sh (random init, fold 0, every train label, 120 epochs, evaluated on
# validation, one thread), with model.base_width=32 and train.precision=mixed_bfloat16, from
# frozen code (commit 78d8e15). Only for a CPU with AMX-BF16 or AVX512-BF16: elsewhere bfloat16
# is emulated and slower than float32.
#
#   mkdir -p /work/i20w32code && git archive 78d8e15 | tar -x -C /work/i20w32code && echo 78d8e15 > /work/i20w32code/COMMIT
#   bash run.sh            # start or resume (restores partial/ first on a new machine)
#   bash run.sh save       # keep the latest checkpoint in partial/ beside this script
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
grep -q -w -E 'amx_bf16|avx512_bf16' /proc/cpuinfo || { echo "run.sh: this CPU has neither AMX-BF16 nor AVX512-BF16" >&2; exit 1; }
CODE=${CODE:-/work/i20w32code} OUT=${OUT:-/work/runs/i20/w32} KEEP=$here/partial \
  SETS="--set model.base_width=32 --set train.precision=mixed_bfloat16" \
  exec bash "$here/../all-labels-120/run.sh" "$@"
