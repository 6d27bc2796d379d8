"""Per-volume preprocessing: normalise, slice, resize; and the on-disk slice cache.

A volume becomes a stack of 2D slices at model resolution:
image float32 [S, size, size] in [0, 1] (min-max over the whole volume, bilinear resize),
label uint8 [S, size, size] (nearest-neighbour resize, so no class appears at a border
where it was absent: the reference code resized labels bilinearly and truncated).
The native-resolution label is kept too, for evaluation at native resolution.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from tfsemiseg.config import DataConfig
from tfsemiseg.data.datasets import Case
from tfsemiseg.data.nifti import read_image, read_label
from tfsemiseg.errors import DataError
from tfsemiseg.io_utils import atomic_path, ensure_writable_dir

CACHE_VERSION = 2  # 2: voxel sizes as written in the header are checked


@dataclass
class SliceVolume:
    """One preprocessed volume, slice axis first.

    image: float32 [S, size, size]; label / native_label: uint8 [S, size, size] /
    [S, h, w] (None for unlabeled cases); spacing: mm along (slice, row, col);
    native_shape: (S, h, w); affine: the file's 4x4 matrix.
    """

    case_id: str
    image: np.ndarray
    label: Optional[np.ndarray]
    native_label: Optional[np.ndarray]
    native_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """[X, Y, Z] -> [S, h, w] with the slicing axis first (order of the others kept)."""
    return np.ascontiguousarray(np.moveaxis(volume, axis, 0))


def model_input(slices, image_size: int):
    """Raw intensities of one volume's slices [N, H, W] -> float32 images [N, S, S, 1].

    Min-max over the whole volume, (x - min) / (max - min) (0 for a constant volume),
    then a bilinear resize of each slice to S = `image_size`. The one preprocessing of
    images: the slice cache and the exported SavedModel's graph both call it.
    """
    import tensorflow as tf

    x = tf.cast(slices, tf.float32)
    lo, hi = tf.reduce_min(x), tf.reduce_max(x)
    x = tf.math.divide_no_nan(x - lo, hi - lo)
    return tf.image.resize(x[..., None], (image_size, image_size), method="bilinear")


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Label maps [S, h, w] -> uint8 [S, size, size], nearest neighbour (no new class at borders)."""
    import tensorflow as tf

    out = tf.image.resize(tf.constant(labels[..., None].astype(np.int32)), (size, size), method="nearest")
    return out.numpy()[..., 0].astype(np.uint8)


def preprocess_case(case: Case, cfg: DataConfig, num_classes: int) -> SliceVolume:
    """Read, validate and preprocess one case (image and, if present, label)."""
    img = read_image(case.image, cfg.channel, cfg.spacing)
    axis = cfg.slice_axis % 3
    image = to_slices(img.array, axis)
    label = native = None
    if case.label is not None:
        lab = read_label(case.label, num_classes, cfg.label_map, cfg.spacing)
        if lab.array.shape != img.array.shape:
            raise DataError(
                f"{case.label}: label shape {lab.array.shape} does not match image {case.image.name} shape {img.array.shape}"
            )
        native = to_slices(lab.array, axis).astype(np.uint8)
        label = resize_labels(native, cfg.image_size)
    order = [axis] + [a for a in range(3) if a != axis]
    spacing = tuple(float(img.spacing[a]) for a in order)
    return SliceVolume(
        case_id=case.case_id,
        image=model_input(image, cfg.image_size).numpy()[..., 0],
        label=label,
        native_label=native,
        native_shape=tuple(int(s) for s in image.shape),  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        affine=np.asarray(img.affine, np.float64),
    )


# --------------------------------------------------------------------------- cache


def _preprocess_key(cfg: DataConfig, num_classes: int) -> str:
    relevant = {
        "version": CACHE_VERSION,
        "image_size": cfg.image_size,
        "slice_axis": cfg.slice_axis % 3,
        "channel": cfg.channel,
        "label_map": sorted((cfg.label_map or {}).items()),
        "num_classes": num_classes,
        **({"spacing": list(cfg.spacing)} if cfg.spacing is not None else {}),
    }
    return json.dumps(relevant, sort_keys=True)


def case_key(case: Case, cfg: DataConfig, num_classes: int) -> str:
    """Hash of the case's file contents and the preprocessing config."""
    h = hashlib.sha256(_preprocess_key(cfg, num_classes).encode())
    for path in (case.image, case.label):
        if path is None:
            h.update(b"<none>")
            continue
        try:
            h.update(Path(path).read_bytes())
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return h.hexdigest()[:20]


class SliceCache:
    """Preprocessed volumes stored as one .npz per case, named by case id and content hash.

    A changed file or preprocessing config gives a new hash, so the entry is rebuilt; the
    stale entry of that case is removed. Entries are written atomically.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, case: Case, key: str) -> Path:
        return self.root / f"{case.case_id}.{key}.npz"

    def get(self, case: Case, cfg: DataConfig, num_classes: int) -> tuple[SliceVolume, bool]:
        """Return (volume, built_now)."""
        key = case_key(case, cfg, num_classes)
        path = self.path_for(case, key)
        if path.is_file():
            try:
                return self._read(path), False
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # unreadable entry (e.g. truncated .npz): rebuild it
        vol = preprocess_case(case, cfg, num_classes)
        ensure_writable_dir(self.root)
        for stale in self.root.glob("*.npz"):
            # only this case's entries: "<case_id>.<key>.npz" with a dot-free key, so that
            # case "a" does not delete the entry of case "a.v2"
            rest = stale.name[len(case.case_id) + 1 : -len(".npz")]
            if stale.name.startswith(f"{case.case_id}.") and "." not in rest and stale != path:
                stale.unlink(missing_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    case_id=np.array(vol.case_id),
                    image=vol.image,
                    label=vol.label if vol.label is not None else np.zeros((0,), np.uint8),
                    native_label=vol.native_label if vol.native_label is not None else np.zeros((0,), np.uint8),
                    native_shape=np.array(vol.native_shape),
                    spacing=np.array(vol.spacing),
                    affine=vol.affine,
                )
                fh.flush()
                os.fsync(fh.fileno())
        return vol, True

    @staticmethod
    def _read(path: Path) -> SliceVolume:
        with np.load(path) as z:
            label = z["label"] if z["label"].size else None
            native = z["native_label"] if z["native_label"].size else None
            return SliceVolume(
                case_id=str(z["case_id"]),
                image=z["image"],
                label=label,
                native_label=native,
                native_shape=tuple(int(s) for s in z["native_shape"]),  # type: ignore[arg-type]
                spacing=tuple(float(s) for s in z["spacing"]),  # type: ignore[arg-type]
                affine=z["affine"],
            )
