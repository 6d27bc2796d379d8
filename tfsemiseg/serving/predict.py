"""Segment NIfTI volumes with an exported SavedModel, so what is served is what is tested.

Each input volume is sliced along the model's axis, passed through the model's
`serving_default` signature, and written back as a label NIfTI with the input's shape,
affine, qform/sform codes and zooms (optionally a 4D float probability map). Labels are the
class indices (uint8), or, for a model trained with `data.label_map` (MM-WHS), the dataset's
own label codes (`label_codes` in metadata.json; uint8 if they fit, else int16).
Outputs are written to a temporary file and renamed; existing outputs are refused unless
`force` is set.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import nibabel as nib
import numpy as np
import tensorflow as tf

from tfsemiseg.data.datasets import case_id_of
from tfsemiseg.data.nifti import checked_spacing, load_nifti
from tfsemiseg.errors import DataError, TfSemisegError
from tfsemiseg.io_utils import ensure_writable_dir, read_json
from tfsemiseg.layout import model_files


@dataclass
class Prediction:
    path: Path
    output: Path
    shape: tuple[int, ...]
    seconds: float
    voxels_per_class: list[int]

    def summary(self, class_names: list[str]) -> str:
        counts = ", ".join(f"{n}={c}" for n, c in zip(class_names, self.voxels_per_class))
        return f"{self.path.name}: shape {self.shape}, {self.seconds:.2f} s, voxels {counts} -> {self.output}"


def read_metadata(model_dir: Path) -> dict:
    """The metadata of an exported model folder, or one error saying it is not one."""
    files = model_files(model_dir)
    if not files.saved_model.is_file() or not files.metadata.is_file():
        raise TfSemisegError(
            f"{model_dir}: not an exported model (needs {files.saved_model.name} and {files.metadata.name})"
        )
    metadata = read_json(files.metadata)
    if not isinstance(metadata, dict):
        raise TfSemisegError(f"{files.metadata}: not a JSON object")
    return metadata


class ExportedModel:
    """A loaded SavedModel plus its metadata."""

    def __init__(self, model_dir: Path):
        self.metadata = read_metadata(model_dir)
        self.class_names: list[str] = self.metadata["class_names"]
        self.axis: int = int(self.metadata["slice_axis"])
        self.channel: int = int(self.metadata.get("channel", 0))
        codes = self.metadata.get("label_codes")
        self.label_codes: Optional[np.ndarray] = None if codes is None else np.asarray(codes, np.int64)
        self.label_dtype = np.uint8 if codes is None or max(codes) <= 255 else np.int16
        self._fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def segment(self, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """labels uint8 [X, Y, Z] and probabilities float32 [X, Y, Z, K] of a 3D volume."""
        slices = np.moveaxis(volume.astype(np.float32), self.axis, 0)
        out = self._fn(slices=tf.constant(slices))
        labels = np.moveaxis(out["labels"].numpy().astype(np.uint8), 0, self.axis)
        probs = np.moveaxis(out["probabilities"].numpy(), 0, self.axis)
        return labels, probs

    def dataset_labels(self, labels: np.ndarray) -> np.ndarray:
        """Class indices as the dataset's own label values (`label_dtype`)."""
        return labels if self.label_codes is None else self.label_codes[labels].astype(self.label_dtype)


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given; folders become their *.nii / *.nii.gz files, sorted."""
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.name.endswith((".nii", ".nii.gz")))
            if not found:
                raise DataError(f"{p}: folder holds no .nii or .nii.gz file")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"{p}: file not found")
    return files


def _save_atomic(img: nib.Nifti1Image, dest: Path) -> None:
    tmp = dest.with_name(f".tmp{os.getpid()}.{dest.name}")  # same extension: nibabel picks the format from it
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _read_volume(path: Path, spacing: Optional[Sequence[float]] = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its float32 data [X, Y, Z], or one DataError naming the file."""
    img = load_nifti(path)
    if len(img.shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got {len(img.shape)}D of shape {img.shape}")
    checked_spacing(path, img, spacing)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: volume has non-finite intensities")
    if min(data.shape) < 1:
        raise DataError(f"{path}: empty volume of shape {data.shape}")
    return img, data


def _like_input(data: np.ndarray, dtype, img: nib.Nifti1Image,
                spacing: Optional[Sequence[float]] = None) -> nib.Nifti1Image:
    """`data` with the input's header and geometry (qform, sform and their codes); with a
    `spacing` override, its voxel sizes replace the header's, and where the header's
    geometry is not finite it is rebuilt from them."""
    header = img.header.copy()
    header.set_data_dtype(dtype)
    affine, qform, sform = img.affine, img.get_qform(), img.get_sform()
    qcode, scode = int(img.header["qform_code"]), int(img.header["sform_code"])
    if spacing is not None:
        written = [float(z) for z in header["pixdim"][1:4]]
        header["pixdim"][1:4] = spacing
        if not all(math.isfinite(z) and z > 0 for z in written) or not np.all(np.isfinite(affine)):
            affine = qform = sform = np.diag([*(float(s) for s in spacing), 1.0])
            qcode = qcode or 1
    out = nib.Nifti1Image(data, affine, header)
    out.set_qform(qform, code=qcode)
    out.set_sform(sform, code=scode)
    out.header.set_slope_inter(1, 0)
    return out


def output_paths(path: Path, out_dir: Path) -> tuple[Path, Path]:
    case = case_id_of(path)
    return out_dir / f"{case}.nii.gz", out_dir / f"{case}_probabilities.nii.gz"


def predict_files(
    model_dir: Path,
    inputs: Iterable[Path],
    out_dir: Path,
    force: bool = False,
    probabilities: bool = False,
    on_file: Optional[Callable[[Prediction], None]] = None,
    spacing: Optional[Sequence[float]] = None,
) -> list[Prediction]:
    """Segment every input volume; refuse to overwrite existing outputs unless `force`.

    Every input is read and checked (3D, voxel sizes finite and > 0 unless `spacing`
    overrides them, finite intensities) before the first output is written.
    """
    files = expand_inputs(inputs)
    out_dir = ensure_writable_dir(Path(out_dir))
    if not force:
        for f in files:
            for target in output_paths(f, out_dir)[: 2 if probabilities else 1]:
                if target.exists():
                    raise TfSemisegError(f"{target}: already exists (use --force to overwrite)")
    for f in files:  # every input is checked before anything is written
        _read_volume(f, spacing)
    model = ExportedModel(model_dir)
    results = []
    for f in files:
        start = time.perf_counter()
        img, data = _read_volume(f, spacing)
        labels, probs = model.segment(data)
        label_path, prob_path = output_paths(f, out_dir)
        _save_atomic(_like_input(model.dataset_labels(labels), model.label_dtype, img, spacing), label_path)
        if probabilities:
            _save_atomic(_like_input(probs.astype(np.float32), np.float32, img, spacing), prob_path)
        counts = np.bincount(labels.ravel(), minlength=len(model.class_names))[: len(model.class_names)]
        pred = Prediction(f, label_path, tuple(labels.shape), time.perf_counter() - start, [int(c) for c in counts])
        results.append(pred)
        if on_file:
            on_file(pred)
    return results
