"""Turn an exported single model back into a finished run's method folder.

Run folders are large and live where they were trained; an exported model and its run's
result file are what a release keeps. `unpack_export` rebuilds the method folder (the result
file + `finetune/weights.npz`) from the two, so that a released model can join a new ensemble
or be evaluated as one (`export RUN... --data`) after its run folder is gone. The stage files
of training (`stage.json`, checkpoints) are not rebuilt: `evaluate` and self-training, which
read them, need the original run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.io_utils import atomic_dir, read_json
from tfsemiseg.layout import Cell, RunLayout, result_name, run_root_of, stage_files


def exported_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """The variables of an exported SavedModel, keyed as `save_weights_by_name` keys a
    model's (`variable.path`: the SavedModel's variable name without its ':0')."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(model_dir))
    except (OSError, ValueError, tf.errors.OpError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TfSemisegError(f"{model_dir}: cannot load the SavedModel ({first})") from None
    arrays: dict[str, np.ndarray] = {}
    for variable in loaded.variables:
        key = variable.name.removesuffix(":0")
        if key in arrays:
            raise TfSemisegError(f"{model_dir}: two variables are named {key!r}; cannot unpack it")
        arrays[key] = variable.numpy()
    return arrays


def _check_pair(model_dir: Path, metadata: dict[str, Any], result_path: Path, result: Any) -> None:
    """The result file must be the exported run's own."""
    if metadata.get("members"):
        raise TfSemisegError(f"{model_dir}: an ensemble of {len(metadata['members'])} runs; only a model "
                             "exported from one run can be unpacked (unpack each member's own export)")
    if not isinstance(result, dict) or not {"config", "method", "fold", "fraction", "class_names"} <= set(result):
        raise TfSemisegError(f"{result_path}: not the result file of a run (needs config, method, fold, "
                             "fraction and class_names)")
    if metadata.get("training_config") != result["config"]:
        raise TfSemisegError(f"{result_path}: its config is not the one {model_dir} was trained with "
                             "(metadata.json training_config); give the result file of the exported run")
    for key, meta_key in (("method", "method"), ("fold", "fold"), ("fraction", "labeled_fraction"),
                          ("class_names", "class_names")):
        if result[key] != metadata.get(meta_key):
            raise TfSemisegError(f"{result_path}: {key} {result[key]!r} differs from {model_dir}'s "
                                 f"{metadata.get(meta_key)!r}; give the result file of the exported run")


def unpack_export(model_dir: Path, result_path: Path, dest: Path, overwrite: bool = False) -> Path:
    """Write the method folder `dest` (RUN/fold<k>/frac<f>/<method>, the result's own cell) from
    the exported model `model_dir` and its run's `result_path` (result.json, or result_val.json
    for a run evaluated on validation only, kept under its own name), atomically. The weights
    are checked by loading them into the U-Net of the result's config before anything is
    written; `overwrite` replaces an existing `dest` whole."""
    from tfsemiseg.config import from_dict
    from tfsemiseg.models.transfer import load_segmenter
    from tfsemiseg.serving.predict import read_metadata

    model_dir, result_path, dest = Path(model_dir), Path(result_path), Path(dest)
    metadata = read_metadata(model_dir)
    result = read_json(result_path)
    _check_pair(model_dir, metadata, result_path, result)
    cfg = from_dict(result["config"])
    cell_dir = RunLayout(run_root_of(dest)).cell_dir(Cell(int(result["fold"]), float(result["fraction"]),
                                                          result["method"]))
    if cell_dir != dest.resolve():
        cell = cell_dir.relative_to(cell_dir.parents[2])
        raise TfSemisegError(f"{dest}: {result_path} is the result of the cell {cell} (its fold, fraction "
                             f"and method); give RUN/{cell}")
    if dest.exists() and not overwrite:
        raise TfSemisegError(f"{dest}: already exists (use --force to replace it)")
    arrays = exported_weights(model_dir)
    with atomic_dir(dest, overwrite=overwrite) as tmp:
        weights = stage_files(tmp / "finetune").weights
        weights.parent.mkdir(parents=True)
        np.savez(weights, **arrays)
        try:
            load_segmenter(cfg, weights, len(result["class_names"]))
        except TfSemisegError as exc:
            problem = str(exc).removeprefix(f"{weights}: ")
            raise TfSemisegError(f"{model_dir}: its variables do not fit the U-Net of {result_path} ({problem})") from None
        shutil.copyfile(result_path, tmp / result_name(result.get("part", "test")))
    return dest
