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
repo=$(git -C "$here" rev-parse --show-toplevel)
RUNS=${RUNS:-/work/runs}
data=$repo/../shared/data/Task04_Hippocampus
mkdir -p "$here/candidates"
for name in "$@"; do
  members=()
  IFS=+ read -r -a parts <<< "$name"
  for m in "${parts[@]}"; do
    run=$RUNS/i20/views5/$m/fold0/frac0.05/self-training
    [[ -f $run/finetune/stage.json ]] || { echo "choose.sh: $m is not finished ($run)" >&2; exit 1; }
    members+=("$run")
  done
  dest=$RUNS/i20/views5/candidates/$name
  grep -q '"val_metrics"' "$dest/metadata.json" 2>/dev/null ||
    (cd "$repo" && TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 .venv/bin/python cli.py export "${members[@]}" \
       --to "$dest" --data "$data" --parts val --force)
  cp "$dest/metadata.json" "$here/candidates/$name.json"
  python3 - "$dest/metadata.json" "$name" "$(du -sb "$dest" | cut -f1)" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["val_metrics"]
print(f"{sys.argv[2]:32s} validation pooled Dice {v['pooled_dice']['mean']:.4f}  "
      f"per-volume Dice {v['volume_dice']['mean_over_classes']:.4f}  HD95 {v['hd95_mm']['mean_over_classes']:.2f} mm  "
      f"{int(sys.argv[3]):,} bytes")
PY
done
