"""Turn an exported model back into a finished run's method folder.

Run folders are large and live where they were trained; an exported model and its run's
result file are what a release keeps. `unpack_export` rebuilds the method folder (the result
file + `finetune/weights.npz`) from the two, so that a released model can join a new ensemble
or be evaluated as one (`export RUN... --data`) after its run folder is gone. From an
ensemble it rebuilds one member (`member`), after checking that the variables, split into
its members, reproduce the ensemble's served output. Given the run's fine-tuning stage file
(`stage`, a release keeps it too), the folder records a finished fine-tuning stage again and
can teach a self-training student; the checkpoints of training are never rebuilt, so
`evaluate` still needs the original run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.io_utils import atomic_dir, read_json
from tfsemiseg.layout import Cell, RunLayout, result_name, run_root_of, stage_files


def _load_saved_model(model_dir: Path):
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(model_dir))
    except (OSError, ValueError, tf.errors.OpError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TfSemisegError(f"{model_dir}: cannot load the SavedModel ({first})") from None


def _variable_groups(model_dir: Path, loaded) -> list[dict[str, np.ndarray]]:
    """The SavedModel's variables keyed as `save_weights_by_name` keys a model's (the variable
    name without its ':0'), split where a name comes again: one dict per ensemble member, in
    `_stored_order` (a single model gives one)."""
    groups: list[dict[str, np.ndarray]] = [{}]
    for variable in loaded.variables:
        key = variable.name.removesuffix(":0")
        if key in groups[-1]:
            groups.append({})
        groups[-1][key] = variable.numpy()
    return groups


def _check_pair(model_dir: Path, metadata: dict[str, Any], result_path: Path, result: Any,
                member: Optional[int]) -> None:
    """The result file must be the exported run's own (for an ensemble: member `member`'s)."""
    members = metadata.get("members") or []
    if members and member is None:
        raise TfSemisegError(f"{model_dir}: an ensemble of {len(members)} runs; name the one to unpack "
                             f"(--member 0 to {len(members) - 1}) and give its own result file")
    if not members and member is not None:
        raise TfSemisegError(f"{model_dir}: exported from one run, not an ensemble; --member applies to ensembles only")
    if members and not 0 <= member < len(members):
        raise TfSemisegError(f"{model_dir}: an ensemble of {len(members)} runs has no member {member} "
                             f"(--member 0 to {len(members) - 1})")
    if not isinstance(result, dict) or not {"config", "method", "fold", "fraction", "class_names"} <= set(result):
        raise TfSemisegError(f"{result_path}: not the result file of a run (needs config, method, fold, "
                             "fraction and class_names)")
    if (not members or member == 0) and metadata.get("training_config") != result["config"]:
        raise TfSemisegError(f"{result_path}: its config is not the one {model_dir} was trained with "
                             "(metadata.json training_config); give the result file of the exported run")
    if result["class_names"] != metadata.get("class_names"):
        raise TfSemisegError(f"{result_path}: class_names {result['class_names']!r} differs from {model_dir}'s "
                             f"{metadata.get('class_names')!r}; give the result file of the exported run")
    own = members[member] if members else metadata
    which = f"{model_dir}'s member {member}" if members else f"{model_dir}'s"
    checks = [("method", "method"), ("fold", "fold"), ("fraction", "labeled_fraction")]
    if members:
        checks += [("seed", "seed"), ("labeled_cases", "labeled_cases")]
    for key, meta_key in checks:
        if own.get(meta_key) is not None and result.get(key) != own.get(meta_key):
            raise TfSemisegError(f"{result_path}: {key} {result.get(key)!r} differs from {which} "
                                 f"{own.get(meta_key)!r}; give the result file of the exported run")
    if members:  # views of one model may share everything above but their slicing axis
        axis = (result["config"].get("data") or {}).get("slice_axis", -1)
        if isinstance(axis, int) and axis % 3 != _member_axes(metadata)[member]:
            raise TfSemisegError(f"{result_path}: slice_axis {axis % 3} differs from {which} "
                                 f"{_member_axes(metadata)[member]}; give the result file of the exported run")


def _check_stage(stage_path: Path, result_path: Path, result: dict[str, Any]) -> None:
    """The stage file must be the finished fine-tuning stage of the result's own run."""
    info = read_json(stage_path)
    if not isinstance(info, dict) or info.get("stage") != "finetune":
        raise TfSemisegError(f"{stage_path}: not the stage file of a fine-tuning stage (stage.json with "
                             "\"stage\": \"finetune\")")
    for key in ("method", "fold", "fraction", "config"):
        if key in info and info[key] != result[key]:
            what = "config" if key == "config" else f"{key} {info[key]!r}"
            raise TfSemisegError(f"{stage_path}: its {what} differs from {result_path}'s; give the fine-tuning "
                                 "stage file of the same run")


