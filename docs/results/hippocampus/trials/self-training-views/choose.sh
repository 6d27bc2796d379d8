#!/usr/bin/env bash
# The 5% candidates made of these students, on validation only.
#
#   bash choose.sh CANDIDATE...    # -> RUNS/i20/views5/candidates/CANDIDATE/metadata.json, copied to candidates/
#
# A candidate is one member or several joined by '+', averaged inside one SavedModel (members
# along different axes as views, in 3D). Members: `release` (the third-round hippocampus-5pct,
# the teacher, unpacked by run.sh) or a student NAME of run.sh. Each is exported with `--parts val`
# (test-time mirroring, as served); the test part is evaluated once, for the candidate chosen.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUNS=${RUNS:-/work/runs}
for name in "$@"; do
  members=()
  IFS=+ read -r -a parts <<< "$name"
  for m in "${parts[@]}"; do
    run=$RUNS/i20/views5/$m/fold0/frac0.05/self-training
    [[ -f $run/finetune/stage.json ]] || { echo "choose.sh: $m is not finished ($run)" >&2; exit 1; }
    members+=("$run")
  done
  bash "$here/../../release/export_candidate.sh" "$name" "$RUNS/i20/views5/candidates/$name" "$here/candidates" "${members[@]}"
done
