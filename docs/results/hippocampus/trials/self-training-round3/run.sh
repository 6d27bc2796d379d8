#!/usr/bin/env bash
# A third round of self-training (the `hippocampus-5pct` release of 2026-12-04): the two
# students of the second-round release (seeds 0 and 1), unpacked from its SavedModel (taken
# from commit e4bbc72, which released it as saved_models/hippocampus-5pct) with their result
# and stage files kept in docs/results/hippocampus/release/hippocampus-5pct-round2/,
# teach one new student, as the second round's teachers taught them (fold 0, 5%: the labels of
# the same 7 volumes, pseudo-labels for the 125 other train volumes; evaluated on validation
# only). From frozen code (commit 2577fe0, which has `unpack --member`), one thread.
#
#   mkdir -p /work/i20stcode && git archive 2577fe0 | tar -x -C /work/i20stcode && echo 2577fe0 > /work/i20stcode/COMMIT
#   bash run.sh NAME [--set KEY=VALUE ...]     # start or resume student NAME (its folder: RUNS/i20/round3/NAME)
#
# e.g. `bash run.sh w16-s0` (the second round's recipe again) or
# `bash run.sh w32-s0 --set model.base_width=32 --set train.precision=mixed_bfloat16`.
# The finished student's result_val.json (with "code_commit" and "overrides" added) and its
# fine-tuning stage file are committed in NAME/ beside this script at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
name=$1; shift
CODE=${CODE:-/work/i20stcode} RUNS=${RUNS:-/work/runs} PY=$repo/.venv/bin/python
release=$repo/docs/results/hippocampus/release/hippocampus-5pct-round2
model=$RUNS/i20/round3/hippocampus-5pct-round2
if [[ ! -f $model/saved_model.pb ]]; then  # the second-round release, as committed
  mkdir -p "$model.tmp" && git -C "$repo" archive e4bbc72 saved_models/hippocampus-5pct | tar -x -C "$model.tmp" &&
    mv "$model.tmp/saved_models/hippocampus-5pct" "$model" && rm -rf "$model.tmp"
fi
teachers=()
for i in 0 1; do
  t=$RUNS/i20/round3/teacher$i/fold0/frac0.05/self-training
  if [[ ! -f $t/finetune/stage.json ]]; then
    (cd "$CODE" && "$PY" cli.py unpack "$model" --member $i --force \
        --result "$release/seed$i/result_val.json" --stage "$release/seed$i/finetune_stage.json" --to "$t")
  fi
  teachers+=("\"$t\"")
done
list=$(IFS=,; echo "[${teachers[*]}]")
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
(cd "$CODE" && "$PY" cli.py run --config configs/hippocampus.yaml --data "$repo/../shared/data/Task04_Hippocampus" \
    --method self-training --fraction 0.05 --fold 0 --out "$RUNS/i20/round3/$name" --evaluate-on val \
    --set "data.cache_dir=$RUNS/cache" --set "train.self_training.teachers=$list" "$@")
here_ps=$repo/docs/results/hippocampus/paper-schedule
source "$here_ps/common.sh"
run=$RUNS/i20/round3/$name/fold0/frac0.05/self-training dest=$here/$name
keep_finished "$run" "$dest" "self-training round 3, $name: validation result and stage file (code $commit)" "$@"
