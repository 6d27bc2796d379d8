"""Shared fixtures for the data-layer and CLI tests.

* `phantom_dir`: a small session-wide phantom dataset (MSD layout); treat as read-only,
  copy it with `copy_phantom` before corrupting anything.
* `real_data_dir`: the real Task04_Hippocampus folder beside the repo (skips if absent).
* `real_subset`: copies a few real volumes into tmp with a small dataset.json, so that
  corrupt variants can be made without touching the read-only shared folder.
* `make_cfg`: a Config whose cache lives in tmp (tests never write into the repo).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402

from tfsemiseg.config import Config  # noqa: E402

REAL_DATA = REPO.parent / "shared/data/Task04_Hippocampus"
PHANTOM_SHAPE = (24, 28, 20)
PHANTOM_TRAIN = 10
PHANTOM_TEST = 2
PHANTOM_CLASSES = ["background", "head", "tail"]


# --------------------------------------------------------------------------- helpers


def write_nifti(path: Path, array: np.ndarray, affine: Optional[np.ndarray] = None) -> Path:
    """Save `array` as NIfTI (dtype kept) at `path`, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def read_nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def write_msd(
    root: Path,
    cases: Sequence[tuple[str, np.ndarray, Optional[np.ndarray]]],
    labels: Optional[dict[str, str]] = None,
    name: str = "Tiny",
) -> Path:
    """Write an MSD-layout folder: cases with a label go to training, the others to test."""
    root = Path(root)
    training, test = [], []
    for case_id, image, label in cases:
        fname = f"{case_id}.nii.gz"
        if label is None:
            write_nifti(root / "imagesTs" / fname, image)
            test.append(f"./imagesTs/{fname}")
        else:
            write_nifti(root / "imagesTr" / fname, image)
            write_nifti(root / "labelsTr" / fname, label)
            training.append({"image": f"./imagesTr/{fname}", "label": f"./labelsTr/{fname}"})
    desc = {
        "name": name,
        "labels": labels or {"0": "background", "1": "a", "2": "b"},
        "numTraining": len(training),
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(desc, indent=2))
    return root


def cfg_with(tmp: Path, **changes) -> Config:
    """Default config with the cache under `tmp`, plus dotted overrides."""
    return Config().replace(**{"data.cache_dir": str(Path(tmp) / "cache"), **changes})


def no_aug(cfg: Config) -> Config:
    """`cfg` with every augmentation probability set to 0."""
    changes = {}
    for section, value in cfg.to_dict()["augment"].items():
        for key in value:
            if key.endswith("_prob"):
                changes[f"augment.{section}.{key}"] = 0.0
    return cfg.replace(**changes)


def np_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Independent bilinear resize of one [h, w] slice, half-pixel centres, edge clamp."""

    def axis(n: int):
        s = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        lo = np.floor(s).astype(int)
        return lo, np.minimum(lo + 1, n - 1), s - lo

    rl, rh, rf = axis(x.shape[0])
    cl, ch, cf = axis(x.shape[1])
    x = x.astype(np.float64)
    top = x[rl][:, cl] * (1 - cf) + x[rl][:, ch] * cf
    bottom = x[rh][:, cl] * (1 - cf) + x[rh][:, ch] * cf
    return top * (1 - rf[:, None]) + bottom * rf[:, None]


def np_nearest(x: np.ndarray, size: int) -> np.ndarray:
    """Independent nearest-neighbour resize, half-pixel centres."""
    r = np.minimum(np.floor((np.arange(size) + 0.5) * x.shape[0] / size).astype(int), x.shape[0] - 1)
    c = np.minimum(np.floor((np.arange(size) + 0.5) * x.shape[1] / size).astype(int), x.shape[1] - 1)
    return x[r][:, c]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """10 labeled + 2 unlabeled phantom volumes of shape (24, 28, 20). Do not modify."""
    from tfsemiseg.data.phantom import make_phantom

    out = tmp_path_factory.mktemp("phantom") / "Phantom"
    make_phantom(out, num_train=PHANTOM_TRAIN, num_test=PHANTOM_TEST, shape=PHANTOM_SHAPE, seed=0)
    return out


@pytest.fixture
def copy_phantom(phantom_dir, tmp_path) -> Callable[[], Path]:
    """Returns a function making a private, modifiable copy of the phantom dataset."""
    counter = [0]

    def copy() -> Path:
        counter[0] += 1
        dest = tmp_path / f"phantom_copy{counter[0]}"
        shutil.copytree(phantom_dir, dest)
        return dest

    return copy


@pytest.fixture
def make_cfg(tmp_path) -> Callable[..., Config]:
    """make_cfg(**dotted_overrides) -> Config with data.cache_dir in this test's tmp."""
    return lambda **changes: cfg_with(tmp_path, **changes)


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory) -> Path:
    """A session cache folder so repeated prepares of the phantom are fast."""
    return tmp_path_factory.mktemp("session_cache")


@pytest.fixture
def prepared_phantom(phantom_dir, prepared_cache, tmp_path):
    """A fresh PreparedData of the phantom (its own object: safe to modify in memory)."""
    from tfsemiseg.data.prepared import prepare_dataset

    cfg = Config().replace(**{"data.cache_dir": str(prepared_cache)})
    return prepare_dataset(cfg, phantom_dir, tmp_path / "run")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "dataset.json").is_file():
        pytest.skip(f"real Hippocampus data not found at {REAL_DATA}; these tests need ../shared/data")
    return REAL_DATA


@pytest.fixture
def real_subset(real_data_dir, tmp_path) -> Callable[..., Path]:
    """real_subset(train_ids, test_ids=(), dest=None) -> a tmp MSD folder with copies of
    those real cases (e.g. "hippocampus_003") and a dataset.json carrying the real labels."""

    def make(train_ids: Sequence[str], test_ids: Sequence[str] = (), dest: Optional[Path] = None) -> Path:
        root = Path(dest) if dest is not None else tmp_path / "real_subset"
        desc = json.loads((real_data_dir / "dataset.json").read_text())
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        training, test = [], []
        for cid in train_ids:
            for sub in ("imagesTr", "labelsTr"):
                shutil.copyfile(real_data_dir / sub / f"{cid}.nii.gz", root / sub / f"{cid}.nii.gz")
                os.chmod(root / sub / f"{cid}.nii.gz", 0o644)
            training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
        for cid in test_ids:
            shutil.copyfile(real_data_dir / "imagesTs" / f"{cid}.nii.gz", root / "imagesTs" / f"{cid}.nii.gz")
            os.chmod(root / "imagesTs" / f"{cid}.nii.gz", 0o644)
            test.append(f"./imagesTs/{cid}.nii.gz")
        small = {k: desc[k] for k in ("name", "labels", "modality", "tensorImageSize") if k in desc}
        small.update(numTraining=len(training), numTest=len(test), training=training, test=test)
        (root / "dataset.json").write_text(json.dumps(small, indent=2))
        return root

    return make
