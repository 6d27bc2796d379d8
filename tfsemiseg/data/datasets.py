"""Finding the cases of a dataset folder: MSD / nnU-Net layout and MM-WHS layout."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tfsemiseg.config import DataConfig
from tfsemiseg.errors import DataError


@dataclass(frozen=True)
class Case:
    """One volume: an image and, for labeled cases, its label map."""

    case_id: str
    image: Path
    label: Optional[Path] = None


@dataclass
class DatasetIndex:
    """Every case of a dataset folder.

    labeled: image/label pairs (split into train/val/test); unlabeled: images without
    labels (MSD imagesTs), usable only by the unlabeled (global) stage.
    """

    root: Path
    name: str
    class_names: list[str]
    labeled: list[Case]
    unlabeled: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def case_id_of(path: Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def discover(root: Path, cfg: DataConfig) -> DatasetIndex:
    """List the cases of `root` for the configured layout; raise DataError if unusable."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    index = _discover_msd(root, cfg) if cfg.layout == "msd" else _discover_mmwhs(root, cfg)
    if not index.labeled:
        raise DataError(f"{root}: empty dataset (no labeled image/label pairs found)")
    return index


def _discover_msd(root: Path, cfg: DataConfig) -> DatasetIndex:
    desc_path = root / "dataset.json"
    if not desc_path.is_file():
        raise DataError(f"{desc_path}: missing (an MSD / nnU-Net folder needs dataset.json)")
    try:
        desc = json.loads(desc_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{desc_path}: not valid JSON ({exc})") from None
    if not isinstance(desc, dict) or not isinstance(desc.get("training", []), list):
        raise DataError(f"{desc_path}: expected an object with a 'training' list")
    try:
        labels = {int(k): str(v) for k, v in desc.get("labels", {}).items()}
    except (ValueError, AttributeError):
        raise DataError(f"{desc_path}: 'labels' must map integer values to names") from None
    if cfg.class_names:
        class_names = list(cfg.class_names)
    else:
        if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
            raise DataError(f"{desc_path}: 'labels' must be 0..K-1 with K >= 2, got {sorted(labels)}")
        class_names = [labels[i] for i in range(len(labels))]

    def resolve(rel: str, what: str) -> Path:
        path = (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        if not path.is_file():
            raise DataError(f"{desc_path}: {what} {rel} listed but {path} does not exist")
        return path

    labeled = []
    for i, entry in enumerate(desc.get("training", [])):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{desc_path}: training entry {i} needs 'image' and 'label'")
        image, label = resolve(entry["image"], "image"), resolve(entry["label"], "label")
        labeled.append(Case(case_id_of(image), image, label))
    unlabeled = []
    for rel in desc.get("test", []) or []:
        rel = rel["image"] if isinstance(rel, dict) else rel
        image = resolve(rel, "test image")
        unlabeled.append(Case(case_id_of(image), image, None))
    _check_unique(labeled + unlabeled, desc_path)
    name = str(desc.get("name") or root.name)
    return DatasetIndex(root, name, class_names, sorted(labeled, key=_key), sorted(unlabeled, key=_key))


def _discover_mmwhs(root: Path, cfg: DataConfig) -> DatasetIndex:
    images = {p.name[: -len("_image.nii.gz")]: p for p in root.glob("*_image.nii.gz")}
    labels = {p.name[: -len("_label.nii.gz")]: p for p in root.glob("*_label.nii.gz")}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DataError(f"{labels[orphans[0]]}: label without a matching {orphans[0]}_image.nii.gz")
    labeled = [Case(k, images[k], labels[k]) for k in sorted(images) if k in labels]
    unlabeled = [Case(k, images[k], None) for k in sorted(images) if k not in labels]
    return DatasetIndex(root, root.name, list(cfg.class_names or []), labeled, unlabeled)


def _key(case: Case) -> str:
    return case.case_id


def _check_unique(cases: list[Case], where: Path) -> None:
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise DataError(f"{where}: case id {c.case_id} appears twice ({seen[c.case_id]} and {c.image})")
        seen[c.case_id] = c.image
