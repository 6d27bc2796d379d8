#!/usr/bin/env bash
# One-variable trials for the paper-schedule grid, on fold 0's validation volumes.
#
#   CODE=/work/gridcode RUNS=/work/runs bash trial.sh NAME FRACTION "METHOD..." [--set KEY=VALUE ...]
#
# Runs each METHOD with `cli.py run` on fold 0 from the frozen code tree CODE (the grid's
# commit, so that a trial differs from the grid's cell only by its overrides),
# configs/hippocampus.yaml plus the --set overrides, in RUNS/trials/NAME; the fold's finished
# global stage committed by the grid is reused when the overrides leave it unchanged or change
# only the local head, which it never builds (redigest_global.py). Trials
# are compared on the validation Dice in their stage histories: the grid's code evaluates a
# run on test too, and those test figures are left out of the copy of its result.json kept as
# NAME/fracF/METHOD/trial.json beside this script (with "code_commit" and "overrides" added),
# which is committed with the fine-tuning stage's file (finetune_stage.json: every validation
# in its history). Rerun to resume. FRESH_GLOBAL=1 trains the trial its own global stage (for
# overrides that change it, e.g. model.base_width) instead of reusing the grid's. Methods
# without a global stage (random, mixup, ...) neither copy nor check the grid's.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/common.sh"
name=$1 frac=$2 methods=$3; shift 3
out=$RUNS/trials/$name
gsaved=$here/fold0/global
tsaved=$here/trials/$name/global  # a FRESH_GLOBAL trial's own finished global stage, kept in the repo
if [[ ${FRESH_GLOBAL:-0} == 1 && -f $tsaved/stage.json && ! -f $out/fold0/global/stage.json ]]; then
  mkdir -p "$out/fold0/global" && cp "$tsaved/stage.json" "$tsaved/weights.npz" "$out/fold0/global/"
fi
uses_global=0; for method in $methods; do [[ $method == global* ]] && uses_global=1; done
if [[ $uses_global == 1 && ${FRESH_GLOBAL:-0} != 1 && -f $gsaved/stage.json && ! -f $out/fold0/global/stage.json ]]; then
  mkdir -p "$out/fold0/global" && cp "$gsaved/stage.json" "$gsaved/weights.npz" "$out/fold0/global/"
fi
if [[ $uses_global == 1 && ${FRESH_GLOBAL:-0} != 1 && -f $out/fold0/global/stage.json ]]; then  # overrides of the local head only: the same global stage
  (cd "$CODE" && "$PY" "$here/trials/redigest_global.py" "$out/fold0/global/stage.json" configs/hippocampus.yaml "$@") || exit 1
fi
for method in $methods; do
  dest=$here/trials/$name/frac$frac/$method/trial.json  # not result.json: no test figures, not a grid cell
  [[ -f $dest ]] && continue
  echo "== $(date -u +%FT%TZ) trial $name, $frac, $method: $*"
  (cd "$CODE" && "$PY" cli.py run --config configs/hippocampus.yaml --data "$DATA" --out "$out" \
      --fold 0 --fraction "$frac" --method "$method" \
      --set "data.cache_dir=$RUNS/cache" "$@") || { echo "trial failed: $name $method" >&2; continue; }
  if [[ ${FRESH_GLOBAL:-0} == 1 && -f $out/fold0/global/stage.json && ! -f $tsaved/stage.json ]] &&
     ! cmp -s "$out/fold0/global/weights.npz" "$gsaved/weights.npz"; then  # its own, not a copy of the grid's
    mkdir -p "$tsaved" && cp "$out/fold0/global/stage.json" "$out/fold0/global/weights.npz" "$tsaved/"
    git_commit "paper-schedule trial $name: its global stage (code $commit)" "$tsaved"
  fi
  src=$(ls -d "$out"/fold0/frac*/"$method"/result.json | head -1)
  keep_result "$src" "$dest" 'r.pop("metrics", None); r.pop("extra_metrics", None); r["test_metrics"] = "left out: trials are compared on validation"; r["overrides"] = sys.argv[4:]' "$@"
  cp "$(dirname "$src")/finetune/stage.json" "$(dirname "$dest")/finetune_stage.json"
  git_commit "paper-schedule trial $name: $frac, $method (code $commit)" "$dest" "$(dirname "$dest")/finetune_stage.json"
done
