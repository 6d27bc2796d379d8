"""Seeded volume-level splits, written to splits.json and reused (as nnU-Net does).

Each fold is an independent seeded random split of the labeled cases into
train/val/test by the configured ratios (the paper: 4 random splits, 3:1:1 for
Hippocampus). Within train, a seeded shuffle fixes the labeling order: fraction f
labels the first max(1, round(f * n_train)) volumes (round half up), so smaller
fractions are nested in larger ones; the other train volumes are unlabeled.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

from tfsemiseg.config import SplitConfig
from tfsemiseg.errors import DataError
from tfsemiseg.io_utils import atomic_write_json, read_json
from tfsemiseg.layout import RunLayout



@dataclass(frozen=True)
class Split:
    """One fold: case ids per part, and the labeling order of the train cases."""

    fold: int
    train: list[str]
    val: list[str]
    test: list[str]
    labeling_order: list[str]  # a permutation of train
    extra_unlabeled: list[str]  # images without labels (e.g. MSD imagesTs)

    def num_labeled(self, fraction: float) -> int:
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"labeled fraction must be in (0, 1], got {fraction}")
        # exact decimal round half up: in floats 0.35 * 90 = 31.499999999999996 would round down
        exact = (Decimal(str(fraction)) * len(self.train)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return max(1, min(len(self.train), int(exact)))

    def labeled(self, fraction: float) -> list[str]:
        """Train cases whose labels the given fraction may use."""
        return self.labeling_order[: self.num_labeled(fraction)]

    def unlabeled(self, fraction: float) -> list[str]:
        """Train cases used without labels at this fraction."""
        return self.labeling_order[self.num_labeled(fraction) :]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def labels_digest(self) -> str:
        """The digest without the extra unlabeled images: two splits with the same one give the
        same labels to the same fold and fraction."""
        return replace(self, extra_unlabeled=[]).digest()


def make_split(case_ids: list[str], extra_unlabeled: list[str], cfg: SplitConfig, fold: int) -> Split:
    """The split of fold `fold`: a pure function of the sorted case ids, seed and ratios."""
    ids = sorted(case_ids)
    n = len(ids)
    total = sum(cfg.ratios)
    n_val = int(math.floor(n * cfg.ratios[1] / total + 0.5))
    n_test = int(math.floor(n * cfg.ratios[2] / total + 0.5))
    n_train = n - n_val - n_test
    if n_train < 1 or (cfg.ratios[1] > 0 and n_val < 1) or (cfg.ratios[2] > 0 and n_test < 1):
        raise DataError(f"{n} labeled volumes are too few for ratios {cfg.ratios}")
    rng = np.random.default_rng([cfg.seed, fold])
    perm = [ids[i] for i in rng.permutation(n)]
    train, val, test = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    order_rng = np.random.default_rng([cfg.seed, fold, 1])
    labeling_order = [train[i] for i in order_rng.permutation(len(train))]
    return Split(fold, sorted(train), sorted(val), sorted(test), labeling_order, sorted(extra_unlabeled))


def recorded_labels_digest(stage_info: dict) -> str | None:
    """The labels-only split digest (`Split.labels_digest`) a finished stage's stage.json records:
    `labels_split_digest`, or in the versions before it `split_digest`, which then must be the
    labels-only one (a split with extra unlabeled images does not match it); None if neither."""
    return stage_info.get("labels_split_digest", stage_info.get("split_digest"))


def load_or_create_splits(
    run_root: Path, case_ids: list[str], extra_unlabeled: list[str], cfg: SplitConfig
) -> list[Split]:
    """Read `run_root/splits.json` if it matches this dataset and config, else write it.

    A file that exists but was made for other cases, seed or ratios is an error rather
    than silently replaced: results computed on the old split would no longer match.
    """
    path = RunLayout(run_root).splits
    header = {"seed": cfg.seed, "ratios": list(cfg.ratios), "cases": sorted(case_ids)}
    if path.is_file():
        data = read_json(path)
        old = {k: data.get(k) for k in header}
        if old != header:
            what = [k for k in header if old[k] != header[k]]
            raise DataError(
                f"{path}: was written for different {', '.join(what)}; use another output folder or delete it"
            )
        folds = [Split(**f) for f in data["folds"]]
        if len(folds) >= cfg.num_folds and all(f.extra_unlabeled == sorted(extra_unlabeled) for f in folds):
            return folds
    folds = [make_split(case_ids, extra_unlabeled, cfg, k) for k in range(cfg.num_folds)]
    atomic_write_json(path, {**header, "folds": [asdict(f) for f in folds]})
    return folds


def get_split(folds: list[Split], fold: int) -> Split:
    if not 0 <= fold < len(folds):
        raise DataError(f"fold {fold} does not exist: the splits have folds 0..{len(folds) - 1} (split.num_folds)")
    return folds[fold]
