"""One training step of every stage on a fixed global batch, on 1 or N devices.

Subprocess entry point (logical CPU devices must be configured before TensorFlow
initialises, hence one process per device count):

    python engine_step.py --devices N --init DIR --out DIR [--clip-norm X] [--stages a,b]

and importable (`write_init`, `run_stages`) for the single-device reference that the
test runs in its own process. For each stage (global, local-stride, local-block,
finetune; a "+clip" suffix sets clip_norm = CLIP_NORM) `run_stages` builds the stage's
Task with the initial weights of `DIR/<model>_init.npz`, replaces its dataset by one fixed global batch repeated, runs
exactly one step through `Trainer.fit` (one epoch of one step) and writes the weights
after the step to `OUT/<stage>_after.npz`; the local stages then take one step on a batch
without foreground (skipped). It returns the losses, the optimizer iteration counts
and what the skipped step changed.

The optimizer is Adam with epsilon = 1 instead of 1e-7: Adam's first step is
lr * g / (|g| + eps), i.e. lr * sign(g) for |g| >> eps, so with the default epsilon
gradient elements of ~1e-7 (float32 noise of a near-zero gradient) would move weights
by +-lr and no tolerance could compare the two runs. With eps = 1 the update is linear
in the gradient (everything else - Trainer, step function, strategy, optimizer
distribution - is the production code).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STAGES = ("global", "local-stride", "local-block", "local-full", "local-self", "finetune", "mixup", "tcsm")
# and "<stage>+clip"
CLIP_NORM = 0.05
MODEL_OF = {"global": "global_model", "local": "local_model", "finetune": "segmenter", "mixup": "segmenter",
            "tcsm": "segmenter"}
BATCH = 4
SIZE = 32
NUM_CLASSES = 3


def make_config(clip_norm=None):
    """Learning rates such that one step moves some weight by ~1e-2 (far above the
    comparison tolerance): Adam with epsilon 1 moves a weight by about
    lr * 0.03 * gradient, and the global stage's gradients (and the clipped ones) are
    ~100 times smaller than the local and fine-tune ones."""
    from tfsemiseg.config import Config

    small_grads = 5.0 if clip_norm is not None else 0.05
    common = {"epochs": 1, "batch_size": BATCH, "clip_norm": clip_norm, "checkpoint_every_steps": 0}
    return Config().replace(**{
        "data.image_size": SIZE,
        "model.depth": 2,
        "model.base_width": 4,
        "model.global_head_dims": [16, 8],
        "model.local_head_dims": [8, 8],
        "train.deterministic": True,
        "train.global_stage": {**common, "learning_rate": 5.0},
        "train.local_stage": {**common, "learning_rate": small_grads},
        "train.global_loss": {"temperature": 0.5},
        "train.local_loss": {"temperature": 0.1, "stride": 4, "block_size": 16},
        "train.finetune_stage": {**common, "learning_rate": small_grads},
        "train.baselines.tcsm_unlabeled_batch_size": BATCH,
        "train.baselines.tcsm_rampup_epochs": 0.0,  # full consistency weight from the first step
    })


def fixed_batch(seed: int = 0):
    """Images with two blobs (classes 1 and 2) and their labels, [B, S, S] each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((BATCH, SIZE, SIZE), np.float32)
    labels = np.zeros((BATCH, SIZE, SIZE), np.uint8)
    for b in range(BATCH):
        cy, cx = rng.uniform(8, 22, 2)
        r = rng.uniform(4, 7)
        head = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        tail = (np.abs(yy - cy - r - 2) <= 2) & (np.abs(xx - cx) <= r)
        labels[b][tail] = 2
        labels[b][head] = 1
        images[b] = 0.4 + 0.1 * rng.standard_normal((SIZE, SIZE))
        images[b][labels[b] == 1] += 0.4
        images[b][labels[b] == 2] -= 0.3
    return images, labels


def write_init(folder: Path, seed: int = 0) -> None:
    """Initial weights of each stage's model (seeded), `folder/<model>_init.npz`."""
    import keras

    from tfsemiseg.models.transfer import save_weights_by_name
    from tfsemiseg.models.unet import build_unet

    keras.utils.set_random_seed(seed)
    cfg = make_config()
    unet = build_unet(cfg.model, SIZE, NUM_CLASSES)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name in MODEL_OF.values():
        save_weights_by_name(getattr(unet, name), Path(folder) / f"{name}_init.npz")


