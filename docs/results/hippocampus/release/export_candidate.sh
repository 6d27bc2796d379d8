#!/usr/bin/env bash
# One candidate model scored on validation, for the choose.sh scripts:
#
#   bash export_candidate.sh NAME DEST KEEP RUN...
#
# exports the finished RUNs as one SavedModel DEST (`export --parts val`: fold 0's validation
# volumes, test-time mirroring as served; skipped when DEST already holds validation figures),
# copies its metadata.json to KEEP/NAME.json and prints its validation figures and size.
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
name=$1 dest=$2 keep=$3; shift 3
grep -q '"val_metrics"' "$dest/metadata.json" 2>/dev/null ||
  (cd "$repo" && TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 .venv/bin/python cli.py export "$@" \
     --to "$dest" --data "$repo/../shared/data/Task04_Hippocampus" --parts val --force)
mkdir -p "$keep"
cp "$dest/metadata.json" "$keep/$name.json"
python3 - "$dest/metadata.json" "$name" "$(du -sb "$dest" | cut -f1)" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["val_metrics"]
size = int(sys.argv[3])
print(f"{sys.argv[2]:32s} validation pooled Dice {v['pooled_dice']['mean']:.4f}  "
      f"per-volume Dice {v['volume_dice']['mean_over_classes']:.4f}  HD95 {v['hd95_mm']['mean_over_classes']:.2f} mm  "
      f"{size / 2**20:.1f} MiB ({size:,} bytes)")
PY
