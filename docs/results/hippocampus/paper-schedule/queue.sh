#!/usr/bin/env bash
# The paper's Table 1 at the paper's schedule (configs/hippocampus.yaml unchanged: 70 global,
# 60 local, 120 fine-tuning epochs, width 16, float32) as one resumable single-thread queue.
#
#   CODE=/work/gridcode RUNS=/work/runs bash docs/results/hippocampus/paper-schedule/queue.sh FOLD...
#
# CODE is a frozen copy of the repository at one commit (its COMMIT file names it), so every
# cell comes from the same code while the live checkout changes. Cells run fold by fold,
# fraction by fraction, in the order of METHODS; each finished cell's result.json is copied
# next to this script (with "code_commit" added) and committed at once, and so is each
# fold's finished global stage (stage.json + weights.npz), which a new machine restores
# before training, so that no finished work is lost when a machine is replaced. After each
# cell, update_docs.py rewrites the report and the tables quoted in README.md and
# docs/results.md, and the change is committed.
# Re-running the same command resumes: finished cells are skipped, a stage restarts from
# its latest checkpoint in RUNS.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
METHODS=${METHODS:-"random global global+local-block global+local-stride"}
FRACTIONS=${FRACTIONS:-"0.05 0.1 0.2"}

for fold in "$@"; do
  gdone=$RUNS/paper/fold$fold/global
  gsaved=$here/fold$fold/global
  if [[ -f $gsaved/stage.json && ! -f $gdone/stage.json ]]; then   # a new machine: restore it
    mkdir -p "$gdone" && cp "$gsaved/stage.json" "$gsaved/weights.npz" "$gdone/"
  fi
  for frac in $FRACTIONS; do
    for method in $METHODS; do
      out=$here/fold$fold/frac$frac/$method/result.json
      [[ -f $out ]] && continue
      echo "== $(date -u +%FT%TZ) fold $fold, $frac, $method"
      (cd "$CODE" && "$PY" cli.py experiment --config configs/hippocampus.yaml --data "$DATA" \
          --out "$RUNS/paper" --folds "$fold" --fractions "$frac" --methods "$method" \
          --set "data.cache_dir=$RUNS/cache") || { echo "cell failed: fold $fold $frac $method" >&2; continue; }
      if [[ -f $gdone/stage.json && ! -f $gsaved/stage.json ]]; then
        mkdir -p "$gsaved" && cp "$gdone/stage.json" "$gdone/weights.npz" "$gsaved/"
        git_commit "paper-schedule grid: fold $fold global stage (code $commit)" "$gsaved"
      fi
      src=$RUNS/paper/fold$fold/frac$frac/$method/result.json
      keep_result "$src" "$out"
      git_commit "paper-schedule grid: fold $fold, $frac, $method (code $commit)" "$out"
      docs=("$repo/README.md" "$repo/docs/results.md" "$here/report")  # the tables follow each cell
      if "$PY" "$here/update_docs.py" && [[ -n $(git -C "$repo" status --porcelain -- "${docs[@]}") ]]; then
        git_commit "paper-schedule: tables and claims with fold $fold, $frac, $method" "${docs[@]}"
      fi
    done
  done
done
