"""Run a method's stages resumably in a run folder, then evaluate it.

A method is a plan of stages (`tfsemiseg.training.plans`); each stage is a Task handed to
the one Trainer, in its folder of the run layout (`tfsemiseg.layout`). A stage whose
folder holds stage.json is finished and is skipped on the next run, unless its settings
or the weights it started from have changed since, which is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tfsemiseg.config import Config, from_dict
from tfsemiseg.data.prepared import PreparedData, TrainingArrays, evaluation_volumes, prepare_dataset, training_arrays
from tfsemiseg.data.splits import recorded_labels_digest
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.evaluation import evaluate_volumes, format_report
from tfsemiseg.io_utils import atomic_write_json, read_json
from tfsemiseg.layout import STAGE_DONE, Cell, RunLayout, result_name, stage_files
from tfsemiseg.models.transfer import load_segmenter, save_weights_by_name
from tfsemiseg.training.baselines import LocalSelfTask, MixupTask, TCSMTask
from tfsemiseg.training.engine import Trainer, stage_finished, write_stage_done
from tfsemiseg.training.plans import METHODS, REQUIRED_PARTS, StagePlan, is_cell_folder, plan_until, teacher_key
from tfsemiseg.training.precision import precision_policy, resolve_precision
from tfsemiseg.training.self_training import SelfTrainingTask, Teacher, pseudo_labeled_arrays
from tfsemiseg.training.stages import FinetuneTask, GlobalTask, LocalTask, UNetTask
from tfsemiseg.training.strategy import worker_barrier, worker_role

Echo = Callable[[str], None]


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _digest_parts(cfg: Config, plan: StagePlan) -> dict[str, Any]:
    d = cfg.to_dict()
    d["data"].pop("cache_dir")  # where slices are cached does not change a result
    train = d["train"]
    stage = train[f"{plan.name}_stage"]
    if stage.pop("select_best") != (plan.name == "finetune"):  # versions before it: fine-tuning alone selected
        stage["select_best"] = plan.name != "finetune"
    parts = {"data": d["data"], "split": d["split"], "model": d["model"], "augment": d["augment"],
             "stage": stage, "seed": train["seed"],
             "plan": [plan.name, plan.init_from, plan.local_mode, plan.variant]}
    if plan.variant == "self-training":  # teachers by identity, however spelled
        parts["self_training"] = {**train["self_training"],
                                  "teachers": [teacher_key(t) for t in train["self_training"]["teachers"]]}
    elif plan.variant or plan.local_mode == "self":
        parts["baselines"] = train["baselines"]
    return parts


def _stage_digest(cfg: Config, plan: StagePlan) -> str:
    """Hash of every setting the stage's result depends on (to refuse stale reuse)."""
    parts = _digest_parts(cfg, plan)
    if plan.name in ("global", "local"):
        parts["loss"] = dataclasses.asdict(getattr(cfg.train, f"{plan.name}_loss"))
    return _digest(parts)


def _older_digests(cfg: Config, plan: StagePlan) -> list[str]:
    """The digests earlier versions wrote for the same settings: they had no `data.spacing`
    (accepted when it is unset), and their stage sections held the loss settings and a mode
    (the method's for a supervised local stage; the configured one, now unknown, for the
    others: every mode is accepted there, since no stage used it)."""
    parts = _digest_parts(cfg, plan)
    loss = {"temperature": 0.1, "stride": 4, "block_size": 16}  # the older defaults
    if plan.name == "global":
        loss["temperature"] = cfg.train.global_loss.temperature
    elif plan.name == "local":
        loss = dataclasses.asdict(cfg.train.local_loss)
    modes = [plan.local_mode] if plan.name == "local" and plan.local_mode != "self" else ["stride", "block", "full"]
    data = [parts["data"]]
    if parts["data"].get("spacing") is None:  # versions before `data.spacing` existed
        data.append({k: v for k, v in parts["data"].items() if k != "spacing"})
    return [_digest({**parts, "data": d, "stage": {**parts["stage"], **loss, "mode": mode}})
            for d in data for mode in modes]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_reuse(folder: Path, digest: str, parent: Optional[Path], older: Sequence[str] = ()) -> None:
    """Refuse a finished stage whose configuration, or whose parent stage, has changed since
    (`older`: the digests earlier versions wrote for the same settings)."""
    info = read_json(stage_files(folder).done)
    if info.get("config_digest") not in (digest, *older):
        raise TfSemisegError(
            f"{folder}: finished with a different configuration (digest {info.get('config_digest')} != {digest}); "
            "use another --out or config name, or delete that folder"
        )
    if parent is not None and info.get("parent_weights_sha256") != _file_sha256(stage_files(parent).weights):
        raise TfSemisegError(
            f"{folder}: stale, it was trained from other weights than those now in {parent} "
            f"(that stage was retrained after it); delete {folder} and every stage after it, "
            "then rerun the same command to retrain them"
        )


