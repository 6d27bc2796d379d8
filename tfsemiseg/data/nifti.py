"""Reading and validating NIfTI volumes, with one clear error per bad file."""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

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


def header_zooms(path: Path, img: nib.Nifti1Image) -> tuple[float, ...]:
    """The spatial voxel sizes (pixdim[1..3]) as written in the file's header.

    nibabel's loader "fixes" a header as it reads it (zero pixdims become 1, negative ones
    their absolute value, with only a log line), so the header is read again unchecked.
    """
    with nib.openers.ImageOpener(str(path)) as fobj:
        raw = type(img).header_class.from_fileobj(fobj, check=False)
    ndim = max(1, min(3, int(raw["dim"][0])))
    return tuple(float(z) for z in raw["pixdim"][1 : 1 + ndim])


def checked_spacing(path: Path, img: nib.Nifti1Image,
                    override: Optional[Sequence[float]] = None) -> tuple[float, float, float]:
    """Voxel size in mm along the first three axes: `override` when given (for datasets whose
    headers are known to be broken), else the header's, which must be finite and > 0."""
    if override is not None:
        return tuple(float(s) for s in override)  # type: ignore[return-value]
    zooms = header_zooms(path, img)
    if len(zooms) < 3 or not all(math.isfinite(z) and z > 0 for z in zooms):
        raise DataError(
            f"{path}: voxel size in the header is {tuple(zooms)} mm (zero, negative or not finite), so distances "
            "in mm would be invented; fix the header, or set data.spacing: [sx, sy, sz] (predict: --spacing) "
            "to the voxel size to use for every file"
        )
    return zooms  # type: ignore[return-value]


def read_image(path: Path, channel: int = 0, spacing: Optional[Sequence[float]] = None) -> Volume:
    """Read an image volume as float32 [X, Y, Z].

    4D (multi-modal MSD) images are reduced to their `channel`-th modality (last axis).
    Raises DataError for wrong dimensionality, a missing channel, a zero, negative or
    non-finite voxel size (unless `spacing` overrides it), non-finite or constant
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
    spacing_mm = checked_spacing(path, img, spacing)
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: image has {int(np.sum(~np.isfinite(data)))} non-finite (NaN/inf) voxels")
    if data.size == 0 or float(data.max()) == float(data.min()):
        raise DataError(f"{path}: image is constant (every voxel = {data.flat[0] if data.size else 'n/a'}); cannot normalise")
    return Volume(Path(path), np.ascontiguousarray(data), spacing_mm, img.affine)


def read_label(path: Path, valid_classes: int, label_map: Optional[dict[int, int]] = None,
               spacing: Optional[Sequence[float]] = None) -> Volume:
    """Read a label volume as int16 [X, Y, Z] with classes in 0..valid_classes-1.

    Labels stored as float (as some real files are) must hold integer values. With a
    `label_map` (raw value -> class), listed values are mapped and all others become 0.
    A label map is 3D: a 4D file (even with one channel) is refused.
    """
    img = load_nifti(path)
    raw = np.asarray(img.dataobj)
    if raw.ndim != 3:
        raise DataError(f"{path}: expected a 3D label map, got {raw.ndim}D of shape {raw.shape}")
    spacing_mm = checked_spacing(path, img, spacing)
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
    return Volume(Path(path), out.astype(np.int16), spacing_mm, img.affine)
