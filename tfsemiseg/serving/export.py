"""Export a trained run, or several as one ensemble, as a TensorFlow SavedModel that serves
whole volumes.

Signature `serving_default`: input `slices` float32 [N, H, W] (the raw-intensity slices of
one volume along the model's slicing axis, any H and W). Inside the graph: per-volume
min-max normalisation (as in training), bilinear resize to the model size, the U-Net
(or the mean of several U-Nets' softmax: `SoftmaxEnsemble`), softmax (averaged over the 4
mirror images when the runs' `evaluation.mirror` is true),
probabilities resized back to H x W (bilinear), argmax. Outputs `probabilities`
float32 [N, H, W, K] and `labels` int32 [N, H, W]. `metadata.json` lies beside it.

Runs trained on slices along different axes (`data.slice_axis`) are served as one model of
several views: the input stays the slices along the first run's axis (all of a volume's
slices, in order, since the other views re-slice the stack); inside the graph each
view transposes them to its own axis, predicts as above up to its native-size probabilities,
and transposes them back; the mean over runs (each run weighs the same) gives the labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import keras
import tensorflow as tf

import tfsemiseg
from tfsemiseg.config import Config, from_dict
from tfsemiseg.data.preprocess import model_input
from tfsemiseg.data.splits import recorded_labels_digest
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.inference import resize_probabilities, softmax_probabilities, view_permutation
from tfsemiseg.io_utils import atomic_dir, read_json
from tfsemiseg.layout import finished_cell_files, model_files, run_root_of, stage_files
from tfsemiseg.models.ensemble import SoftmaxEnsemble
from tfsemiseg.models.transfer import load_segmenter
from tfsemiseg.serving.model_card import model_card


@dataclass
class ServedView:
    """The runs of an exported model that slice along one axis: one segmenter, or the
    `SoftmaxEnsemble` of several; `weight` is their number."""

    axis: int
    model: keras.Model
    weight: int = 1


def serving_function(views: Sequence[ServedView], image_size: int, mirror: bool = False):
    """The whole-volume prediction graph around the views (the first view's axis is the input's
    slicing axis; one view is one segmenter or ensemble; see the module docstring)."""
    total = float(sum(v.weight for v in views))

    def native_probabilities(view: ServedView, slices):
        to_view = view_permutation(views[0].axis, view.axis)
        x = tf.transpose(slices, to_view) if to_view != [0, 1, 2] else slices
        probs = resize_probabilities(softmax_probabilities(view.model, model_input(x, image_size), mirror),
                                     tf.shape(x)[1:3])
        back = view_permutation(view.axis, views[0].axis)
        return tf.transpose(probs, back + [3]) if back != [0, 1, 2] else probs

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="slices")])
    def serve(slices):
        probs = tf.add_n([v.weight * native_probabilities(v, slices) for v in views]) / total \
            if len(views) > 1 else native_probabilities(views[0], slices)
        labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": tf.identity(probs, name="probabilities"), "labels": tf.identity(labels, name="labels")}

    return serve


def _without_cases(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluation report without its per-volume rows (metadata keeps the summaries)."""
    return {k: v for k, v in report.items() if k != "cases"}


@dataclass
class Member:
    """One finished run (a method folder) that an exported model is made of."""

    run_dir: Path
    result: dict[str, Any]
    weights: Path
    config: Config

    @property
    def axis(self) -> int:
        """The slicing axis the run was trained on, 0-2."""
        return self.config.data.slice_axis % 3

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {"run": str(self.run_dir), "method": r["method"], "fold": r["fold"], "labeled_fraction": r["fraction"],
                "labeled_cases": r.get("labeled_cases"), "seed": r.get("seed"),
                "slice_axis": self.axis,
                f"{r.get('part', 'test')}_metrics": _without_cases(r["metrics"])}


def load_member(run_dir: Path) -> Member:
    """The evaluated result of a method folder and its fine-tuned weights."""
    result_path, weights = finished_cell_files(run_dir)
    if not result_path.is_file() or not weights.is_file():
        raise TfSemisegError(
            f"{run_dir}: not a finished run (needs {result_path.relative_to(run_dir)} and "
            f"{weights.relative_to(run_dir)}; give the method folder, e.g. runs/NAME/fold0/frac0.1/global+local-block)"
        )
    result = read_json(result_path)
    return Member(Path(run_dir), result, weights, from_dict(result["config"]))