def _check_members(model_dir: Path, loaded, metadata: dict[str, Any], groups: list[dict[str, np.ndarray]],
                   cfg, result_path: Path) -> None:
    """The variables split into `groups` (members in `_stored_order`) must rebuild the ensemble:
    each group fits the U-Net of the result's config, and their softmax average, served as
    `export` serves it (views and all), reproduces the SavedModel's output on a probe batch."""
    import tensorflow as tf

    from tfsemiseg.models.transfer import load_segmenter
    from tfsemiseg.serving.export import assemble_views, serving_function

    n = len(metadata["members"])
    if len(groups) != n:
        raise TfSemisegError(f"{model_dir}: its variables split into {len(groups)} models, not its {n} members; "
                             "cannot tell which are whose")
    k, size = len(metadata["class_names"]), int(metadata["image_size"])
    order = _stored_order(metadata)
    segmenters = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, arrays in enumerate(groups):
            path = Path(tmp) / f"member{i}.npz"
            np.savez(path, **arrays)
            try:
                segmenters.append(load_segmenter(cfg, path, k).segmenter)
            except TfSemisegError as exc:
                problem = str(exc).removeprefix(f"{path}: ")
                raise TfSemisegError(f"{model_dir}: member {order[i]}'s variables do not fit the U-Net of {result_path} "
                                     f"({problem}); only members of one architecture can be unpacked") from None
    by_member = [segmenters[order.index(i)] for i in range(n)]
    views = assemble_views(by_member, _member_axes(metadata), size)
    probe = tf.constant(np.random.default_rng(0).uniform(0.0, 1000.0, (size + 7, size + 3, size - 5)).astype(np.float32))
    mirror = bool(metadata.get("test_time_mirroring", False))
    ours = serving_function(views, size, mirror)(probe)["probabilities"].numpy()
    served = loaded.signatures["serving_default"](slices=probe)["probabilities"].numpy()
    if not np.allclose(ours, served, atol=1e-4):
        raise TfSemisegError(f"{model_dir}: its variables, split into {n} members, do not reproduce its output "
                             f"(largest difference {np.abs(ours - served).max():.2g}); cannot unpack a member")


def _member_axes(metadata: dict[str, Any]) -> list[int]:
    """The slicing axis of each member of an exported ensemble."""
    return metadata.get("member_slice_axes") or [int(metadata["slice_axis"])] * len(metadata["members"])


def _stored_order(metadata: dict[str, Any]) -> list[int]:
    """The members' indices in the order the SavedModel stores their variables (by view)."""
    from tfsemiseg.serving.export import view_groups

    return [i for group in view_groups(_member_axes(metadata)) for i in group]


def unpack_export(model_dir: Path, result_path: Path, dest: Path, overwrite: bool = False,
                  member: Optional[int] = None, stage_path: Optional[Path] = None) -> Path:
    """Write the method folder `dest` (RUN/fold<k>/frac<f>/<method>, the result's own cell) from
    the exported model `model_dir` and its run's `result_path` (result.json, or result_val.json
    for a run evaluated on validation only, kept under its own name), atomically. For an
    ensemble, `member` names the run to rebuild (its index in metadata.json `members`) and
    `result_path` must be that run's. With `stage_path` (the run's fine-tuning stage.json),
    the folder's `finetune/stage.json` is written too. The weights are checked by loading
    them into the U-Net of the result's config before anything is written; `overwrite`
    replaces an existing `dest` whole."""
    from tfsemiseg.config import from_dict
    from tfsemiseg.models.transfer import load_segmenter
    from tfsemiseg.serving.predict import read_metadata

    model_dir, result_path, dest = Path(model_dir), Path(result_path), Path(dest)
    metadata = read_metadata(model_dir)
    result = read_json(result_path)
    _check_pair(model_dir, metadata, result_path, result, member)
    if stage_path is not None:
        _check_stage(Path(stage_path), result_path, result)
    cfg = from_dict(result["config"])
    cell_dir = RunLayout(run_root_of(dest)).cell_dir(Cell(int(result["fold"]), float(result["fraction"]),
                                                          result["method"]))
    if cell_dir != dest.resolve():
        cell = cell_dir.relative_to(cell_dir.parents[2])
        raise TfSemisegError(f"{dest}: {result_path} is the result of the cell {cell} (its fold, fraction "
                             f"and method); give RUN/{cell}")
    if dest.exists() and not overwrite:
        raise TfSemisegError(f"{dest}: already exists (use --force to replace it)")
    loaded = _load_saved_model(model_dir)
    groups = _variable_groups(model_dir, loaded)
    if member is None:
        if len(groups) > 1:
            raise TfSemisegError(f"{model_dir}: some variables are named twice, yet its metadata lists no "
                                 "members; cannot unpack it as one run")
        arrays = groups[0]
    else:
        _check_members(model_dir, loaded, metadata, groups, cfg, result_path)
        arrays = groups[_stored_order(metadata).index(member)]
    with atomic_dir(dest, overwrite=overwrite) as tmp:
        files = stage_files(tmp / "finetune")
        files.weights.parent.mkdir(parents=True)
        np.savez(files.weights, **arrays)
        try:
            load_segmenter(cfg, files.weights, len(result["class_names"]))
        except TfSemisegError as exc:
            problem = str(exc).removeprefix(f"{files.weights}: ")
            raise TfSemisegError(f"{model_dir}: its variables do not fit the U-Net of {result_path} ({problem})") from None
        shutil.copyfile(result_path, tmp / result_name(result.get("part", "test")))
        if stage_path is not None:
            shutil.copyfile(stage_path, files.done)
    return dest
