#!/usr/bin/env bash
# Once run.sh has finished: the candidates for the next `hippocampus` release, on validation only.
#
#   bash choose.sh            # -> OUT/candidates/{full120,release,full120+release,w32}/metadata.json
#
# full120          the 120-epoch run alone
# release          today's saved_models/hippocampus (40 epochs), its run rebuilt by `unpack`
#                  from the SavedModel and its result.json kept in docs/results
# full120+release  both, averaging their softmax inside one SavedModel
# w32              the width-32 bfloat16 run of ../all-labels-w32/run.sh, once it has finished
# Each is exported with `--parts val` (test-time mirroring, as served); the metadata of each is
# copied beside this script as candidates/NAME.json. The test part is evaluated once, for the
# candidate chosen, by the release's own export command (the "release" candidate's metadata
# carries the test figures published with it; they play no part in the choice).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
OUT=$(realpath -m "${OUT:-/work/runs/i20/full120}")
REL=$(realpath -m "${REL:-/work/runs/i20/release40}")
W32=$(realpath -m "${W32:-/work/runs/i20/w32}")/fold0/frac1/random
data=$repo/../shared/data/Task04_Hippocampus
cli() { (cd "$repo" && TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 .venv/bin/python cli.py "$@"); }
full=$OUT/fold0/frac1/random
[[ -f $full/result_val.json ]] || { echo "$full: not finished (no result_val.json); run run.sh first" >&2; exit 1; }
rel=$REL/fold0/frac1/random
[[ -f $rel/result.json ]] || cli unpack saved_models/hippocampus \
  --result docs/results/hippocampus/release/hippocampus/result.json --to "$rel"
mkdir -p "$here/candidates"
names=(full120 release full120+release)
[[ -f $W32/result_val.json ]] && names+=(w32)
for name in "${names[@]}"; do
  case $name in full120) members=("$full") ;; release) members=("$rel") ;; w32) members=("$W32") ;;
    *) members=("$full" "$rel") ;; esac
  dest=$OUT/candidates/$name
  grep -q '"val_metrics"' "$dest/metadata.json" 2>/dev/null ||
    cli export "${members[@]}" --to "$dest" --data "$data" --parts val --force
  cp "$dest/metadata.json" "$here/candidates/$name.json"
  python3 - "$dest/metadata.json" "$name" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))["val_metrics"]
print(f"{sys.argv[2]:16s} validation pooled Dice {v['pooled_dice']['mean']:.4f}  "
      f"per-volume Dice {v['volume_dice']['mean_over_classes']:.4f}  HD95 {v['hd95_mm']['mean_over_classes']:.2f} mm")
EOF
done
