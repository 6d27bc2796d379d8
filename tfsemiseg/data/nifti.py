"""Reading and validating NIfTI volumes, with one clear error per bad file."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from tfsemiseg.errors import DataError


@dataclass
class Volume:
    """A 3D volume as read from disk.

    array: [X, Y, Z] (float32 image or int16 label); spacing: voxel size in mm per axis;
    affine: 4x4 voxel-to-world matrix.
    """

    path: Path
    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def load_nifti(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file and read its data, or raise DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        img.get_fdata(dtype=np.float32)  # force a full read: catches truncation now
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        detail = " ".join(str(exc).split())  # one line: some nibabel messages span several
        raise DataError(f"{path}: unreadable or truncated NIfTI file ({type(exc).__name__}: {detail})") from None
    return img


def read_image(path: Path, channel: int = 0) -> Volume:
    """Read an image volume as float32 [X, Y, Z].

    4D (multi-modal MSD) images are reduced to their `channel`-th modality (last axis).
    Raises DataError for wrong dimensionality, a missing channel, non-finite or constant
    intensities.
    """
    img = load_nifti(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        if not 0 <= channel < data.shape[3]:
            raise DataError(f"{path}: 4D image has {data.shape[3]} channels, configured channel {channel} is missing")
        data = data[..., channel]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D image (or 4D multi-modal), got {data.ndim}D of shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: image has {int(np.sum(~np.isfinite(data)))} non-finite (NaN/inf) voxels")
    if data.size == 0 or float(data.max()) == float(data.min()):
        raise DataError(f"{path}: image is constant (every voxel = {data.flat[0] if data.size else 'n/a'}); cannot normalise")
    return Volume(Path(path), np.ascontiguousarray(data), _spacing(img), img.affine)


def read_label(path: Path, valid_classes: int, label_map: Optional[dict[int, int]] = None) -> Volume:
    """Read a label volume as int16 [X, Y, Z] with classes in 0..valid_classes-1.

    Labels stored as float (as some real files are) must hold integer values. With a
    `label_map` (raw value -> class), listed values are mapped and all others become 0.
    """
    img = load_nifti(path)
    raw = np.asarray(img.dataobj)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DataError(f"{path}: expected a 3D label map, got {raw.ndim}D of shape {raw.shape}")
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            raise DataError(f"{path}: label map has non-finite values")
        rounded = np.rint(raw)
        if np.any(np.abs(raw - rounded) > 1e-3):
            raise DataError(f"{path}: label map holds non-integer values (e.g. {raw[np.abs(raw - rounded) > 1e-3][0]})")
        raw = rounded
    raw = raw.astype(np.int64)
    if label_map:
        out = np.zeros(raw.shape, np.int16)
        for value, cls in label_map.items():
            out[raw == value] = cls
    else:
        out = raw
    values = np.unique(out)
    bad = [int(v) for v in values if not 0 <= v < valid_classes]
    if bad:
        raise DataError(f"{path}: label values {bad} are outside the dataset's classes 0..{valid_classes - 1}")
    return Volume(Path(path), out.astype(np.int16), _spacing(img), img.affine)


def _spacing(img: nib.Nifti1Image) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return tuple(z if z > 0 else 1.0 for z in zooms) + (1.0,) * (3 - len(zooms))  # type: ignore[return-value]
