#!/usr/bin/env bash
# Towards the next `hippocampus` release: the release's recipe (random init, fold 0, every train
# label, width 16, float32, one thread) on slices along another axis of the volumes, so that the
# views can be averaged in 3D with the release's (axis 2). Called by axis0/run.sh and axis1/run.sh;
# frozen code (commit 2a4c55e):
#
#   mkdir -p /work/i20viewcode && git archive 2a4c55e | tar -x -C /work/i20viewcode && echo 2a4c55e > /work/i20viewcode/COMMIT
#   bash axisN/run.sh         # start or resume (restores axisN/partial/ first on a new machine)
#   bash axisN/run.sh save    # keep the latest checkpoint in axisN/partial/
#
# The release trained 40 epochs of 587 steps (4,703 axis-2 slices, batch 8). Axis 0 has 4,667
# slices (583 steps an epoch): 40 epochs. Axis 1 has 6,603 (825 steps): 28 epochs, the same
# number of steps within 2%. Each view validates every 2 epochs over its last 12 or so epochs
# and keeps its best checkpoint, as the release did. Each view has its own slice cache, since
# the cache keeps one entry per case.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
axis=${1:?usage: run.sh AXIS [save]}; shift
case $axis in
  0) epochs=40 from=28 ;;
  1) epochs=28 from=16 ;;
  *) echo "run.sh: AXIS must be 0 or 1 (the release slices along 2)" >&2; exit 2 ;;
esac
CODE=${CODE:-/work/i20viewcode} OUT=${OUT:-/work/runs/i20/views/axis$axis} KEEP=$here/axis$axis/partial \
  SETS="--set data.slice_axis=$axis --set data.cache_dir=/work/runs/i20/views/cache$axis \
--set train.finetune_stage.epochs=$epochs --set train.finetune_stage.validate_every_epochs=2 \
--set train.finetune_stage.validate_from_epoch=$from" \
  exec bash "$here/../all-labels-120/run.sh" "$@"