def label_codes(label_map: Optional[dict[int, int]], num_classes: int) -> Optional[list[int]]:
    """The dataset's label value of each class, inverting `data.label_map` (raw value ->
    class; the smallest raw value of a class where several map to it); None without a map.
    A class no raw value maps to keeps its index; background is 0."""
    if not label_map:
        return None
    codes = list(range(num_classes))
    for raw, cls in sorted(label_map.items(), reverse=True):
        if cls != 0:
            codes[cls] = int(raw)
    return codes


def _served_settings(m: Member) -> dict[str, Any]:
    cfg, names = m.config, m.result["class_names"]
    return {"class_names": names, "label_codes": label_codes(cfg.data.label_map, len(names)),
            "image_size": cfg.data.image_size, "slice_axis": cfg.data.slice_axis % 3,
            "channel": cfg.data.channel, "test_time_mirroring": cfg.evaluation.mirror}


def check_members(members: Sequence[Member]) -> dict[str, Any]:
    """The settings every member must share to be served as one model (classes, input, mirroring;
    not the slicing axis: the first member's is the model's, the others are views)."""
    first = _served_settings(members[0])
    for m in members[1:]:
        other = _served_settings(m)
        for key, value in first.items():
            if key != "slice_axis" and other[key] != value:
                raise TfSemisegError(f"{m.run_dir}: {key} {other[key]!r} differs from {members[0].run_dir}'s "
                                     f"{value!r}; the runs of one exported model must share it")
    return first


def view_groups(axes: Sequence[int]) -> list[list[int]]:
    """Indices of the members of each view: members grouped by slicing axis, in the order the
    axes first appear (the first member's view first). The exported model's variables follow
    this order."""
    order = list(dict.fromkeys(axes))
    return [[i for i, a in enumerate(axes) if a == axis] for axis in order]


def assemble_views(segmenters: Sequence[keras.Model], axes: Sequence[int], image_size: int) -> list[ServedView]:
    """The segmenters of the members (in member order, with their slicing axes) as views
    (`view_groups`), each one segmenter or the softmax-averaging ensemble of several."""
    views = []
    for group in view_groups(axes):
        models = [segmenters[i] for i in group]
        model = models[0]
        if len(models) > 1:
            model = SoftmaxEnsemble(models)
            model(tf.zeros([1, image_size, image_size, 1]))  # build
        views.append(ServedView(axes[group[0]], model, len(group)))
    return views


def load_views(members: Sequence[Member], settings: dict[str, Any]) -> list[ServedView]:
    """The members' segmenters (float32) as views; `settings`: what `check_members` found they share."""
    k = len(settings["class_names"])
    segmenters = [load_segmenter(m.config, m.weights, k).segmenter for m in members]
    return assemble_views(segmenters, [m.axis for m in members], settings["image_size"])


def _labels_digest(member: Member) -> Optional[str]:
    """The member's labels-only split digest: the one its fine-tuning stage.json records, else its
    result's `split_digest` (then matching only a split without extra unlabeled images)."""
    done = stage_files(member.run_dir / "finetune").done
    return (recorded_labels_digest(read_json(done)) if done.is_file() else None) or member.result.get("split_digest")


