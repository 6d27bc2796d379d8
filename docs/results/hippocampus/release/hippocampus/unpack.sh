#!/usr/bin/env bash
# A member of today's saved_models/hippocampus rebuilt as a finished run folder (`unpack --member`,
# with its result and fine-tuning stage files kept in the repository), so that it can be
# evaluated, averaged with other runs, or teach a self-training student. Prints the folder;
# does nothing if it is there.
#
#   bash unpack.sh [MEMBER]   # 0 (default): the 40-epoch run along axis 2 (the release before
#                             #   2026-12-04, files beside this script) -> RUNS/i20/release40/fold0/frac1/random
#                             # 1, 2: the views along axes 0 and 1 (files in ../all-labels-views/axisN/)
#                             #   -> RUNS/i20/views/axisN/fold0/frac1/random
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
member=${1:-0} runs=${RUNS:-/work/runs}
case $member in
  0) run=$runs/i20/release40/fold0/frac1/random result=$here/result.json stage=$here/finetune_stage.json ;;
  1|2) kept=$here/../all-labels-views/axis$((member - 1))
       run=$runs/i20/views/axis$((member - 1))/fold0/frac1/random result=$kept/result_val.json stage=$kept/finetune_stage.json ;;
  *) echo "unpack.sh: MEMBER must be 0, 1 or 2" >&2; exit 2 ;;
esac
if [[ ! -f $run/finetune/stage.json ]]; then
  (cd "$repo" && TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 .venv/bin/python cli.py unpack \
      saved_models/hippocampus --member "$member" --force --result "$result" --stage "$stage" --to "$run") >&2
fi
echo "$run"
