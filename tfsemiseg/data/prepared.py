"""A dataset folder turned into cached slices plus splits, and the per-stage views of it.

`prepare_dataset` validates and caches every case and loads (or writes) the splits.
`training_arrays` is the only way training stages get data: it is built from the train
cases of one split alone, so validation and test labels cannot reach a training stage.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tfsemiseg.config import Config
from tfsemiseg.data.datasets import DatasetIndex, discover
from tfsemiseg.data.preprocess import SliceCache, SliceVolume
from tfsemiseg.data.splits import Split, get_split, load_or_create_splits
from tfsemiseg.errors import DataError


@dataclass
class PreparedData:
    """Every case of a dataset, preprocessed, and the folds of its split."""

    index: DatasetIndex
    volumes: dict[str, SliceVolume]
    folds: list[Split]
    built: int  # cache entries built by this call (0: everything came from the cache)
    seconds: float

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    def split(self, fold: int) -> Split:
        return get_split(self.folds, fold)


def prepare_dataset(
    cfg: Config,
    data_dir: Path,
    run_root: Path,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> PreparedData:
    """Validate, preprocess and cache every case of `data_dir`; load or write splits."""
    start = time.perf_counter()
    index = discover(Path(data_dir), cfg.data)
    cache = slice_cache(cfg, index)
    cases = index.labeled + (index.unlabeled if cfg.data.use_test_images_unlabeled else [])
    volumes: dict[str, SliceVolume] = {}
    built = 0
    for i, case in enumerate(cases):
        vol, new = cache.get(case, cfg.data, index.num_classes)
        volumes[case.case_id] = vol
        built += int(new)
        if progress:
            progress(i + 1, len(cases), case.case_id)
    extra = [c.case_id for c in index.unlabeled] if cfg.data.use_test_images_unlabeled else []
    folds = load_or_create_splits(run_root, [c.case_id for c in index.labeled], extra, cfg.split)
    return PreparedData(index, volumes, folds, built, time.perf_counter() - start)


@dataclass
class TrainingArrays:
    """What the training stages may see for one split and labeled fraction.

    unlabeled_images: float32 [N, H, W], every train slice (labeled and unlabeled train
    volumes, plus extra unlabeled volumes) for the label-free stages;
    labeled_images / labeled_labels: float32 / uint8 [M, H, W], slices of the labeled
    train volumes only.
    """

    unlabeled_images: np.ndarray
    labeled_images: np.ndarray
    labeled_labels: np.ndarray
    labeled_cases: list[str]
    unlabeled_cases: list[str]


def training_arrays(data: PreparedData, split: Split, fraction: float) -> TrainingArrays:
    """Slices of the train cases of `split` only; labels only of its labeled fraction."""
    labeled = split.labeled(fraction)
    unlabeled = split.unlabeled(fraction) + split.extra_unlabeled
    for cid in labeled:
        if data.volumes[cid].label is None:
            raise DataError(f"case {cid} is in the labeled subset but has no label")
    all_images = [data.volumes[c].image for c in labeled + unlabeled]
    return TrainingArrays(
        unlabeled_images=np.concatenate(all_images, 0),
        labeled_images=np.concatenate([data.volumes[c].image for c in labeled], 0),
        labeled_labels=np.concatenate([data.volumes[c].label for c in labeled], 0),  # type: ignore[misc]
        labeled_cases=list(labeled),
        unlabeled_cases=list(unlabeled),
    )


def evaluation_volumes(data: PreparedData, split: Split, part: str) -> list[SliceVolume]:
    """The whole volumes of the 'val' or 'test' part, in case order."""
    if part not in ("val", "test"):
        raise ValueError(f"part must be 'val' or 'test', got {part!r}")
    return [data.volumes[c] for c in getattr(split, part)]


def volumes_along(data: PreparedData, cfg: Config, case_ids: list[str], axis: int) -> list[SliceVolume]:
    """The cases `case_ids` of `data` sliced along `axis` (`cfg`'s preprocessing otherwise), in
    that order, from the slice cache (built there if absent): the volumes of another view."""
    cases = {c.case_id: c for c in data.index.labeled + data.index.unlabeled}
    along = cfg.replace(**{"data.slice_axis": axis % 3})
    cache = slice_cache(along, data.index)
    return [cache.get(cases[c], along.data, data.index.num_classes)[0] for c in case_ids]


def slice_cache(cfg: Config, index: DatasetIndex) -> SliceCache:
    """The cache of `index`'s cases preprocessed by `cfg.data`: one folder per dataset and
    slicing axis, so that views along different axes keep their entries side by side."""
    return SliceCache(Path(cfg.data.cache_dir) / _cache_folder(index) / f"axis{cfg.data.slice_axis % 3}")


def label_distribution(volumes: list[SliceVolume], num_classes: int) -> np.ndarray:
    """Voxel fraction per class at model resolution."""
    counts = np.zeros(num_classes, np.int64)
    for v in volumes:
        if v.label is not None:
            counts += np.bincount(v.label.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, counts.sum())


def _cache_folder(index: DatasetIndex) -> str:
    """Dataset name plus a hash of its folder, so two datasets never share entries."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in index.name)
    return f"{safe}-{hashlib.sha256(str(index.root.resolve()).encode()).hexdigest()[:8]}"
