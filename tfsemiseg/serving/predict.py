"""Segment NIfTI volumes with an exported SavedModel, so what is served is what is tested.

Each input volume is sliced along the model's axis, passed through the model's
`serving_default` signature, and written back as a uint8 label NIfTI with the input's
shape, affine, qform/sform codes and zooms (optionally a 4D float probability map).
Outputs are written to a temporary file and renamed; existing outputs are refused unless
`force` is set.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import nibabel as nib
import numpy as np
import tensorflow as tf

from tfsemiseg.data.datasets import case_id_of
from tfsemiseg.data.nifti import load_nifti
from tfsemiseg.errors import DataError, TfSemisegError
from tfsemiseg.io_utils import ensure_writable_dir
from tfsemiseg.serving.export import METADATA


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


class Segmenter:
    """A loaded SavedModel plus its metadata."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        meta_path = model_dir / METADATA
        if not (model_dir / "saved_model.pb").is_file() or not meta_path.is_file():
            raise TfSemisegError(f"{model_dir}: not an exported model (needs saved_model.pb and {METADATA})")
        self.metadata = json.loads(meta_path.read_text())
        self.class_names: list[str] = self.metadata["class_names"]
        self.axis: int = int(self.metadata["slice_axis"])
        self.channel: int = int(self.metadata.get("channel", 0))
        self._fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def segment(self, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """labels uint8 [X, Y, Z] and probabilities float32 [X, Y, Z, K] of a 3D volume."""
        slices = np.moveaxis(volume.astype(np.float32), self.axis, 0)
        out = self._fn(slices=tf.constant(slices))
        labels = np.moveaxis(out["labels"].numpy().astype(np.uint8), 0, self.axis)
        probs = np.moveaxis(out["probabilities"].numpy(), 0, self.axis)
        return labels, probs


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


def _read_volume(path: Path) -> nib.Nifti1Image:
    img = load_nifti(path)
    if len(img.shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got {len(img.shape)}D of shape {img.shape}")
    return img


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
) -> list[Prediction]:
    """Segment every input volume; refuse to overwrite existing outputs unless `force`."""
    files = expand_inputs(inputs)
    out_dir = ensure_writable_dir(Path(out_dir))
    if not force:
        for f in files:
            for target in output_paths(f, out_dir)[: 2 if probabilities else 1]:
                if target.exists():
                    raise TfSemisegError(f"{target}: already exists (use --force to overwrite)")
    model = Segmenter(model_dir)
    results = []
    for f in files:
        start = time.perf_counter()
        img = _read_volume(f)
        data = np.asarray(img.dataobj, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            raise DataError(f"{f}: volume has non-finite intensities")
        if min(data.shape) < 1:
            raise DataError(f"{f}: empty volume of shape {data.shape}")
        labels, probs = model.segment(data)
        label_path, prob_path = output_paths(f, out_dir)
        header = img.header.copy()
        header.set_data_dtype(np.uint8)
        out = nib.Nifti1Image(labels, img.affine, header)
        out.set_qform(img.get_qform(), code=int(img.header["qform_code"]))
        out.set_sform(img.get_sform(), code=int(img.header["sform_code"]))
        out.header.set_slope_inter(1, 0)
        _save_atomic(out, label_path)
        if probabilities:
            pheader = img.header.copy()
            pheader.set_data_dtype(np.float32)
            pimg = nib.Nifti1Image(probs.astype(np.float32), img.affine, pheader)
            pimg.set_qform(img.get_qform(), code=int(img.header["qform_code"]))
            pimg.set_sform(img.get_sform(), code=int(img.header["sform_code"]))
            _save_atomic(pimg, prob_path)
        counts = np.bincount(labels.ravel(), minlength=len(model.class_names))[: len(model.class_names)]
        pred = Prediction(f, label_path, tuple(labels.shape), time.perf_counter() - start, [int(c) for c in counts])
        results.append(pred)
        if on_file:
            on_file(pred)
    return results
