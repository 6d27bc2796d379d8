#!/usr/bin/env bash
# The candidates for the next `hippocampus` release, on validation only.
#
#   bash choose.sh [CANDIDATE...]    # -> OUT/candidates/CANDIDATE/metadata.json, copied to candidates/CANDIDATE.json
#
# A candidate is one member or several joined by '+', averaging their softmax inside one
# SavedModel (`export RUN...`). The members:
#   full120           the 120-epoch run of run.sh (its run folder is gone since 2026-12-03:
#                     candidates/full120*.json keep its figures)
#   release           the 40-epoch run along axis 2: saved_models/hippocampus until 2026-12-04,
#                     member 0 of it since, its run rebuilt by ../hippocampus/unpack.sh
#   w32               the width-32 bfloat16 run of ../all-labels-w32/run.sh
#   st-NAME           student NAME of ../all-labels-self-training/run.sh
#   axis0, axis1      the release's recipe on slices along axis 0 or 1 (../all-labels-views/run.sh),
#                     members 1 and 2 of saved_models/hippocampus since 2026-12-04 (rebuilt by
#                     ../hippocampus/unpack.sh 1|2 if their run folders are gone); averaged with
#                     members along axis 2 in 3D, inside the model
# Without arguments: full120, release and full120+release (the first comparison).
# Each is exported with `--parts val` (test-time mirroring, as served). The test part is
# evaluated once, for the candidate chosen, by the release's own export command (the "release"
# candidate's metadata carries the test figures published with it; they play no part in the choice).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUNS=${RUNS:-/work/runs}
OUT=$(realpath -m "${OUT:-$RUNS/i20/full120}")
member() {  # member NAME -> its finished run folder
  local run
  case $1 in
    full120) run=$OUT/fold0/frac1/random ;;
    release) run=$(RUNS=$RUNS bash "$here/../hippocampus/unpack.sh") ;;
    w32) run=$RUNS/i20/w32/fold0/frac1/random ;;
    st-*) run=$RUNS/i20/all-labels-st/${1#st-}/fold0/frac1/self-training ;;
    axis0|axis1) run=$(RUNS=$RUNS bash "$here/../hippocampus/unpack.sh" $((${1#axis} + 1))) ;;
    *) echo "choose.sh: unknown member $1 (full120, release, w32, st-NAME, axis0, axis1)" >&2; return 1 ;;
  esac
  [[ -f $run/result_val.json || -f $run/result.json ]] || { echo "choose.sh: $1 is not finished ($run)" >&2; return 1; }
  echo "$run"
}
(( $# )) || set -- full120 release full120+release
for name in "$@"; do
  members=()
  IFS=+ read -r -a parts <<< "$name"
  for m in "${parts[@]}"; do members+=("$(member "$m")"); done
  bash "$here/../export_candidate.sh" "$name" "$OUT/candidates/$name" "$here/candidates" "${members[@]}"
done
