"""Methods as sequences of stages, run resumably in a run folder, then evaluated.

Run folder layout (ROOT = OUTPUT_DIR/NAME from the config, or --out):

    ROOT/splits.json                                   the folds, reused
    ROOT/fold{k}/global/                               global stage (no labels: shared
                                                       by every fraction and method)
    ROOT/fold{k}/frac{f}/{method}/{local,finetune}/    the labeled stages
    ROOT/fold{k}/frac{f}/{method}/result.json          test-set evaluation

Each stage folder holds checkpoints/ (resume), best/ (fine-tune), tb/ (TensorBoard),
train.log, weights.npz (the stage's final weights, by variable name) and stage.json,
written last: a stage with stage.json is finished and is skipped on the next run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


from tfsemiseg.config import Config
from tfsemiseg.data.prepared import PreparedData, TrainingArrays, evaluation_volumes, prepare_dataset, training_arrays
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.evaluation import evaluate_volumes, format_report
from tfsemiseg.io_utils import atomic_write_json, read_json
from tfsemiseg.models.transfer import load_weights_by_name, save_weights_by_name
from tfsemiseg.models.unet import build_unet
from tfsemiseg.training.engine import STAGE_DONE, Trainer, stage_finished, write_stage_done
from tfsemiseg.training.baselines import LocalSelfTask, MixupTask, TCSMTask
from tfsemiseg.training.stages import FinetuneTask, GlobalTask, LocalTask
from tfsemiseg.training.precision import precision_policy, resolve_precision
from tfsemiseg.training.strategy import worker_barrier, worker_role

WEIGHTS = "weights.npz"
RESULT = "result.json"


@dataclass(frozen=True)
class StagePlan:
    stage: str  # "global" | "local" | "finetune"
    init_from: Optional[str] = None  # previous stage of this plan
    local_mode: Optional[str] = None  # local stage: stride | block | full | self
    variant: Optional[str] = None  # fine-tune stage: None | mixup | tcsm


_REQUIRE = {"global": ("encoder",), "local": ("encoder", "decoder")}

METHODS: dict[str, list[StagePlan]] = {
    "random": [StagePlan("finetune")],
    "global": [StagePlan("global"), StagePlan("finetune", "global")],
    "local-stride": [StagePlan("local", None, "stride"), StagePlan("finetune", "local")],
    "local-block": [StagePlan("local", None, "block"), StagePlan("finetune", "local")],
    "global+local-stride": [StagePlan("global"), StagePlan("local", "global", "stride"), StagePlan("finetune", "local")],
    "global+local-block": [StagePlan("global"), StagePlan("local", "global", "block"), StagePlan("finetune", "local")],
    "global+local-full": [StagePlan("global"), StagePlan("local", "global", "full"), StagePlan("finetune", "local")],
    "global+local-self": [StagePlan("global"), StagePlan("local", "global", "self"), StagePlan("finetune", "local")],
    "mixup": [StagePlan("finetune", variant="mixup")],
    "tcsm": [StagePlan("finetune", variant="tcsm")],
}


def canonical_method(name: str) -> str:
    """Accept the paper's spelling too: 'global+local(block)' -> 'global+local-block'."""
    key = name.strip().lower().replace("(", "-").replace(")", "").replace(" ", "")
    if key not in METHODS:
        raise TfSemisegError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return key


def method_dir(root: Path, method: str, fraction: float, fold: int) -> Path:
    return Path(root) / f"fold{fold}" / f"frac{fraction:g}" / canonical_method(method)


def stage_dir(root: Path, method: str, fraction: float, fold: int, stage: str) -> Path:
    if stage == "global":
        return Path(root) / f"fold{fold}" / "global"
    return method_dir(root, method, fraction, fold) / stage