def _make_task(cfg: Config, plan: StagePlan, data: PreparedData, cell: Cell, arrays: TrainingArrays, init,
               num_replicas: int, teachers: Sequence[Teacher] = ()) -> UNetTask:
    split = data.split(cell.fold)
    k = len(data.class_names)
    kw = {"init_from": init, "num_replicas": num_replicas}
    if plan.name == "global":
        if cfg.train.global_stage.select_best:  # scored on the validation slices' images
            volumes = evaluation_volumes(data, split, "val")
            slices = sum(v.num_slices for v in volumes)
            if slices < 2:
                raise TfSemisegError(
                    f"train.global_stage.select_best: fold {cell.fold} has {len(volumes)} validation volume(s) and "
                    f"{slices} slice(s); the validation loss needs at least 2 slices")
            kw["val_images"] = np.concatenate([v.image for v in volumes])
        return GlobalTask(cfg, arrays, k, **kw)
    if plan.name == "local":
        if plan.local_mode == "self":
            return LocalSelfTask(cfg, arrays, k, **kw)
        return LocalTask(cfg, arrays, k, mode=plan.local_mode, **kw)
    kw["val_volumes"] = evaluation_volumes(data, split, "val")
    if plan.variant == "self-training":
        return SelfTrainingTask(cfg, arrays, k, pseudo=pseudo_labeled_arrays(cfg, data, arrays, teachers), **kw)
    finetune = {None: FinetuneTask, "mixup": MixupTask, "tcsm": TCSMTask}[plan.variant]
    return finetune(cfg, arrays, k, **kw)


def _run_stage(cfg: Config, data: PreparedData, cell: Cell, arrays: TrainingArrays, plan: StagePlan, folder: Path,
               parent: Optional[Path], digest: str, strategy, echo: Echo,
               teachers: dict[str, Teacher] | None = None) -> None:
    """Train one stage in `folder` (resuming), then (the chief) write its weights and stage.json."""
    precision = resolve_precision(cfg.train.precision)
    init = (stage_files(parent).weights, REQUIRED_PARTS[plan.init_from]) if parent is not None else None
    teachers = teachers or {}
    with precision_policy(precision):
        task = _make_task(cfg, plan, data, cell, arrays, init, strategy.num_replicas_in_sync, list(teachers.values()))
        echo(f"[{plan.name}] training in {folder} ({task.steps_per_epoch} steps/epoch, precision {precision})")
        trainer = Trainer(task, task.optim, folder, strategy, precision, cfg.train.seed)
        if task.transfer is not None:
            echo(f"[{plan.name}] initial weights from {task.transfer.path}: {task.transfer.summary()}")
        result = trainer.fit()
    if trainer.chief:  # multi-worker: the chief writes the stage's outputs ...
        save_weights_by_name(task.output_model, stage_files(folder).weights)
        write_stage_done(folder, result, {
            "config_digest": digest, "method": cell.method, "fold": cell.fold, "fraction": cell.fraction,
            "split_digest": data.split(cell.fold).digest(),
            "labels_split_digest": data.split(cell.fold).labels_digest(),
            "init": task.transfer.summary() if task.transfer else "random", "precision": precision,
            "parent_weights_sha256": _file_sha256(stage_files(parent).weights) if parent is not None else None,
            **({"teacher_weights_sha256": {m: t.sha256 for m, t in teachers.items()}} if teachers else {}),
            "config": cfg.to_dict(),
        })
    worker_barrier(strategy)  # ... before any worker reads them


