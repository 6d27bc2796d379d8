#!/usr/bin/env bash
# Self-training for the all-labels model, towards the next `hippocampus` release: the
# release of 2026-12-02 (saved_models/hippocampus then, 40 epochs, member 0 of it since, rebuilt as a run folder by ../hippocampus/unpack.sh) labels the
# 130 volumes of imagesTs (`data.use_test_images_unlabeled=true`; they have no labels), and a
# student learns from every train label of fold 0 and those pseudo-labels (8 + 8 slices a step).
# Fold 0, random init, evaluated on validation only; from frozen code (commit 2577fe0), one thread.
#
#   mkdir -p /work/i20stcode && git archive 2577fe0 | tar -x -C /work/i20stcode && echo 2577fe0 > /work/i20stcode/COMMIT
#   bash run.sh NAME [--set KEY=VALUE ...]   # start or resume student NAME (restores NAME/partial/ first)
#   bash run.sh NAME save                    # keep its latest checkpoint in NAME/partial/
#
# Each student has a folder NAME/ with a run.sh giving its options (NAME/run.sh [save]).
# The finished student's result_val.json (with "code_commit" and "overrides" added) and its
# fine-tuning stage file are committed in NAME/ beside this script, and NAME/partial/ dropped, at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
name=$1; shift
CODE=${CODE:-/work/i20stcode} RUNS=${RUNS:-/work/runs} PY=$repo/.venv/bin/python
out=$RUNS/i20/all-labels-st/$name dest=$here/$name
keep() { SRC=$out KEEP=$dest/partial DONE=$dest bash "$repo/docs/results/hippocampus/paper-schedule/partial.sh" "$1"; }
if [[ ${1:-} == save ]]; then keep save; exit; fi
keep restore
teacher=$(RUNS=$RUNS bash "$here/../hippocampus/unpack.sh")
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
(cd "$CODE" && "$PY" cli.py run --config configs/hippocampus.yaml --data "$repo/../shared/data/Task04_Hippocampus" \
    --method self-training --fraction 1.0 --fold 0 --out "$out" --evaluate-on val \
    --set "data.cache_dir=$RUNS/cache" --set data.use_test_images_unlabeled=true \
    --set "train.self_training.teachers=[\"$teacher\"]" --set train.finetune_stage.checkpoint_every_steps=600 "$@")
source "$repo/docs/results/hippocampus/paper-schedule/common.sh"
run=$out/fold0/frac1/self-training
rm -rf "$dest/partial"  # the commit's `git add` stages its removal too
keep_finished "$run" "$dest" "all-labels self-training, $name: validation result and stage file (code $commit)" "$@"
