"""One worker of a two-process MultiWorkerMirroredStrategy run of `engine_step` stages.

    python multiworker_step.py --index I --ports P0,P1 --init DIR --out DIR --stages global,finetune
                               [--fit-out DIR --fit-steps N]

Sets TF_CONFIG for worker I of a cluster of workers on 127.0.0.1:P0 and 127.0.0.1:P1,
makes the strategy with `make_strategy` (MultiWorkerMirroredStrategy because TF_CONFIG
is set) and runs `engine_step.run_stages` with it: one step of each stage on the fixed
global batch (each worker gets its half), the weights after it written to
OUT/<stage>_after.npz. Prints `RESULT {json}`. The test compares them with a
single-process run of the same stages on the same global batch. With --fit-out, the same
workers then run `fit`: N steps of fine-tuning through `Trainer.fit` in the stage folder
FIT_OUT/stage, the weights before and after in FIT_OUT/worker<I>_init.npz and
FIT_OUT/worker<I>.npz; the line holds its result as "fit".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def phantom_slices(n: int = 8, size: int = 32):
    """`n` slices [n, size, size] of one phantom volume, min-max normalised, and labels."""
    import numpy as np

    from tfsemiseg.data.phantom import phantom_volume

    image, label = phantom_volume(np.random.default_rng(0), (size, size, n))
    image = np.moveaxis(image, -1, 0)
    label = np.moveaxis(label, -1, 0)
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32), label.astype(np.uint8)


def fit(strategy, out: Path, index: int, steps: int) -> dict:
    """Fine-tune the tiny U-Net for `steps` steps in `out/stage` through `Trainer.fit`; the
    initial and final weights go to `out/worker<index>_init.npz` and `out/worker<index>.npz`."""
    import keras

    from tfsemiseg.config import Config
    from tfsemiseg.data.prepared import TrainingArrays
    from tfsemiseg.models.transfer import save_weights_by_name
    from tfsemiseg.training.engine import Trainer
    from tfsemiseg.training.stages import FinetuneTask

    keras.utils.set_random_seed(0)
    images, labels = phantom_slices()
    arrays = TrainingArrays(images, images, labels, [], [])
    cfg = Config().replace(**{
        "data.image_size": 32, "model.depth": 2, "model.base_width": 4, "train.deterministic": True,
        "train.finetune_stage": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "checkpoint_every_steps": 2},
    })
    task = FinetuneTask(cfg, arrays, 3, num_replicas=strategy.num_replicas_in_sync)
    task.steps_per_epoch = steps  # the stage's own (augmenting) pipeline, sharded by the strategy
    trainer = Trainer(task, task.optim, out / "stage", strategy, seed=0, progress=False)
    save_weights_by_name(task.output_model, out / f"worker{index}_init.npz")
    result = trainer.fit()
    save_weights_by_name(task.output_model, out / f"worker{index}.npz")
    return {"index": index, "replicas": strategy.num_replicas_in_sync, "steps": result.steps, "chief": trainer.chief,
            "loss": result.last_loss, "iterations": int(trainer.optimizer.iterations.numpy())}


def set_tf_config(index: int, ports: str) -> None:
    """TF_CONFIG for worker `index` of workers on 127.0.0.1 at the comma-separated `ports`."""
    workers = [f"127.0.0.1:{p}" for p in ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--init", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stages", default="global,finetune")
    ap.add_argument("--fit-out", type=Path, default=None)
    ap.add_argument("--fit-steps", type=int, default=3)
    args = ap.parse_args()

    set_tf_config(args.index, args.ports)

    import tensorflow as tf

    import engine_step
    from tfsemiseg.training.strategy import make_strategy

    strategy = make_strategy()
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), type(strategy)
    results = {"index": args.index, "replicas": strategy.num_replicas_in_sync,
               "stages": engine_step.run_stages(strategy, args.init, args.out, args.stages.split(","))}
    if args.fit_out is not None:
        results["fit"] = fit(strategy, args.fit_out, args.index, args.fit_steps)
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
