"""Benchmark of the input pipelines alone: slices per second per stage, with augmentation.

Uses the configured augmentation (default configs/hippocampus.yaml) on real Hippocampus
slices when ../shared/data is present (synthetic 64x64 slices otherwise), iterates each
stage's tf.data pipeline for `--batches` batches after warm-up and prints slices/s.
Compare with the images/s a training step consumes (bench_train_step.py).

    python benchmarks/bench_pipeline.py --batches 100
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL = REPO_ROOT.parent / "shared" / "data" / "Task04_Hippocampus"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "hippocampus.yaml"))
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tempfile

    import numpy as np

    from tfsemiseg.config import load_config
    from tfsemiseg.data.pipelines import finetune_dataset, global_dataset, local_dataset

    cfg = load_config(args.config)
    if (REAL / "dataset.json").is_file():
        from tfsemiseg.data.prepared import prepare_dataset, training_arrays

        with tempfile.TemporaryDirectory() as tmp:
            data = prepare_dataset(cfg, REAL, Path(tmp))
        arrays = training_arrays(data, data.split(0), 0.2)
        images, labeled, labels, source = arrays.unlabeled_images, arrays.labeled_images, arrays.labeled_labels, "real"
    else:
        rng = np.random.default_rng(0)
        images = labeled = rng.random((2000, 64, 64), np.float32)
        labels = (rng.random((2000, 64, 64)) > 0.95).astype(np.uint8)
        source = "synthetic"
    t = cfg.train
    cases = {
        "global (2 views, spatial + intensity)": (global_dataset(images, t.global_stage.batch_size, cfg.augment), 2 * t.global_stage.batch_size),
        "local (2 views, intensity)": (local_dataset(labeled, labels, t.local_stage.batch_size, cfg.augment), 2 * t.local_stage.batch_size),
        "finetune (spatial + intensity, image + label)": (finetune_dataset(labeled, labels, t.finetune_stage.batch_size, cfg.augment), t.finetune_stage.batch_size),
    }
    print(f"input pipelines, {source} {cfg.data.image_size}x{cfg.data.image_size} slices, config {args.config}")
    print("| stage | batch (views) | augmented slices/s |")
    print("|---|---|---|")
    for name, (ds, per_batch) in cases.items():
        it = iter(ds)
        for _ in range(args.warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        rate = args.batches * per_batch / (time.perf_counter() - t0)
        print(f"| {name} | {per_batch} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
