"""The methods of the paper's Table 1, each a plan of stages (no TensorFlow import).

A method is a list of `StagePlan`s run in order; each stage but the first starts from
the weights of an earlier stage of the same plan. Stage names are always one of
`STAGE_NAMES`; a stage's settings live in `train.<name>_stage` of the config, its
folder in the run layout (`tfsemiseg.layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tfsemiseg.errors import TfSemisegError

STAGE_NAMES = ("global", "local", "finetune")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a method: its name and what it starts from and how it differs."""

    name: str  # one of STAGE_NAMES
    init_from: Optional[str] = None  # an earlier stage of the same plan, or None: random weights
    local_mode: Optional[str] = None  # local stage: stride | block | full (supervised) | self
    variant: Optional[str] = None  # fine-tuning stage: None | mixup | tcsm | self-training


# The U-Net parts a stage must find in the weights it starts from.
REQUIRED_PARTS = {"global": ("encoder",), "local": ("encoder", "decoder")}
# The parts every fine-tuned model has (what evaluation and export load).
SEGMENTER_PARTS = ("encoder", "decoder", "seg_head")


def _local(mode: str, after_global: bool) -> list[StagePlan]:
    first = [StagePlan("global")] if after_global else []
    init = "global" if after_global else None
    return first + [StagePlan("local", init, mode), StagePlan("finetune", "local")]


# In the order of the paper's Table 1 (its baselines, then its method), then global+local-full
# and self-training (pseudo-labels from other methods' models: train.self_training), which
# the paper does not have.
METHODS: dict[str, list[StagePlan]] = {
    "random": [StagePlan("finetune")],
    "global": [StagePlan("global"), StagePlan("finetune", "global")],
    "global+local-self": _local("self", True),
    "mixup": [StagePlan("finetune", variant="mixup")],
    "tcsm": [StagePlan("finetune", variant="tcsm")],
    "local-stride": _local("stride", False),
    "local-block": _local("block", False),
    "global+local-stride": _local("stride", True),
    "global+local-block": _local("block", True),
    "global+local-full": _local("full", True),
    "self-training": [StagePlan("finetune", variant="self-training")],
}

METHOD_HELP = (", ".join(METHODS) + " (the paper's spelling, e.g. 'global+local(block)', works too).")


def canonical_method(name: str) -> str:
    """Accept the paper's spelling too: 'global+local(block)' -> 'global+local-block'."""
    key = name.strip().lower().replace("(", "-").replace(")", "").replace(" ", "")
    if key not in METHODS:
        raise TfSemisegError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return key


def is_cell_folder(name: str) -> bool:
    """Whether a self-training teacher is given as a cell folder (a path: it holds a '/')
    rather than a method."""
    return "/" in name or "\\" in name


def teacher_key(name: str) -> str:
    """A self-training teacher's identity: the canonical method name, or the folder's absolute
    path (relative paths are taken from the working directory; 'runs/x/' and './runs/x' are
    the same teacher)."""
    return str(Path(name).expanduser().resolve()) if is_cell_folder(name) else canonical_method(name)


def plan_until(method: str, until: Optional[str] = None) -> list[StagePlan]:
    """The stages of `method`, up to and including `until` (all when None)."""
    plans = METHODS[canonical_method(method)]
    names = [p.name for p in plans]
    if until is None:
        return plans
    if until not in names:
        raise TfSemisegError(f"method {method} has no {until} stage (its stages: {', '.join(names)})")
    return plans[: names.index(until) + 1]
