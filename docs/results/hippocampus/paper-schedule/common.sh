# Shared by queue.sh and trials/trial.sh (sourced, after setting `here`): the repository, the
# frozen code tree, the data, the interpreter, one thread per process, and git_commit.
repo=$(git -C "$here" rev-parse --show-toplevel)
CODE=${CODE:?set CODE to the frozen code tree}
RUNS=${RUNS:-/work/runs}
DATA=${DATA:-$repo/../shared/data/Task04_Hippocampus}
PY=${PY:-$repo/.venv/bin/python}
commit=$(cat "$CODE/COMMIT")
export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=${TF_NUM_INTEROP_THREADS:-1}

git_commit() {  # commit only the given paths; one git at a time, retried while another holds the lock
  local msg=$1; shift
  for _ in $(seq 30); do
    if flock "$repo/.git/grid.lock" git -C "$repo" add -- "$@" && \
       flock "$repo/.git/grid.lock" git -C "$repo" commit -q -m "$msg" -- "$@"; then return 0; fi
    sleep 10
  done
  echo "could not commit $*" >&2
}

keep_result() {  # keep_result SRC DEST [PYTHON [ARG...]]: copy a result.json with "code_commit" added,
  # edited by the Python statements PYTHON (on the dict r; the ARGs are sys.argv[4:]), written then renamed
  local src=$1 dest=$2 edit=${3:-}; shift $(($# < 3 ? $# : 3))
  mkdir -p "$(dirname "$dest")"
  "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); r['code_commit']=sys.argv[3]; $edit
json.dump(r, open(sys.argv[2], 'w'), indent=1)" "$src" "$dest.tmp" "$commit" "$@" && mv "$dest.tmp" "$dest"
}

keep_finished() {  # keep_finished RUN DEST MESSAGE [ARG...]: a finished cell's result_val.json (with "code_commit"
  # and the ARGs, the run's extra options, as "overrides") and its fine-tuning stage file kept in DEST, committed
  local run=$1 dest=$2 msg=$3; shift 3
  keep_result "$run/result_val.json" "$dest/result_val.json" 'r["overrides"] = sys.argv[4:]' "$@"
  cp "$run/finetune/stage.json" "$dest/finetune_stage.json.tmp" && mv "$dest/finetune_stage.json.tmp" "$dest/finetune_stage.json"
  git_commit "$msg" "$dest"
}
