#!/usr/bin/env bash
# Student w16-e60: width 16, float32, 60 epochs (8 labeled + 8 pseudo-labeled slices a step),
# validated at epochs 45-60.  `bash run.sh` starts or resumes it; `bash run.sh save` keeps its
# latest checkpoint in partial/ beside this script (paper-schedule/autosave.sh calls this).
here=$(cd "$(dirname "$0")" && pwd)
if [[ ${1:-} == save ]]; then exec bash "$here/../run.sh" w16-e60 save; fi
exec bash "$here/../run.sh" w16-e60 --set train.finetune_stage.epochs=60 \
  --set train.finetune_stage.validate_from_epoch=45 "$@"
