#!/usr/bin/env bash
# Keep unfinished stages of the grid across machines.
#
#   RUNS=/work/runs bash partial.sh save      # latest checkpoint of each unfinished stage -> partial/
#   RUNS=/work/runs bash partial.sh restore   # partial/ -> RUNS, where RUNS has not got further
#
# `save` copies, for every stage folder under RUNS/paper without stage.json, its latest
# checkpoint (the `checkpoint` index and that step's files), and for a stage with
# `select_best` its best checkpoint so far (best/), into partial/ beside this script,
# replacing an older copy; `restore` copies each back into RUNS unless RUNS already holds a
# checkpoint of that stage at the same or a later step. The queue then resumes from it. A
# finished local stage of an unfinished cell, and a fold's finished global stage that the
# queue has not committed yet, are kept and restored whole (stage.json, weights).
# For another run folder: SRC=RUN_FOLDER KEEP=FOLDER_IN_THE_REPO DONE=FOLDER_IN_THE_REPO bash partial.sh
# save|restore, DONE being where that run's finished cells and global stages are committed
# (trials/NAME/partial.sh does this for a trial).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUNS=${RUNS:-/work/runs}
SRC=${SRC:-$RUNS/paper}
KEEP=${KEEP:-$here/partial}
DONE=${DONE:-$here}
step_of() { sed -n 's/^model_checkpoint_path: "ckpt-\([0-9]*\)"$/\1/p' "$1" 2>/dev/null || true; }
case "${1:-}" in
  save)
    [[ -d $SRC ]] || { echo "nothing to save: no $SRC"; exit 0; }
    rm -rf "$KEEP.new"
    while IFS= read -r index; do
      stage=$(dirname "$(dirname "$index")"); rel=${stage#"$SRC/"}
      [[ -f $stage/stage.json ]] && continue
      [[ -f $DONE/$(dirname "$rel")/result.json ]] && continue  # its cell finished (on another machine)
      step=$(step_of "$index"); [[ -n $step ]] || continue
      mkdir -p "$KEEP.new/$rel/checkpoints"
      cp "$index" "$stage/checkpoints/ckpt-$step".* "$KEEP.new/$rel/checkpoints/"
      best=$(step_of "$stage/best/checkpoint")  # a stage with select_best: its best checkpoint so far
      if [[ -n $best ]]; then mkdir -p "$KEEP.new/$rel/best" && cp "$stage/best/checkpoint" "$stage/best/ckpt-$best".* "$KEEP.new/$rel/best/"; fi
      echo "saved $rel at step $step${best:+ (best at step $best)}"
    done < <(find "$SRC" -path '*/checkpoints/checkpoint' | sort)
    while IFS= read -r info; do  # a finished local stage whose cell is unfinished: its later stage resumes on it
      stage=$(dirname "$info"); rel=${stage#"$SRC/"}
      [[ -f $(dirname "$stage")/result.json ]] && continue
      mkdir -p "$KEEP.new/$rel" && cp "$info" "$stage/weights.npz" "$KEEP.new/$rel/"
      echo "saved finished $rel"
    done < <(find "$SRC" -path '*/local/stage.json' | sort)
    while IFS= read -r info; do  # a fold's finished global stage that queue.sh has not committed yet
      stage=$(dirname "$info"); rel=${stage#"$SRC/"}
      [[ -f $DONE/$rel/stage.json ]] && continue
      mkdir -p "$KEEP.new/$rel" && cp "$info" "$stage/weights.npz" "$KEEP.new/$rel/"
      echo "saved finished $rel"
    done < <(find "$SRC" -maxdepth 3 -path '*/fold*/global/stage.json' | sort)
    rm -rf "$KEEP"; [[ -d $KEEP.new ]] && mv "$KEEP.new" "$KEEP" || true ;;
  restore)
    [[ -d $KEEP ]] || { echo "nothing saved"; exit 0; }
    while IFS= read -r index; do
      rel=$(dirname "$(dirname "${index#"$KEEP/"}")"); dest=$SRC/$rel
      have=$(step_of "$dest/checkpoints/checkpoint"); want=$(step_of "$index")
      if [[ -f $dest/stage.json || ( -n $have && $have -ge $want ) ]]; then echo "kept $rel (step ${have:-done})"; continue; fi
      mkdir -p "$dest/checkpoints" && cp "$(dirname "$index")"/* "$dest/checkpoints/"
      saved_best=$(dirname "$(dirname "$index")")/best  # the best checkpoint goes with the latest one
      if [[ -d $saved_best ]]; then rm -rf "$dest/best" && mkdir -p "$dest/best" && cp "$saved_best"/* "$dest/best/"; fi
      echo "restored $rel at step $want"
    done < <(find "$KEEP" -path '*/checkpoints/checkpoint' | sort)
    while IFS= read -r info; do
      rel=$(dirname "${info#"$KEEP/"}"); dest=$SRC/$rel
      if [[ -f $dest/stage.json ]]; then echo "kept finished $rel"; continue; fi
      mkdir -p "$dest" && cp "$info" "$(dirname "$info")/weights.npz" "$dest/"
      echo "restored finished $rel"
    done < <(find "$KEEP" -name stage.json | sort) ;;
  *) echo "usage: partial.sh save|restore" >&2; exit 2 ;;
esac
