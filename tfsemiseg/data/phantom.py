"""A small synthetic dataset in MSD or MM-WHS layout, for the demo and fast tests.

Each 3D volume holds two touching structures on a textured, noisy background, like the
anterior (1) and posterior (2) hippocampus: an ellipsoid and a bent tube of random size,
position, orientation and contrast. Intensity scales differ by orders of magnitude
between volumes, as in real MRI. In MM-WHS layout the two structures carry MM-WHS label
codes (`MMWHS_CODES`), which `configs/mmwhs.yaml` maps to its classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from tfsemiseg.io_utils import atomic_dir


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cutoff: float) -> np.ndarray:
    """Low-pass filtered white noise, unit std."""
    noise = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij")
    radius = np.sqrt(sum(f**2 for f in freqs))
    smooth = np.real(np.fft.ifftn(np.fft.fftn(noise) * np.exp(-((radius / cutoff) ** 2))))
    return smooth / (smooth.std() + 1e-8)


def phantom_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair of the given shape."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
    centre = np.array(shape) * rng.uniform(0.4, 0.6, 3)
    theta = rng.uniform(-0.6, 0.6)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    local = (grid - centre) @ rot
    # structure 1: an ellipsoid ("head") ahead of the centre along axis 0
    r1 = np.array(shape) * rng.uniform([0.12, 0.1, 0.2], [0.2, 0.16, 0.3])
    c1 = np.array([r1[0] * 0.8, 0, 0])
    head = np.sum(((local - c1) / r1) ** 2, -1) <= 1.0
    # structure 2: a bent tube ("tail") behind it
    length = shape[0] * rng.uniform(0.2, 0.3)
    bend = rng.uniform(-0.04, 0.04)
    radius = min(shape[1], shape[2]) * rng.uniform(0.07, 0.11)
    t = np.clip(-local[..., 0], 0, length)
    axis_y = bend * t**2
    tail = (local[..., 0] <= 0) & (-local[..., 0] <= length)
    tail &= (local[..., 1] - axis_y) ** 2 + (local[..., 2] / 1.5) ** 2 <= radius**2
    label = np.zeros(shape, np.uint8)
    label[tail] = 2
    label[head] = 1

    background = 0.35 + 0.12 * _smooth_noise(rng, shape, 0.08) + 0.05 * _smooth_noise(rng, shape, 0.3)
    image = background.copy()
    image[label == 1] = rng.uniform(0.65, 0.85) + 0.04 * _smooth_noise(rng, shape, 0.2)[label == 1]
    image[label == 2] = rng.uniform(0.05, 0.2) + 0.04 * _smooth_noise(rng, shape, 0.2)[label == 2]
    image += rng.normal(0, 0.04, shape)
    image = np.clip(image, 0, None) * 10 ** rng.uniform(2, 5)  # arbitrary scanner scale
    return image.astype(np.float32), label


LAYOUTS = ("msd", "mmwhs")
MMWHS_CODES = {1: 500, 2: 205}  # phantom structure -> MM-WHS code: left ventricle, myocardium


def make_phantom(
    out: Path,
    num_train: int = 24,
    num_test: int = 4,
    shape: tuple[int, int, int] = (36, 44, 32),
    seed: int = 0,
    overwrite: bool = False,
    layout: str = "msd",
) -> Path:
    """Write a phantom dataset: in MSD layout (dataset.json, imagesTr, labelsTr, imagesTs), or
    in MM-WHS layout (`phantom_NNN_image.nii.gz` / `phantom_NNN_label.nii.gz` pairs in one
    folder, labels as MM-WHS codes; the `num_test` volumes have no label file).

    The folder is built beside `out` and renamed into place, so it is never half-written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    codes = np.zeros(max(MMWHS_CODES) + 1, np.int16)
    codes[list(MMWHS_CODES)] = list(MMWHS_CODES.values())
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if layout == "msd":
            for sub in ("imagesTr", "labelsTr", "imagesTs"):
                (tmp / sub).mkdir()
        training, test = [], []
        for i in range(num_train + num_test):
            image, label = phantom_volume(rng, shape)
            labeled = i < num_train
            if layout == "mmwhs":
                image_rel, label_rel, label = f"phantom_{i:03d}_image.nii.gz", f"phantom_{i:03d}_label.nii.gz", codes[label]
            else:
                name = f"phantom_{i:03d}.nii.gz"
                image_rel, label_rel = f"{'imagesTr' if labeled else 'imagesTs'}/{name}", f"labelsTr/{name}"
            nib.save(nib.Nifti1Image(image, affine), str(tmp / image_rel))
            if labeled:
                nib.save(nib.Nifti1Image(label, affine), str(tmp / label_rel))
                training.append({"image": f"./{image_rel}", "label": f"./{label_rel}"})
            else:
                test.append(f"./{image_rel}")
        if layout == "msd":  # MM-WHS has no dataset.json: its file names are the index
            desc = {
                "name": "Phantom",
                "description": "Synthetic two-structure phantom (tfsemiseg make-phantom)",
                "licence": "CC0",
                "tensorImageSize": "3D",
                "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "head", "2": "tail"},
                "numTraining": num_train,
                "numTest": num_test,
                "training": training,
                "test": test,
            }
            (tmp / "dataset.json").write_text(json.dumps(desc, indent=2))
    return out
