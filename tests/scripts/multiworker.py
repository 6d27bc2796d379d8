"""One worker of a two-process MultiWorkerMirroredStrategy fine-tune run.

    python multiworker.py --index I --ports P0,P1 --out DIR [--steps N]

Sets TF_CONFIG for worker I of a cluster of workers on 127.0.0.1:P0 and 127.0.0.1:P1,
makes the strategy with `make_strategy` (MultiWorkerMirroredStrategy because TF_CONFIG
is set), fine-tunes a tiny U-Net for N steps on slices of a small phantom volume through
`Trainer.fit` (both in the stage folder DIR/stage, where only the chief writes), then writes the weights to
DIR/worker<I>.npz (the initial ones to DIR/worker<I>_init.npz) and prints a line
`RESULT {json}`.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    workers = [f"127.0.0.1:{p}" for p in args.ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": args.index}})

    import keras
    import tensorflow as tf

    from tfsemiseg.config import Config
    from tfsemiseg.data.prepared import TrainingArrays
    from tfsemiseg.models.transfer import save_weights_by_name
    from tfsemiseg.training.engine import Trainer
    from tfsemiseg.training.stages import FinetuneTask
    from tfsemiseg.training.strategy import make_strategy

    strategy = make_strategy()
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), type(strategy)
    keras.utils.set_random_seed(0)
    images, labels = phantom_slices()
    arrays = TrainingArrays(images, images, labels, [], [])
    cfg = Config().replace(**{
        "data.image_size": 32, "model.depth": 2, "model.base_width": 4, "train.deterministic": True,
        "train.finetune_stage": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "checkpoint_every_steps": 2},
    })
    task = FinetuneTask(cfg, arrays, 3, num_replicas=strategy.num_replicas_in_sync)
    task.steps_per_epoch = args.steps  # the stage's own (augmenting) pipeline, sharded by the strategy
    trainer = Trainer(task, task.optim, args.out / "stage", strategy, seed=0, progress=False)
    save_weights_by_name(task.output_model, args.out / f"worker{args.index}_init.npz")
    result = trainer.fit()
    save_weights_by_name(task.output_model, args.out / f"worker{args.index}.npz")
    print("RESULT " + json.dumps({
        "index": args.index, "replicas": strategy.num_replicas_in_sync, "steps": result.steps, "chief": trainer.chief,
        "loss": result.last_loss, "iterations": int(trainer.optimizer.iterations.numpy()),
    }), flush=True)


if __name__ == "__main__":
    main()
