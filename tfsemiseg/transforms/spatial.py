"""Random spatial augmentation of a slice and its label (graph-mode, stateless, seeded).

One random geometric transform per sample is applied identically to the image
(bilinear) and to the label (nearest neighbour, so a label never gains values it did not
have). Flips, rotation, isotropic scaling and a random resized crop are composed into a
single affine map; an optional smooth elastic displacement is added to the sampling
coordinates; the input is then sampled once (no repeated interpolation).

Conventions
-----------
* ``image``: float ``[H, W]`` (``[H, W, C]`` accepted); ``label``: integer ``[H, W]``
  (``[H, W, C]`` accepted) or ``None``. Output shapes equal input shapes.
* ``seed``: int32/int64 tensor of shape [2] (``tf.random.stateless_*`` convention).
* Coordinates are ``(row, col)`` in input pixels, pixel centres at integers. The affine
  map is taken about the image centre ``((H - 1) / 2, (W - 1) / 2)``: an output pixel at
  ``p`` samples the input at ``centre + M @ (p - centre) + offset (+ displacement)``.
* Out-of-image samples read 0 (constant fill) for both image and label; bilinear
  sampling near the border blends towards 0.
* Rotation by ``+angle`` turns the content counter-clockwise as displayed with row 0 at
  the top (``angle = pi/2`` equals ``np.rot90``). Scale ``s > 1`` zooms in.
* With every probability 0 the inputs are returned unchanged (no op is built).
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfsemiseg.config import SpatialAugConfig
from tfsemiseg.transforms.intensity import (
    _ALG,
    gaussian_kernel1d,
    lerp,
    separable_filter,
    split_seed,
    uniform_draws,
)

__all__ = [
    "random_spatial",
    "sample",
    "affine_grid",
    "apply_affine",
    "rotation_matrix",
    "elastic_displacement",
]


# --------------------------------------------------------------------------- sampling


def sample(image: tf.Tensor, coords: tf.Tensor, method: str = "bilinear") -> tf.Tensor:
    """Sample ``image`` at ``coords`` with zero fill outside the image.

    The TF-core replacement for ``tfa.image.dense_image_warp`` / ``resampler``.

    Args:
      image: [H, W] or [H, W, C] tensor (any dtype for "nearest", float for "bilinear").
      coords: float [h, w, 2] sampling positions ``(row, col)`` in input pixels.
      method: "bilinear" (4 gathers; each of the 4 neighbours outside the image counts
        as 0) or "nearest" (``floor(coord + 0.5)``; outside the image -> 0).

    Returns:
      [h, w] or [h, w, C] tensor of ``image.dtype``.
    """
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (2, 3):
        raise ValueError(f"sample expects an [H, W] or [H, W, C] image, got rank {rank}")
    x = image if rank == 3 else image[:, :, None]
    shape = tf.shape(x)
    height, width, channels = shape[0], shape[1], shape[2]
    # One pixel of zeros around the image: every out-of-range index is clamped onto it.
    flat = tf.reshape(tf.pad(x, [[1, 1], [1, 1], [0, 0]]), [-1, channels])
    stride = width + 2
    coords = tf.cast(coords, tf.float32)
    r, c = coords[..., 0], coords[..., 1]
    fh = tf.cast(height, tf.float32)
    fw = tf.cast(width, tf.float32)

    def flat_index(ri: tf.Tensor, ci: tf.Tensor) -> tf.Tensor:
        # ri, ci: float integral positions; clamp to [-1, H] x [-1, W] (the zero border)
        ri = tf.cast(tf.clip_by_value(ri, -1.0, fh), tf.int32) + 1
        ci = tf.cast(tf.clip_by_value(ci, -1.0, fw), tf.int32) + 1
        return ri * stride + ci

    if method == "nearest":
        out = tf.gather(flat, flat_index(tf.floor(r + 0.5), tf.floor(c + 0.5)))
    else:
        if not image.dtype.is_floating:
            raise TypeError("bilinear sampling needs a float image")
        r0, c0 = tf.floor(r), tf.floor(c)
        fr = tf.cast((r - r0)[..., None], x.dtype)
        fc = tf.cast((c - c0)[..., None], x.dtype)
        idx = tf.stack([flat_index(r0, c0), flat_index(r0, c0 + 1.0),
                        flat_index(r0 + 1.0, c0), flat_index(r0 + 1.0, c0 + 1.0)])
        v = tf.gather(flat, idx)  # [4, h, w, C]
        top = v[0] + fc * (v[1] - v[0])
        bottom = v[2] + fc * (v[3] - v[2])
        out = top + fr * (bottom - top)
    return out if rank == 3 else out[..., 0]


def _centre(height, width) -> tf.Tensor:
    return tf.stack([(tf.cast(height, tf.float32) - 1.0) / 2.0, (tf.cast(width, tf.float32) - 1.0) / 2.0])


def affine_grid(matrix, height, width, offset=None) -> tf.Tensor:
    """Sampling coordinates ``centre + matrix @ (p - centre) + offset`` for an output grid.

    Args:
      matrix: [2, 2] acting on ``(row, col)`` vectors (output -> input).
      height, width: output (= input) size; ints or scalar tensors.
      offset: optional [2] translation ``(row, col)`` in input pixels.

    Returns:
      float32 [height, width, 2] ``(row, col)`` input coordinates.
    """
    matrix = tf.cast(tf.convert_to_tensor(matrix), tf.float32)
    centre = _centre(height, width)
    rows = tf.range(height, dtype=tf.float32) - centre[0]
    cols = tf.range(width, dtype=tf.float32) - centre[1]
    shift = centre if offset is None else centre + tf.cast(offset, tf.float32)
    # separable: out_row = m00 * rows[:, None] + m01 * cols[None, :] + shift_row, ...
    r = matrix[0, 0] * rows[:, None] + (matrix[0, 1] * cols[None, :] + shift[0])
    c = matrix[1, 0] * rows[:, None] + (matrix[1, 1] * cols[None, :] + shift[1])
    return tf.stack([r, c], axis=-1)


def apply_affine(image: tf.Tensor, matrix, offset=None, method: str = "bilinear") -> tf.Tensor:
    """Resample ``image`` ([H, W] or [H, W, C]) with the affine map of :func:`affine_grid`."""
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    return sample(image, affine_grid(matrix, shape[0], shape[1], offset), method)


def rotation_matrix(angle) -> tf.Tensor:
    """[2, 2] output->input matrix on ``(row, col)`` for a counter-clockwise rotation.

    ``angle = pi/2`` with :func:`apply_affine` reproduces ``np.rot90`` on square images.
    """
    angle = tf.cast(angle, tf.float32)
    c, s = tf.cos(angle), tf.sin(angle)
    return tf.stack([tf.stack([c, s]), tf.stack([-s, c])])


def elastic_displacement(height: int, width: int, alpha: float, sigma: float, seed) -> tf.Tensor:
    """A smooth random displacement field [height, width, 2] (row, col) in pixels.

    White Gaussian noise, smoothed with a Gaussian of std ``sigma`` (truncated at
    ``min(ceil(3 sigma), H, W)``, symmetric padding), rescaled so that the largest
    displacement magnitude is exactly ``alpha`` pixels. ``height``/``width`` static.
    """
    radius = max(1, min(int(math.ceil(3.0 * sigma)), int(height), int(width)))
    noise = tf.random.stateless_normal([1, height, width, 2], seed=seed, alg=_ALG)
    field = separable_filter(noise, gaussian_kernel1d(sigma, radius))[0]
    magnitude = tf.sqrt(tf.reduce_max(tf.reduce_sum(tf.square(field), axis=-1)))
    return field * (alpha / tf.maximum(magnitude, 1e-12))


# --------------------------------------------------------------------------- random


# fixed layout of the scalar draws
_FLIP_H, _FLIP_V, _ROT_GATE, _ROT, _SCALE_GATE, _SCALE = 0, 1, 2, 3, 4, 5
_CROP_GATE, _CROP_AREA, _CROP_ASPECT, _CROP_ROW, _CROP_COL, _ELASTIC_GATE = 6, 7, 8, 9, 10, 11
_NUM_DRAWS = 12


def _gate(prob: float, u: tf.Tensor) -> tf.Tensor:
    if prob >= 1.0:
        return tf.constant(True)
    return u < prob


def random_affine(cfg: SpatialAugConfig, u: tf.Tensor, height: int, width: int):
    """The composed output->input affine map (matrix [2, 2], offset [2]) for draws ``u``.

    Output view = scale(rotate(flip(resized_crop(input)))); the inverse is composed here.
    """
    one = tf.constant(1.0)
    matrix = tf.eye(2)
    offset = tf.zeros([2])
    if cfg.crop_prob > 0.0:
        gate = _gate(cfg.crop_prob, u[_CROP_GATE])
        area = lerp(*cfg.crop_area_range, u[_CROP_AREA])
        aspect = tf.exp(lerp(math.log(3.0 / 4.0), math.log(4.0 / 3.0), u[_CROP_ASPECT]))  # w / h
        frac_h = tf.minimum(tf.sqrt(area / aspect), 1.0)  # crop height / H
        frac_w = tf.minimum(tf.sqrt(area * aspect), 1.0)
        frac_h = tf.where(gate, frac_h, one)
        frac_w = tf.where(gate, frac_w, one)
        # crop centre uniformly such that the crop stays inside the image
        offset = tf.stack([(u[_CROP_ROW] - 0.5) * (1.0 - frac_h) * height,
                           (u[_CROP_COL] - 0.5) * (1.0 - frac_w) * width])
        matrix = tf.linalg.diag(tf.stack([frac_h, frac_w]))
    if cfg.flip_prob > 0.0:
        flip_v = tf.where(_gate(cfg.flip_prob, u[_FLIP_V]), -one, one)
        flip_h = tf.where(_gate(cfg.flip_prob, u[_FLIP_H]), -one, one)
        matrix = matrix * tf.stack([flip_v, flip_h])[None, :]  # matrix @ diag(flip)
    if cfg.rotation_prob > 0.0 and cfg.rotation_max > 0.0:
        angle = lerp(-cfg.rotation_max, cfg.rotation_max, u[_ROT])
        angle = tf.where(_gate(cfg.rotation_prob, u[_ROT_GATE]), angle, 0.0)
        matrix = tf.matmul(matrix, rotation_matrix(angle))
    if cfg.scale_prob > 0.0:
        scale = tf.where(_gate(cfg.scale_prob, u[_SCALE_GATE]), lerp(*cfg.scale_range, u[_SCALE]), one)
        matrix = matrix / scale
    return matrix, offset


def random_spatial(image: tf.Tensor, label: tf.Tensor | None, cfg: SpatialAugConfig, seed):
    """Apply one random geometric transform to ``image`` (bilinear) and ``label`` (nearest).

    Args:
      image: float [H, W] (or [H, W, C]) with a static spatial shape.
      label: integer [H, W] (or [H, W, C]) with the same spatial shape, or None.
      cfg: the probabilities and ranges (see ``SpatialAugConfig``).
      seed: int32/int64 tensor of shape [2].

    Returns:
      ``(image, label)`` with the same shapes and dtypes; ``label`` is None when given None.
      Samples falling outside the input are 0 in both.
    """
    image = tf.convert_to_tensor(image)
    if label is not None:
        label = tf.convert_to_tensor(label)
    probs = (cfg.flip_prob, cfg.rotation_prob, cfg.scale_prob, cfg.crop_prob, cfg.elastic_prob)
    if all(p <= 0.0 for p in probs):
        return image, label
    height, width = image.shape[0], image.shape[1]
    if height is None or width is None:
        raise ValueError(f"random_spatial needs a static spatial shape, got {image.shape}")
    if label is not None:
        label.shape[:2].assert_is_compatible_with([height, width])

    seeds = split_seed(seed, 2)
    u = uniform_draws(_NUM_DRAWS, seeds[0])
    matrix, offset = random_affine(cfg, u, height, width)
    coords = affine_grid(matrix, height, width, offset)
    if cfg.elastic_prob > 0.0 and cfg.elastic_alpha > 0.0:
        def _elastic() -> tf.Tensor:
            return coords + elastic_displacement(height, width, cfg.elastic_alpha, cfg.elastic_sigma, seeds[1])

        if cfg.elastic_prob >= 1.0:
            coords = _elastic()
        else:
            coords = tf.cond(u[_ELASTIC_GATE] < cfg.elastic_prob, _elastic, lambda: tf.identity(coords))

    dtype = image.dtype
    out = sample(tf.cast(image, tf.float32), coords, "bilinear")
    out = tf.cast(out, dtype)
    if label is None:
        return out, None
    return out, sample(label, coords, "nearest")
