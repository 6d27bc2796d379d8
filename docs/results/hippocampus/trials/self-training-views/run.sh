#!/usr/bin/env bash
# Views for `hippocampus-5pct`: students that slice the volumes along axis 0, 1 or 2, taught by
# the third-round `hippocampus-5pct` (the width-32 student slicing along axis 2, released in
# commit ce85057 and replaced by these students' views since; unpacked from that commit's
# SavedModel with the result and stage files its trial keeps), so that the students
# can be averaged in 3D as views of one exported model. Fold 0, 5%: the labels of the same 7
# volumes, pseudo-labels for the 125 other train volumes (a teacher along another axis than its
# student predicts in 3D, then re-slices); evaluated on validation only. Frozen code (commit
# 6656acd, the first whose teachers may be views), one thread.
#
#   mkdir -p /work/i20vcode && git archive 6656acd | tar -x -C /work/i20vcode && echo 6656acd > /work/i20vcode/COMMIT
#   bash run.sh NAME [--set KEY=VALUE ...]    # start or resume student NAME (its folder: RUNS/i20/views5/NAME)
#
# e.g. `bash run.sh axis0-w16 --set data.slice_axis=0`. With TEACHERS="NAME..." (students of this
# script), those finished students teach instead (a fifth round: the three views teach in 3D),
# e.g. `TEACHERS="axis2-w16 axis0-w16 axis1-w16" bash run.sh r5-axis1 --set data.slice_axis=1`.
# The finished student's result_val.json
# (with "code_commit" and "overrides" added) and its fine-tuning stage file are committed in
# NAME/ beside this script at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
name=$1; shift
CODE=${CODE:-/work/i20vcode} RUNS=${RUNS:-/work/runs} PY=$repo/.venv/bin/python
kept=$repo/docs/results/hippocampus/trials/self-training-round3/w32-s1
teacher=$RUNS/i20/views5/release/fold0/frac0.05/self-training
model=$RUNS/i20/views5/hippocampus-5pct-round3
if [[ ! -f $model/saved_model.pb ]]; then  # the third-round release, as committed
  mkdir -p "$model.tmp" && git -C "$repo" archive ce85057 saved_models/hippocampus-5pct | tar -x -C "$model.tmp" &&
    mv "$model.tmp/saved_models/hippocampus-5pct" "$model" && rm -rf "$model.tmp"
fi
if [[ ! -f $teacher/finetune/stage.json ]]; then
  (cd "$CODE" && "$PY" cli.py unpack "$model" --force \
      --result "$kept/result_val.json" --stage "$kept/finetune_stage.json" --to "$teacher")
fi
list="[\"$teacher\"]"
if [[ -n ${TEACHERS:-} ]]; then
  list=$(for t in $TEACHERS; do printf '"%s",' "$RUNS/i20/views5/$t/fold0/frac0.05/self-training"; done)
  list="[${list%,}]"
fi
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
(cd "$CODE" && "$PY" cli.py run --config configs/hippocampus.yaml --data "$repo/../shared/data/Task04_Hippocampus" \
    --method self-training --fraction 0.05 --fold 0 --out "$RUNS/i20/views5/$name" --evaluate-on val \
    --set "data.cache_dir=$RUNS/cache" --set "train.self_training.teachers=$list" "$@")
here_ps=$repo/docs/results/hippocampus/paper-schedule
source "$here_ps/common.sh"
run=$RUNS/i20/views5/$name/fold0/frac0.05/self-training dest=$here/$name
keep_finished "$run" "$dest" "self-training views at 5%, $name: validation result and stage file (code $commit)" "$@"
