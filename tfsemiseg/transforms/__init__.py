"""Seeded, graph-mode data augmentation for single 2D slices (core TensorFlow only).

* :func:`random_intensity` (image, cfg: IntensityAugConfig, seed) -> image
* :func:`random_spatial` (image, label | None, cfg: SpatialAugConfig, seed) -> (image, label | None)

``seed`` is an int32/int64 tensor of shape [2] (``tf.random.stateless_*`` convention);
derive per-sample / per-view seeds with :func:`split_seed`. Both functions are pure and
work inside ``tf.data.Dataset.map`` and ``tf.function``.
"""

from tfsemiseg.transforms.intensity import (
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    gaussian_blur,
    gaussian_kernel1d,
    random_intensity,
    split_seed,
)
from tfsemiseg.transforms.spatial import (
    affine_grid,
    apply_affine,
    elastic_displacement,
    random_affine,
    random_spatial,
    rotation_matrix,
    sample,
)

__all__ = [
    "random_intensity",
    "random_spatial",
    "split_seed",
    "random_affine",
    "sample",
    "affine_grid",
    "apply_affine",
    "rotation_matrix",
    "elastic_displacement",
    "gaussian_blur",
    "gaussian_kernel1d",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
]