def _stage_digest(cfg: Config, plan: StagePlan) -> str:
    """Hash of every setting the stage's result depends on (to refuse stale reuse)."""
    d = cfg.to_dict()
    d["data"].pop("cache_dir")  # where slices are cached does not change a result
    stage_cfg = d["train"][f"{plan.stage}_stage"]
    parts = {"data": d["data"], "split": d["split"], "model": d["model"], "augment": d["augment"],
             "stage": stage_cfg, "seed": d["train"]["seed"],
             "plan": [plan.stage, plan.init_from, plan.local_mode, plan.variant]}
    if plan.variant or plan.local_mode == "self":
        parts["baselines"] = d["train"]["baselines"]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_reuse(folder: Path, digest: str, parent: Optional[Path]) -> None:
    """Refuse a finished stage whose configuration, or whose parent stage, has changed since."""
    info = read_json(folder / STAGE_DONE)
    if info.get("config_digest") != digest:
        raise TfSemisegError(
            f"{folder}: finished with a different configuration (digest {info.get('config_digest')} != {digest}); "
            "use another --out or config name, or delete that folder"
        )
    if parent is not None and info.get("parent_weights_sha256") != _file_sha256(parent / WEIGHTS):
        raise TfSemisegError(
            f"{folder}: stale, it was trained from other weights than those now in {parent} "
            f"(that stage was retrained after it); delete {folder} and every stage after it, "
            "then rerun the same command to retrain them"
        )


def run_method(
    cfg: Config,
    data: PreparedData,
    root: Path,
    method: str,
    fraction: float,
    fold: int,
    strategy,
    echo: Callable[[str], None] = print,
    until: Optional[str] = None,
) -> Optional[dict[str, Any]]:
    """Run (or resume) every stage of `method`, then evaluate on the test volumes.

    With `until`, stop after that stage (evaluating only if it is the fine-tune stage).
    """
    method = canonical_method(method)
    precision = resolve_precision(cfg.train.precision)
    split = data.split(fold)
    arrays = training_arrays(data, split, fraction)
    folders: dict[str, Path] = {}
    plans = METHODS[method]
    if until is not None:
        if until not in [p.stage for p in plans]:
            raise TfSemisegError(f"method {method} has no {until} stage (its stages: {', '.join(p.stage for p in plans)})")
        plans = plans[: [p.stage for p in plans].index(until) + 1]
    for plan in plans:
        folder = stage_dir(root, method, fraction, fold, plan.stage)
        folders[plan.stage] = folder
        parent = folders[plan.init_from] if plan.init_from is not None else None
        digest = _stage_digest(_with_mode(cfg, plan), plan)
        if stage_finished(folder):
            _check_reuse(folder, digest, parent)
            echo(f"[{plan.stage}] already finished in {folder}")
            continue
        init = (parent / WEIGHTS, _REQUIRE[plan.init_from]) if parent is not None else None
        with precision_policy(precision):
            task = _make_task(_with_mode(cfg, plan), plan, arrays, data, split, init, strategy.num_replicas_in_sync)
            echo(f"[{plan.stage}] training in {folder} ({task.steps_per_epoch} steps/epoch, precision {precision})")
            trainer = Trainer(task, task.stage, folder, strategy, precision, cfg.train.seed)
            if task.transfer is not None:
                echo(f"[{plan.stage}] initial weights from {task.transfer.path}: {task.transfer.summary()}")
            result = trainer.fit()
        if trainer.chief:  # multi-worker: the chief writes the stage's outputs ...
            save_weights_by_name(task.model, folder / WEIGHTS)
            write_stage_done(folder, result, {
                "config_digest": digest, "method": method, "fold": fold, "fraction": fraction,
                "split_digest": split.digest(), "init": task.transfer.summary() if task.transfer else "random",
                "precision": precision,
                "parent_weights_sha256": _file_sha256(parent / WEIGHTS) if parent is not None else None,
            })
        worker_barrier(strategy)  # ... before any worker reads them
    if plans[-1].stage != "finetune" or not worker_role(strategy)[0]:
        return None
    return evaluate_method(cfg, data, root, method, fraction, fold, echo)


