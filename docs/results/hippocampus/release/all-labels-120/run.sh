#!/usr/bin/env bash
# The all-labels trial towards the next `hippocampus` release: random init, fold 0, every train
# label, configs/hippocampus.yaml as it is (120 fine-tuning epochs, validated at 100-120),
# evaluated on validation, from frozen code (commit 746326e), one thread.
#
#   mkdir -p /work/i20code && git archive 746326e | tar -x -C /work/i20code && echo 746326e > /work/i20code/COMMIT
#   bash run.sh            # start or resume (restores partial/ first on a new machine)
#   bash run.sh save       # keep the latest checkpoint in partial/ beside this script
#
# Once the run finishes, its result_val.json (with "code_commit", and SETS as "overrides") and its fine-tuning
# stage file are copied beside its partial/ folder, the folder is dropped, and both are
# committed at once, so a finished run is never lost with its machine.
#
# A variant of the trial (another folder with its own run.sh) sets CODE, OUT, KEEP (its own
# partial/ folder) and SETS (further `--set` options, one string) and execs this script.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
CODE=${CODE:-/work/i20code} OUT=${OUT:-/work/runs/i20/full120} KEEP=${KEEP:-$here/partial}
read -r -a sets <<< "${SETS:-}"
keep() { SRC=$OUT KEEP=$KEEP bash "$repo/docs/results/hippocampus/paper-schedule/partial.sh" "$1"; }
if [[ ${1:-} == save ]]; then keep save; exit; fi
keep restore
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
(cd "$CODE" && "$repo/.venv/bin/python" cli.py run --config configs/hippocampus.yaml \
  --data "$repo/../shared/data/Task04_Hippocampus" --method random --fraction 1.0 --fold 0 \
  --out "$OUT" --evaluate-on val \
  --set "data.cache_dir=$(dirname "$OUT")/cache" --set train.finetune_stage.checkpoint_every_steps=600 "${sets[@]}")
dest=$(dirname "$KEEP") run=$OUT/fold0/frac1/random
source "$repo/docs/results/hippocampus/paper-schedule/common.sh"
rm -rf "$KEEP"  # the commit's `git add` stages its removal too
keep_finished "$run" "$dest" "$(basename "$dest") run finished (code $commit): result_val.json and its fine-tuning stage file" "${sets[@]}"
