#!/usr/bin/env bash
# Today's saved_models/hippocampus rebuilt as a finished run folder (`unpack`, with the result and
# fine-tuning stage files kept beside this script), so that it can be evaluated, averaged with
# other runs, or teach a self-training student. Prints the folder; does nothing if it is there.
#
#   bash unpack.sh        # -> RUNS/i20/release40/fold0/frac1/random
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
run=${RUNS:-/work/runs}/i20/release40/fold0/frac1/random
if [[ ! -f $run/finetune/stage.json ]]; then
  (cd "$repo" && TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 .venv/bin/python cli.py unpack \
      saved_models/hippocampus --force --result "$here/result.json" --stage "$here/finetune_stage.json" --to "$run") >&2
fi
echo "$run"
