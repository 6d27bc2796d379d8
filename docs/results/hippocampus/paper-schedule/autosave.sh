#!/usr/bin/env bash
# Keep the latest checkpoints of long runs in the repository while they run, so that a machine
# replaced before the session's end loses at most EVERY minutes of each run.
#
#   RUNS=/work/runs FIRST=100 EVERY=60 setsid nohup bash autosave.sh SCRIPT... >> /work/runs/autosave.log 2>&1 &
#
# Each SCRIPT keeps its run's unfinished stages in a partial/ folder beside itself when called
# as `bash SCRIPT save` (paper-schedule/partial.sh, release/*/run.sh). FIRST minutes after the
# start, then every EVERY minutes, each SCRIPT saves and its partial/ folder is committed if it
# changed. Stops once no training process (`cli.py experiment|run`) is left.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
FIRST=${FIRST:-60} EVERY=${EVERY:-60}
(( $# )) || { echo "usage: autosave.sh SCRIPT..." >&2; exit 2; }
sleep $((FIRST * 60))
while pgrep -f "cli.py (experiment|run) " > /dev/null; do
  for script in "$@"; do
    keep=$(cd "$(dirname "$script")" && pwd)/partial
    bash "$script" save || { echo "$(date -u +%FT%TZ) save failed: $script" >&2; continue; }
    if [[ -n $(git -C "$repo" status --porcelain -- "$keep") ]]; then
      flock "$repo/.git/grid.lock" git -C "$repo" add -A -- "$keep" && \
      flock "$repo/.git/grid.lock" git -C "$repo" commit -q -m \
        "$(basename "$(dirname "$keep")"): latest checkpoints of the unfinished stages kept for a new machine" -- "$keep" && \
      echo "$(date -u +%FT%TZ) committed $keep"
    fi
  done
  sleep $((EVERY * 60))
done
echo "$(date -u +%FT%TZ) no training process left; stopped"