def run_method(cfg: Config, data: PreparedData, run: RunLayout, cell: Cell, strategy, echo: Echo = print,
               until: Optional[str] = None, part: Optional[str] = "test") -> Optional[dict[str, Any]]:
    """Run (or resume) every stage of the cell's method, then evaluate on the `part` volumes
    (None: no evaluation).

    With `until`, stop after that stage (evaluating only if it is the fine-tuning stage).
    Self-training first runs (or reuses) its teacher methods' cells in the same run folder
    (or reads finished teacher cells of other runs, named by their folders).
    """
    plans = plan_until(cell.method, until)
    folders: dict[str, Path] = {}
    arrays: Optional[TrainingArrays] = None
    for plan in plans:
        folder = folders[plan.name] = run.stage_dir(cell, plan.name)
        parent = folders[plan.init_from] if plan.init_from is not None else None
        digest = _stage_digest(cfg, plan)
        teachers = _run_teachers(cfg, data, run, cell, strategy, echo) if plan.variant == "self-training" else {}
        if teachers:  # a student is stale once a teacher has changed
            digest = _digest({"stage": digest, "teachers": {m: t.sha256 for m, t in teachers.items()}})
        if stage_finished(folder):
            _check_reuse(folder, digest, parent, _older_digests(cfg, plan))
            echo(f"[{plan.name}] already finished in {folder}")
            continue
        if arrays is None:  # built once, and only when a stage trains
            arrays = training_arrays(data, data.split(cell.fold), cell.fraction)
        _run_stage(cfg, data, cell, arrays, plan, folder, parent, digest, strategy, echo, teachers)
    if plans[-1].name != "finetune" or part is None or not worker_role(strategy)[0]:
        return None
    return evaluate_method(cfg, data, run, cell, echo, part)


def _run_teachers(cfg: Config, data: PreparedData, run: RunLayout, cell: Cell, strategy,
                  echo: Echo) -> dict[str, Teacher]:
    """The teachers' fine-tuned weights and the configs they were trained with, keyed by
    `teacher_key` (method name, or the folder's absolute path).

    A method name means that method's cell at the same fold and fraction in this run folder:
    a finished one is used as it is (the student's digest holds its weights' hash), a missing
    one is run first with this config. A path means a finished cell folder of any run (e.g. a
    student of an earlier round); it must record its fold, fraction, split and config. Either
    way the teacher must have been trained on the labels of the student's split, fold and
    labeled fraction."""
    teachers = {}
    labels_digest = data.split(cell.fold).labels_digest()
    student = run.cell_dir(cell).resolve()
    for name in cfg.train.self_training.teachers:
        key, foreign = teacher_key(name), is_cell_folder(name)
        if key in teachers:
            raise TfSemisegError(f"train.self_training.teachers: {name!r} names the teacher {key} twice")
        if foreign:
            folder = Path(key)
            if folder == student:
                raise TfSemisegError(f"{folder}: is the student's own cell; a student cannot teach itself")
            if not stage_finished(folder / "finetune"):
                raise TfSemisegError(f"{folder}: not a finished cell (no finetune/{STAGE_DONE}); a teacher folder "
                                     "must be a cell whose fine-tuning stage has finished")
            echo(f"[self-training] teacher {folder}: finished")
        else:
            teacher = Cell(cell.fold, cell.fraction, name)
            folder = run.cell_dir(teacher)
            if stage_finished(folder / "finetune"):
                echo(f"[self-training] teacher {teacher}: finished in {folder}")
            else:
                echo(f"[self-training] teacher {teacher}: training it first")
                run_method(cfg, data, run, teacher, strategy, echo, part=None)
        files = stage_files(folder / "finetune")
        info, tcfg = read_json(files.done), _trained_config(folder)
        if foreign:  # from another run: nothing of it may go unchecked
            unrecorded = [k for k in ("fold", "fraction", "split_digest") if info.get(k) is None]
            if unrecorded or tcfg is None:
                raise TfSemisegError(f"{files.done}: records no {', '.join(unrecorded or ['config'])}; "
                                     "a teacher from another run must record them (retrain it with this version)")
        _check_teacher(folder, info, cell, labels_digest)
        tcfg = tcfg or cfg
        for setting in ("image_size", "channel"):  # another slice_axis: a view, predicting in 3D
            if getattr(tcfg.data, setting) != getattr(cfg.data, setting):
                raise TfSemisegError(f"{folder}: trained with data.{setting} = {getattr(tcfg.data, setting)!r}, "
                                     f"not {getattr(cfg.data, setting)!r}; a teacher must read the student's slices")
        teachers[key] = Teacher(files.weights, _file_sha256(files.weights), tcfg)
    return teachers


