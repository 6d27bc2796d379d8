"""One worker of a two-process MultiWorkerMirroredStrategy run of `engine_step` stages.

    python multiworker_step.py --index I --ports P0,P1 --init DIR --out DIR --stages global,finetune

Sets TF_CONFIG for worker I of a cluster of workers on 127.0.0.1:P0 and 127.0.0.1:P1,
makes the strategy with `make_strategy` (MultiWorkerMirroredStrategy because TF_CONFIG
is set) and runs `engine_step.run_stages` with it: one step of each stage on the fixed
global batch (each worker gets its half), the weights after it written to
OUT/<stage>_after.npz. Prints `RESULT {json}`. The test compares them with a
single-process run of the same stages on the same global batch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--init", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stages", default="global,finetune")
    args = ap.parse_args()
    workers = [f"127.0.0.1:{p}" for p in args.ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": args.index}})

    import tensorflow as tf

    import engine_step
    from tfsemiseg.training.strategy import make_strategy

    strategy = make_strategy()
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), type(strategy)
    results = engine_step.run_stages(strategy, args.init, args.out, args.stages.split(","))
    print("RESULT " + json.dumps({"index": args.index, "replicas": strategy.num_replicas_in_sync,
                                  "stages": results}), flush=True)


if __name__ == "__main__":
    main()
