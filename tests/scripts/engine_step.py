"""Subprocess entry point: one training step of every stage on a fixed global batch.

    python engine_step.py --devices N --out DIR [--init DIR] [--clip-norm X]

Logical CPU devices must be configured before TensorFlow initialises, hence a separate
process per device count. For each stage (global, local-stride, local-block, finetune)
it builds the Task, loads the initial weights from `--init/<stage>_init.npz` (or, without
`--init`, writes its own fresh initial weights there), runs exactly one step through
`Trainer.fit` (epochs 1, one step per epoch) on a dataset that repeats one fixed global
batch, then writes `<stage>_after.npz` and prints one JSON line with the losses and
optimizer iteration counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

STAGES = ("global", "local-stride", "local-block", "finetune")
BATCH = 4
SIZE = 32
NUM_CLASSES = 3


def fixed_batch(seed: int = 0):
    """Images with two blobs (classes 1 and 2) and their labels, [B, S, S] each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((BATCH, SIZE, SIZE), np.float32)
    labels = np.zeros((BATCH, SIZE, SIZE), np.uint8)
    for b in range(BATCH):
        cy, cx = rng.uniform(8, 24, 2)
        r = rng.uniform(4, 7)
        head = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        tail = (np.abs(yy - cy - r - 2) <= 2) & (np.abs(xx - cx) <= r)
        labels[b][tail] = 2
        labels[b][head] = 1
        images[b] = 0.4 + 0.1 * rng.standard_normal((SIZE, SIZE))
        images[b][labels[b] == 1] += 0.4
        images[b][labels[b] == 2] -= 0.3
    return images, labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, default=None)
    ap.add_argument("--clip-norm", type=float, default=None)
    ap.add_argument("--stages", default=",".join(STAGES))
    args = ap.parse_args()

    from tfsemiseg.training.strategy import make_strategy

    strategy = make_strategy(args.devices)  # before any other TensorFlow work

    import numpy as np
    import tensorflow as tf

    from tfsemiseg.config import Config
    from tfsemiseg.data.prepared import TrainingArrays
    from tfsemiseg.models.transfer import save_weights_by_name
    from tfsemiseg.training.engine import Trainer
    from tfsemiseg.training.stages import FinetuneTask, GlobalTask, LocalTask

    assert strategy.num_replicas_in_sync == args.devices, strategy.num_replicas_in_sync
    images, labels = fixed_batch()
    arrays = TrainingArrays(images, images, labels, [], [])
    stage_common = {"epochs": 1, "batch_size": BATCH, "learning_rate": 1e-2, "clip_norm": args.clip_norm,
                    "checkpoint_every_steps": 0}
    cfg = Config().replace(**{
        "data.image_size": SIZE,
        "model.depth": 2,
        "model.base_width": 4,
        "model.global_head_dims": [16, 8],
        "model.local_head_dims": [8, 8],
        "train.deterministic": True,
        "train.global_stage": {**stage_common, "temperature": 0.5},
        "train.local_stage": {**stage_common, "temperature": 0.1, "stride": 4, "block_size": 16},
        "train.finetune_stage": dict(stage_common),
    })
    x = tf.constant(images[..., None])
    x2 = tf.constant(np.ascontiguousarray(images[:, :, ::-1, None]) * 0.9 + 0.05)  # a second "view"
    y = tf.constant(labels.astype(np.int32))
    batches = {"global": (x, x2), "local": (x, x2, y), "finetune": (x, y)}

    results = {"devices": args.devices, "stages": {}}
    for stage in args.stages.split(","):
        kind, _, mode = stage.partition("-")
        scfg = cfg.replace(**{"train.local_stage.mode": mode}) if mode else cfg
        init_file = (args.init or args.out) / f"{stage}_init.npz"
        cls = {"global": GlobalTask, "local": LocalTask, "finetune": FinetuneTask}[kind]
        task = cls(scfg, arrays, NUM_CLASSES, init_from=(init_file, ()) if args.init else None,
                   num_replicas=args.devices)
        task.steps_per_epoch = 1
        batch = batches[kind]
        task.dataset = lambda seed, batch=batch: tf.data.Dataset.from_tensors(batch).repeat()
        trainer = Trainer(task, task.stage, args.out / stage, strategy, seed=0, progress=False)
        if args.init is None:
            save_weights_by_name(task.model, init_file)
        result = trainer.fit()
        save_weights_by_name(task.model, args.out / f"{stage}_after.npz")
        results["stages"][stage] = {
            "loss": result.last_loss,
            "steps": result.steps,
            "iterations": int(trainer.optimizer.iterations.numpy()),
        }
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
