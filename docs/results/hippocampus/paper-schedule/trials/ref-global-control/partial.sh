#!/usr/bin/env bash
# Keeps this trial's unfinished stages (RUNS/trials/NAME, NAME being this folder's name) in
# partial/ beside this script, for autosave.sh and a new machine:
#   RUNS=/work/runs bash partial.sh save|restore
# A copy of it serves any other trial: put it in trials/OTHER_NAME/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SRC=${RUNS:-/work/runs}/trials/$(basename "$here") KEEP=$here/partial DONE=$here \
  bash "$here/../../partial.sh" "$@"
# trial.sh commits the trial's finished global stage as NAME/global: no second copy in partial/
if [[ ${1:-} == save && -f $here/global/stage.json ]]; then rm -rf "$here/partial/fold0/global"; fi
