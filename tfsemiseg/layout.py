"""Where every file of a run, and of an exported model, lives: the one place that spells
their names.

A run folder (ROOT = OUTPUT_DIR/NAME from the config, or --out)::

    ROOT/splits.json                                  the folds, written once and reused
    ROOT/fold{k}/global/                              the global stage (no labels: shared by
                                                      every fraction and method of the fold)
    ROOT/fold{k}/frac{f}/{method}/{local,finetune}/   the stages that use labels
    ROOT/fold{k}/frac{f}/{method}/result.json         the test-set evaluation (result_val.json:
                                                      the validation set's, on request)

A stage folder holds checkpoints/ (resume), best/ (fine-tuning's best validation
checkpoint), tb/ (TensorBoard), train.log, weights.npz (the stage's final weights, by
variable name) and stage.json, written last: a stage with stage.json is finished.

An exported model folder holds the SavedModel (saved_model.pb, variables/),
metadata.json and MODEL_CARD.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.training.plans import canonical_method

SPLITS = "splits.json"
RESULT = "result.json"
STAGE_DONE = "stage.json"
WEIGHTS = "weights.npz"
TRAIN_LOG = "train.log"
CHECKPOINTS = "checkpoints"
BEST = "best"
TENSORBOARD = "tb"
SAVED_MODEL = "saved_model.pb"
METADATA = "metadata.json"
MODEL_CARD = "MODEL_CARD.md"


@dataclass(frozen=True)
class Cell:
    """One (fold, labeled fraction, method) of an experiment; the method's name is canonical."""

    fold: int
    fraction: float
    method: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", canonical_method(self.method))
        object.__setattr__(self, "fraction", float(self.fraction))
        object.__setattr__(self, "fold", int(self.fold))

    def __str__(self) -> str:
        return f"fold {self.fold}, {self.method}, {100 * self.fraction:g}%"


@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one run folder `root`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def splits(self) -> Path:
        return self.root / SPLITS

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / f"fold{cell.fold}" / f"frac{cell.fraction:g}" / cell.method

    def stage_dir(self, cell: Cell, stage: str) -> Path:
        """The folder of stage `stage` of the cell's method (the global stage is the fold's)."""
        if stage == "global":
            return self.root / f"fold{cell.fold}" / "global"
        return self.cell_dir(cell) / stage

    def weights(self, cell: Cell, stage: str = "finetune") -> Path:
        return stage_files(self.stage_dir(cell, stage)).weights

    def stage_done(self, cell: Cell, stage: str) -> Path:
        return stage_files(self.stage_dir(cell, stage)).done

    def result(self, cell: Cell, part: str = "test") -> Path:
        return self.cell_dir(cell) / result_name(part)

    def results(self) -> Iterator[Path]:
        """Every test-set result file below the root, sorted."""
        return iter(sorted(self.root.glob(f"**/{RESULT}")))


def result_name(part: str = "test") -> str:
    """The result file of an evaluation of the 'test' (result.json) or another part."""
    return RESULT if part == "test" else RESULT.replace(".json", f"_{part}.json")


class StageFiles(NamedTuple):
    """The files of one stage folder."""

    done: Path  # stage.json, written last
    weights: Path
    log: Path
    checkpoints: Path
    best: Path
    tensorboard: Path


def stage_files(folder: Path) -> StageFiles:
    f = Path(folder)
    return StageFiles(f / STAGE_DONE, f / WEIGHTS, f / TRAIN_LOG, f / CHECKPOINTS, f / BEST, f / TENSORBOARD)


def finished_cell_files(cell_dir: Path) -> tuple[Path, Path]:
    """(result.json, finetune/weights.npz) of a method folder given directly (export); the
    validation result (result_val.json) where the cell was evaluated on validation only."""
    cell_dir = Path(cell_dir)
    result = cell_dir / RESULT
    if not result.is_file() and (cell_dir / result_name("val")).is_file():
        result = cell_dir / result_name("val")
    return result, stage_files(cell_dir / "finetune").weights


def run_root_of(cell_dir: Path) -> Path:
    """The run folder a method folder ROOT/fold{k}/frac{f}/{method} belongs to."""
    path = Path(cell_dir).resolve()
    if len(path.parents) < 3 or not (path.parent.name.startswith("frac") and path.parents[1].name.startswith("fold")):
        raise TfSemisegError(f"{cell_dir}: not a method folder of a run (RUN/fold<k>/frac<f>/<method>)")
    return path.parents[2]


class ModelFiles(NamedTuple):
    """The files of an exported model folder."""

    saved_model: Path
    metadata: Path
    model_card: Path


def model_files(folder: Path) -> ModelFiles:
    f = Path(folder)
    return ModelFiles(f / SAVED_MODEL, f / METADATA, f / MODEL_CARD)