def _check_teacher(folder: Path, info: dict[str, Any], cell: Cell, labels_digest: str) -> None:
    """Refuse a teacher whose fine-tuning stage (stage.json `info`) saw other labels than the
    student may: another fold, labeled fraction or split. Its split is compared without extra
    unlabeled images on both sides (`Split.labels_digest`; a stage.json of the versions before
    it holds only `split_digest`, which then must be the labels-only one). What a stage.json
    does not record is not compared."""
    fold, fraction = info.get("fold", cell.fold), float(info.get("fraction", cell.fraction))
    if (fold, fraction) != (cell.fold, cell.fraction):
        raise TfSemisegError(f"{folder}: trained on fold {fold} at {100 * fraction:g}% labels; a teacher of {cell} "
                             "must be of the same fold and labeled fraction")
    digest = recorded_labels_digest(info)
    if digest is not None and digest != labels_digest:
        raise TfSemisegError(f"{folder}: trained on another split (split digest {digest}, the student's "
                             f"{labels_digest} without extra unlabeled images); a teacher must be trained on the "
                             "student's split, or it has seen labels the student may not use")


def _trained_config(folder: Path) -> Optional[Config]:
    """The config a finished cell's fine-tuning stage was trained with (its stage.json, else its
    result files, which older versions alone recorded it in), or None."""
    for path in (stage_files(folder / "finetune").done, folder / result_name("test"), folder / result_name("val")):
        config = read_json(path).get("config") if path.is_file() else None
        if config:
            return from_dict(config)
    return None


def evaluate_method(cfg: Config, data: PreparedData, run: RunLayout, cell: Cell, echo: Echo = print,
                    part: str = "test") -> dict[str, Any]:
    """Evaluate the fine-tuned weights of a finished cell on its split's test (or val) volumes."""
    weights = run.weights(cell, "finetune")
    if not weights.is_file():
        raise TfSemisegError(f"{weights}: missing; run the method first")
    split = data.split(cell.fold)
    unet = load_segmenter(cfg, weights, len(data.class_names))  # float32 whatever the training precision
    start = time.perf_counter()
    volumes = evaluation_volumes(data, split, part)
    # the configured evaluation, and the other mirroring setting beside it (single pass is the paper's)
    report, other = (evaluate_volumes(unet.segmenter, volumes, data.class_names, mirror=m)
                     for m in (cfg.evaluation.mirror, not cfg.evaluation.mirror))
    stages = {}
    for plan in METHODS[cell.method]:
        info = read_json(run.stage_done(cell, plan.name))
        stages[plan.name] = {k: info.get(k) for k in ("seconds", "validation_seconds", "steps", "epochs", "last_loss",
                                                      "best_val_dice", "best_val_loss", "init", "precision",
                                                      "teacher_weights_sha256")}
    labeled = split.labeled(cell.fraction)
    result = {
        "method": cell.method, "fold": cell.fold, "fraction": cell.fraction, "part": part,
        "dataset": data.index.name, "class_names": list(data.class_names),
        "split_digest": split.digest(), "num_labeled_volumes": len(labeled),
        "labeled_cases": labeled, "seed": cfg.train.seed,
        "stages": stages, "eval_seconds": round(time.perf_counter() - start, 2),
        "metrics": report, "extra_metrics": [other], "config": cfg.to_dict(),
    }
    atomic_write_json(run.result(cell, part), result)
    echo(f"{cell.method}, fold {cell.fold}, {100 * cell.fraction:g}% labeled ({len(labeled)} volumes), {part} set:")
    echo(format_report(report))
    return result


def prepare_and_run(cfg: Config, data_dir: Path, run: RunLayout, cell: Cell, strategy, echo: Echo = print,
                    until: Optional[str] = None, part: str = "test") -> Optional[dict[str, Any]]:
    data = prepare_dataset(cfg, data_dir, run.root)
    return run_method(cfg, data, run, cell, strategy, echo, until, part)


def run_grid(cfg: Config, data_dir: Path, run: RunLayout, methods: list[str], fractions: list[float],
             folds: list[int], strategy, echo: Echo = print) -> list[dict[str, Any]]:
    """Every (fold, method, fraction) cell, in that order, resumable at cell and stage level.

    Methods that start from the global stage share one global pre-training per fold.
    """
    data = prepare_dataset(cfg, data_dir, run.root)
    cells = [Cell(fold, fraction, method) for fold in folds for method in methods for fraction in fractions]
    results = []
    for cell in cells:
        done = run.result(cell)
        if done.is_file():
            echo(f"== {cell}: done ({done})")
            results.append(read_json(done))
            continue
        echo(f"== {cell}")
        results.append(run_method(cfg, data, run, cell, strategy, echo))
    return results
