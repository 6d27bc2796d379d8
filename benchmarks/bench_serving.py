"""Benchmark of the exported SavedModel: seconds per Hippocampus volume through `predict`,
and ms per batch of 64x64 slices through the serving signature.

Exports a model of the given config with its initial weights (speed does not depend on
the weights), then times `predict_files` on `--volumes` real Hippocampus volumes (from
../shared/data) and the signature on random [N, 64, 64] batches.

    python benchmarks/bench_serving.py --volumes 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL = REPO_ROOT.parent / "shared" / "data" / "Task04_Hippocampus"


def export_untrained(cfg, dest: Path) -> Path:
    """A SavedModel of `cfg`'s U-Net with initial weights, through the real export path."""
    from tfsemiseg.layout import finished_cell_files
    from tfsemiseg.models.transfer import save_weights_by_name
    from tfsemiseg.models.unet import build_unet
    from tfsemiseg.serving.export import export_run

    run = dest.parent / "run"
    result, weights = finished_cell_files(run)
    weights.parent.mkdir(parents=True)
    unet = build_unet(cfg.model, cfg.data.image_size, 3)
    save_weights_by_name(unet.segmenter, weights)
    empty = {"per_class": [], "mean": None}
    result.write_text(json.dumps({
        "config": cfg.to_dict(), "class_names": ["background", "a", "b"], "method": "random", "fold": 0,
        "fraction": 1.0, "num_labeled_volumes": 0, "dataset": "benchmark", "metrics": {"pooled_dice": empty}}))
    return export_run(run, dest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "hippocampus.yaml"))
    p.add_argument("--volumes", type=int, default=20)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from tfsemiseg.config import load_config
    from tfsemiseg.serving.predict import predict_files

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        model = export_untrained(cfg, Path(tmp) / "model")
        fn = tf.saved_model.load(str(model)).signatures["serving_default"]
        s = cfg.data.image_size
        print(f"SavedModel of {args.config} (depth {cfg.model.depth}, width {cfg.model.base_width})")
        print("| input | ms per call (median) | slices/s |")
        print("|---|---|---|")
        for n in args.batch_sizes:
            x = tf.random.uniform([n, s, s])
            fn(slices=x)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn(slices=x)["labels"].numpy()
                times.append(time.perf_counter() - t0)
            ms = 1000 * float(np.median(times))
            print(f"| signature, {n} x {s}x{s} slices | {ms:.1f} | {n / ms * 1000:,.0f} |")
        if (REAL / "imagesTs").is_dir():
            files = sorted((REAL / "imagesTs").glob("*.nii.gz"))[: args.volumes]
            predict_files(model, files[:1], Path(tmp) / "warm", force=True)
            t0 = time.perf_counter()
            preds = predict_files(model, files, Path(tmp) / "out", force=True)
            total = time.perf_counter() - t0
            print(f"| `predict`, {len(preds)} Hippocampus volumes (read, segment, write NIfTI) | "
                  f"{1000 * total / len(preds):.1f} per volume | |")
        else:
            print(f"(real Hippocampus data not found at {REAL}: volume timing skipped)")


if __name__ == "__main__":
    main()
