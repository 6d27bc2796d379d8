"""Seeded, graph-mode data augmentation for single 2D slices (core TensorFlow only).

* :func:`random_intensity` (image, cfg: IntensityAugConfig, seed) -> image
* :func:`random_spatial` (image, label | None, cfg: SpatialAugConfig, seed) -> (image, label | None)

``seed`` is an int32/int64 tensor of shape [2] (``tf.random.stateless_*`` convention);
derive per-sample / per-view seeds with :func:`split_seed`. Both functions are pure and
work inside ``tf.data.Dataset.map`` and ``tf.function``.
"""

from tfsemiseg.transforms import intensity, spatial
from tfsemiseg.transforms.intensity import *  # noqa: F401,F403 - the names of intensity.__all__
from tfsemiseg.transforms.spatial import *  # noqa: F401,F403 - the names of spatial.__all__

__all__ = intensity.__all__ + spatial.__all__
