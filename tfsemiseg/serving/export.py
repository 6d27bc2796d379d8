"""Export a trained run as a TensorFlow SavedModel that serves whole volumes.

Signature `serving_default`: input `slices` float32 [N, H, W] (the raw-intensity slices of
one volume along the model's slicing axis, any H and W). Inside the graph: per-volume
min-max normalisation (as in training), bilinear resize to the model size, the U-Net,
softmax (averaged over the 4 mirror images when the run's `evaluation.mirror` is true),
probabilities resized back to H x W (bilinear), argmax. Outputs `probabilities`
float32 [N, H, W, K] and `labels` int32 [N, H, W]. `metadata.json` lies beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

import tfsemiseg
from tfsemiseg.config import from_dict
from tfsemiseg.data.preprocess import model_input
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.inference import resize_probabilities, softmax_probabilities
from tfsemiseg.io_utils import atomic_dir, read_json
from tfsemiseg.layout import finished_cell_files, model_files
from tfsemiseg.models.transfer import load_segmenter
from tfsemiseg.serving.model_card import model_card


def serving_function(segmenter: keras.Model, image_size: int, mirror: bool = False):
    """The whole-volume prediction graph around `segmenter` (see the module docstring)."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="slices")])
    def serve(slices):
        probs = softmax_probabilities(segmenter, model_input(slices, image_size), mirror)
        probs = resize_probabilities(probs, tf.shape(slices)[1:3])
        labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": tf.identity(probs, name="probabilities"), "labels": tf.identity(labels, name="labels")}

    return serve


def load_run(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """The evaluated result of a method folder and its fine-tuned weights."""
    result_path, weights = finished_cell_files(run_dir)
    if not result_path.is_file() or not weights.is_file():
        raise TfSemisegError(
            f"{run_dir}: not a finished run (needs {result_path.relative_to(run_dir)} and "
            f"{weights.relative_to(run_dir)}; give the method folder, e.g. runs/NAME/fold0/frac0.1/global+local-block)"
        )
    return read_json(result_path), weights


def export_run(run_dir: Path, dest: Path, overwrite: bool = False) -> Path:
    """Write `dest` (SavedModel + metadata.json) atomically from a finished run folder."""
    result, weights = load_run(run_dir)
    cfg = from_dict(result["config"])
    class_names = result["class_names"]
    unet = load_segmenter(cfg, weights, len(class_names))
    archive = keras.export.ExportArchive()
    archive.track(unet.segmenter)
    archive.add_endpoint(
        name="serving_default", fn=serving_function(unet.segmenter, cfg.data.image_size, cfg.evaluation.mirror)
    )
    metadata = {
        "class_names": class_names,
        "slice_axis": cfg.data.slice_axis % 3,
        "channel": cfg.data.channel,
        "image_size": cfg.data.image_size,
        "test_time_mirroring": cfg.evaluation.mirror,
        "dataset": result.get("dataset"),
        "method": result["method"],
        "fold": result["fold"],
        "labeled_fraction": result["fraction"],
        "labeled_volumes": result["num_labeled_volumes"],
        "training_precision": {stage: info.get("precision") for stage, info in result.get("stages", {}).items()},
        "test_metrics": {k: v for k, v in result["metrics"].items() if k != "cases"},
        "training_config": result["config"],
        "tfsemiseg_version": tfsemiseg.__version__,
        "signature": {
            "inputs": {"slices": "float32 [N, H, W], raw intensities of one volume's slices"},
            "outputs": {"probabilities": "float32 [N, H, W, K]", "labels": "int32 [N, H, W]"},
        },
    }
    with atomic_dir(Path(dest), overwrite=overwrite) as tmp:
        archive.write_out(str(tmp), verbose=False)
        files = model_files(tmp)
        files.metadata.write_text(json.dumps(metadata, indent=2) + "\n")
        files.model_card.write_text(model_card(metadata, Path(dest).name))
    return Path(dest)