def run_stages(strategy, init: Path, out: Path, stages=STAGES, clip_norm=None) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from tfsemiseg.data.prepared import TrainingArrays
    from tfsemiseg.models.transfer import save_weights_by_name
    from tfsemiseg.training import engine
    from tfsemiseg.training.baselines import LocalSelfTask, MixupTask, TCSMTask
    from tfsemiseg.training.stages import FinetuneTask, GlobalTask, LocalTask

    def adam_eps1(cfg, lr, precision):
        return keras.optimizers.Adam(learning_rate=lr, epsilon=1.0, global_clipnorm=cfg.clip_norm)

    n = strategy.num_replicas_in_sync
    images, labels = fixed_batch()
    arrays = TrainingArrays(images, images, labels, [], [])
    x = tf.constant(images[..., None])
    noise = np.random.default_rng(1).standard_normal(images.shape).astype(np.float32)
    x2 = tf.constant((images + 0.1 * noise)[..., None])  # second view, pixel-aligned with x
    y = tf.constant(labels.astype(np.int32))
    batches = {"global": (x, x2), "local": (x, x2, y), "local-self": (x, x2), "finetune": (x, y),
               "mixup": (x, y), "tcsm": ((x, y), x2)}
    classes = {"global": GlobalTask, "local": LocalTask, "local-self": LocalSelfTask, "finetune": FinetuneTask,
               "mixup": MixupTask, "tcsm": TCSMTask}

    results = {}
    saved = engine.make_optimizer
    engine.make_optimizer = adam_eps1
    try:
        for stage in stages:
            name, _, extra = stage.partition("+")  # "+clip": clip_norm far below the gradient norm
            kind, _, mode = name.partition("-")
            scfg = make_config(CLIP_NORM if extra == "clip" else clip_norm)
            init_file = Path(init) / f"{MODEL_OF[kind]}_init.npz"
            key = name if name in classes else kind
            if key in ("mixup", "tcsm"):  # smaller gradients (mixed targets; the teacher takes half the step)
                scfg = scfg.replace(**{"train.finetune_stage.learning_rate": 0.5})
            kw = {"mode": mode} if key == "local" else {}
            task = classes[key](scfg, arrays, NUM_CLASSES, init_from=(init_file, ()), num_replicas=n, **kw)
            task.steps_per_epoch = 1
            batch = batches[key]
            task.dataset = lambda seed, batch=batch: tf.data.Dataset.from_tensors(batch).repeat()
            trainer = engine.Trainer(task, task.optim, Path(out) / stage, strategy, seed=0, progress=False)
            result = trainer.fit()
            save_weights_by_name(task.output_model, Path(out) / f"{stage}_after.npz")
            results[stage] = {"loss": result.last_loss, "steps": result.steps,
                              "iterations": int(trainer.optimizer.iterations.numpy())}
            if kind == "local" and mode != "self":
                # then a batch without foreground: a skipped step changes nothing
                before = [v.numpy().copy() for v in task.output_model.variables]
                empty = tf.data.Dataset.from_tensors((x, x2, tf.zeros_like(y))).repeat()
                _, count = trainer._train_step(iter(strategy.experimental_distribute_dataset(empty)))
                results[stage]["skipped_count"] = float(count)
                results[stage]["skipped_unchanged"] = all(
                    np.array_equal(b, v.numpy()) for b, v in zip(before, task.output_model.variables))
                results[stage]["iterations_after_skip"] = int(trainer.optimizer.iterations.numpy())
    finally:
        engine.make_optimizer = saved
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--init", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clip-norm", type=float, default=None)
    ap.add_argument("--stages", default=",".join(STAGES))
    args = ap.parse_args()

    from tfsemiseg.training.strategy import make_strategy

    strategy = make_strategy(args.devices)  # before any other TensorFlow work
    results = run_stages(strategy, args.init, args.out, args.stages.split(","), args.clip_norm)
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "stages": results}), flush=True)


if __name__ == "__main__":
    main()