def evaluate_method(
    cfg: Config, data: PreparedData, root: Path, method: str, fraction: float, fold: int,
    echo: Callable[[str], None] = print, part: str = "test",
) -> dict[str, Any]:
    """Evaluate the fine-tuned weights of a finished method on the split's test volumes."""
    method = canonical_method(method)
    folder = method_dir(root, method, fraction, fold)
    weights = stage_dir(root, method, fraction, fold, "finetune") / WEIGHTS
    if not weights.is_file():
        raise TfSemisegError(f"{weights}: missing; run the method first")
    split = data.split(fold)
    with precision_policy("float32"):  # evaluation runs in float32 whatever the training precision
        unet = build_unet(cfg.model, cfg.data.image_size, len(data.class_names))
    load_weights_by_name(unet.segmenter, weights, require=("encoder", "decoder", "seg_head"))
    start = time.perf_counter()
    volumes = evaluation_volumes(data, split, part)
    # the configured evaluation, and the other mirroring setting beside it (single pass is the paper's)
    report, other = (evaluate_volumes(unet.segmenter, volumes, data.class_names, mirror=m)
                     for m in (cfg.evaluation.mirror, not cfg.evaluation.mirror))
    stages = {}
    for plan in METHODS[method]:
        info = read_json(stage_dir(root, method, fraction, fold, plan.stage) / STAGE_DONE)
        stages[plan.stage] = {k: info.get(k) for k in ("seconds", "validation_seconds", "steps", "epochs", "last_loss",
                                                       "best_val_dice", "init", "precision")}
    result = {
        "method": method, "fold": fold, "fraction": fraction, "part": part,
        "dataset": data.index.name, "class_names": list(data.class_names),
        "split_digest": split.digest(), "num_labeled_volumes": len(split.labeled(fraction)),
        "labeled_cases": split.labeled(fraction), "seed": cfg.train.seed,
        "stages": stages, "eval_seconds": round(time.perf_counter() - start, 2),
        "metrics": report, "extra_metrics": [other], "config": cfg.to_dict(),
    }
    atomic_write_json(folder / (RESULT if part == "test" else f"result_{part}.json"), result)
    echo(f"{method}, fold {fold}, {100 * fraction:g}% labeled ({len(split.labeled(fraction))} volumes), {part} set:")
    echo(format_report(report))
    return result


def _with_mode(cfg: Config, plan: StagePlan) -> Config:
    if plan.stage == "local" and plan.local_mode not in (None, "self") and plan.local_mode != cfg.train.local_stage.mode:
        return cfg.replace(**{"train.local_stage.mode": plan.local_mode})
    return cfg


def _make_task(cfg, plan, arrays: TrainingArrays, data: PreparedData, split, init, num_replicas: int):
    k = len(data.class_names)
    kw = {"init_from": init, "num_replicas": num_replicas}
    if plan.stage == "global":
        return GlobalTask(cfg, arrays, k, **kw)
    if plan.stage == "local":
        return (LocalSelfTask if plan.local_mode == "self" else LocalTask)(cfg, arrays, k, **kw)
    finetune = {None: FinetuneTask, "mixup": MixupTask, "tcsm": TCSMTask}[plan.variant]
    return finetune(cfg, arrays, k, val_volumes=evaluation_volumes(data, split, "val"), **kw)


def prepare_and_run(cfg: Config, data_dir: Path, root: Path, method: str, fraction: float, fold: int, strategy,
                    echo: Callable[[str], None] = print, until: Optional[str] = None) -> Optional[dict[str, Any]]:
    data = prepare_dataset(cfg, data_dir, root)
    return run_method(cfg, data, root, method, fraction, fold, strategy, echo, until)


def run_grid(cfg: Config, data_dir: Path, root: Path, methods: list[str], fractions: list[float], folds: list[int],
             strategy, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every (fold, method, fraction) cell, in that order, resumable at cell and stage level.

    Methods that start from the global stage share one global pre-training per fold.
    """
    data = prepare_dataset(cfg, data_dir, root)
    methods = [canonical_method(m) for m in methods]
    results = []
    for fold in folds:
        for method in methods:
            for fraction in fractions:
                done = method_dir(root, method, fraction, fold) / RESULT
                if done.is_file():
                    echo(f"== fold {fold}, {method}, {100 * fraction:g}%: done ({done})")
                    results.append(read_json(done))
                    continue
                echo(f"== fold {fold}, {method}, {100 * fraction:g}%")
                results.append(run_method(cfg, data, root, method, fraction, fold, strategy, echo))
    return results