def evaluate_members(views: Sequence[ServedView], members: Sequence[Member], data_dir: Path,
                     parts: Sequence[str] = ("val", "test")) -> dict[str, dict[str, Any]]:
    """The exported model's metrics on its members' shared fold: {"val": report, "test": report}.
    Each further view reads the volumes sliced along its axis (`volumes_along`)."""
    from tfsemiseg.data.prepared import evaluation_volumes, prepare_dataset, volumes_along
    from tfsemiseg.evaluation import View, evaluate_views

    folds = {m.result["fold"] for m in members}
    if len(folds) != 1:
        raise TfSemisegError(f"the runs come from folds {sorted(folds)}: no test part is held out from all of them")
    cfg, fold, root = members[0].config, folds.pop(), run_root_of(members[0].run_dir)
    data = prepare_dataset(cfg, data_dir, root)
    split = data.split(fold)
    for m in members:  # the same fold number of other splits would leak their training volumes
        if m.result.get("split_digest") == split.digest():
            continue
        labels_digest = _labels_digest(m)
        if labels_digest != split.labels_digest():
            raise TfSemisegError(f"{m.run_dir}: trained on another split than fold {fold} of "
                                 f"{root} (split digest {m.result.get('split_digest')} != "
                                 f"{split.digest()}, and {labels_digest} != {split.labels_digest()} "
                                 "without extra unlabeled images); the runs of an evaluated model must share one split")
    reports = {}
    for part in parts:
        volumes = evaluation_volumes(data, split, part)
        cases = [vol.case_id for vol in volumes]
        reports[part] = evaluate_views([View(v.model, volumes if v.axis == views[0].axis
                                             else volumes_along(data, cfg, cases, v.axis), v.axis, v.weight)
                                        for v in views], data.class_names, mirror=cfg.evaluation.mirror)
    return reports


def _metadata(members: Sequence[Member], settings: dict[str, Any],
              evaluation: Optional[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    first = members[0].result
    axes = [m.axis for m in members]
    shared = {key: first[key] if all(m.result[key] == first[key] for m in members) else None
              for key in ("fold", "fraction")}
    labeled = sorted({c for m in members for c in (m.result.get("labeled_cases") or [])})
    metadata = {
        **settings,
        "dataset": first.get("dataset"),
        "method": first["method"] if len(members) == 1 else "ensemble",
        "fold": shared["fold"],
        "labeled_fraction": shared["fraction"],
        "labeled_volumes": len(labeled) if labeled else first["num_labeled_volumes"],
        "labeled_cases": labeled,
        "training_precision": {stage: info.get("precision") for stage, info in first.get("stages", {}).items()},
        "test_metrics": _without_cases(evaluation["test"]) if evaluation and "test" in evaluation else
        (_without_cases(first["metrics"]) if len(members) == 1 and first.get("part", "test") == "test" else None),
        "training_config": first["config"],
        "tfsemiseg_version": tfsemiseg.__version__,
        "signature": {
            "inputs": {"slices": "float32 [N, H, W], raw intensities of one volume's slices"
                       + (", all of them in order (views re-slice the volume)" if len(set(axes)) > 1 else "")},
            "outputs": {"probabilities": "float32 [N, H, W, K]", "labels": "int32 [N, H, W]"},
        },
    }
    if evaluation and "val" in evaluation:
        metadata["val_metrics"] = _without_cases(evaluation["val"])
    if len(members) > 1:
        metadata["members"] = [m.summary() for m in members]
    if len(set(axes)) > 1:
        metadata["member_slice_axes"] = axes
    return metadata


def export_run(run_dirs: Path | Sequence[Path], dest: Path, overwrite: bool = False,
               data_dir: Optional[Path] = None, parts: Sequence[str] = ("val", "test")) -> Path:
    """Write `dest` (SavedModel + metadata.json + MODEL_CARD.md) atomically from one finished
    run folder, or from several as one model averaging their softmax. With `data_dir`, the
    exported model is evaluated on the `parts` (validation, test) of the runs' shared fold."""
    run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    members = [load_member(r) for r in run_dirs]
    settings = check_members(members)
    views = load_views(members, settings)
    evaluation = evaluate_members(views, members, data_dir, parts) if data_dir is not None else None
    archive = keras.export.ExportArchive()
    for view in views:
        archive.track(view.model)
    archive.add_endpoint(
        name="serving_default",
        fn=serving_function(views, settings["image_size"], settings["test_time_mirroring"]),
    )
    metadata = _metadata(members, settings, evaluation)
    with atomic_dir(Path(dest), overwrite=overwrite) as tmp:
        archive.write_out(str(tmp), verbose=False)
        files = model_files(tmp)
        files.metadata.write_text(json.dumps(metadata, indent=2) + "\n")
        files.model_card.write_text(model_card(metadata, Path(dest).name))
    return Path(dest)
