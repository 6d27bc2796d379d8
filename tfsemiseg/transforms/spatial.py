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
  sampling near the border blends towards 0. Nearest rounds half away from zero.
* Rotation by ``+angle`` turns the content counter-clockwise as displayed with row 0 at
  the top (``angle = pi/2`` equals ``np.rot90``). Scale ``s > 1`` zooms in.
* With every probability 0 the inputs are returned unchanged (no op is built).

Implementation: the affine-only case uses the fused
``tf.raw_ops.ImageProjectiveTransformV3`` (one op per tensor); a sample whose affine map
is a pure flip (no rotation/scale/crop drawn) takes an exact ``tf.reverse`` shortcut
(same result, much cheaper); the elastic case builds the coordinate grid and uses
:func:`sample` (gathers), the core-TF replacement for ``tfa.image.dense_image_warp``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfsemiseg.config import SpatialAugConfig
from tfsemiseg.transforms.intensity import (  # noqa: F401  (split_seed re-exported)
    _ALG,
    _graph_code,
    gaussian_kernel1d,
    separable_filter,
    split_seed,
    uniform_draws,
)

__all__ = [
    "random_spatial",
    "random_affine",
    "sample",
    "affine_grid",
    "apply_affine",
    "rotation_matrix",
    "elastic_displacement",
]


# --------------------------------------------------------------------------- sampling


def _round(x: tf.Tensor) -> tf.Tensor:
    """Round half away from zero (std::round, as ImageProjectiveTransformV3 does)."""
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def _sample_rc(image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, method: str) -> tf.Tensor:
    """:func:`sample` with the coordinates given as two [h, w] tensors."""
    rank = image.shape.rank
    x = image if rank == 3 else image[:, :, None]
    shape = tf.shape(x)
    height, width, channels = shape[0], shape[1], shape[2]
    # Two pixels of zeros around the image; coordinates are clamped into that border, so
    # every out-of-image read (including both corners of a far-out bilinear pair) is 0.
    flat = tf.reshape(tf.pad(x, [[2, 2], [2, 2], [0, 0]]), [-1, channels])
    stride = width + 4
    fh = tf.cast(height, tf.float32)
    fw = tf.cast(width, tf.float32)
    if method == "nearest":
        ri = tf.cast(tf.clip_by_value(_round(rows), -1.0, fh), tf.int32) + 2
        ci = tf.cast(tf.clip_by_value(_round(cols), -1.0, fw), tf.int32) + 2
        out = tf.gather(flat, ri * stride + ci)
    else:
        r0, c0 = tf.floor(rows), tf.floor(cols)
        ri = tf.cast(tf.clip_by_value(r0, -2.0, fh), tf.int32) + 2
        ci = tf.cast(tf.clip_by_value(c0, -2.0, fw), tf.int32) + 2
        base = ri * stride + ci
        corners = tf.stack([tf.zeros_like(stride), tf.ones_like(stride), stride, stride + 1])
        v = tf.gather(flat, base[None] + corners[:, None, None])  # [4, h, w, C]
        fr = tf.cast((rows - r0)[..., None], x.dtype)
        fc = tf.cast((cols - c0)[..., None], x.dtype)
        top = v[0] + fc * (v[1] - v[0])
        bottom = v[2] + fc * (v[3] - v[2])
        out = top + fr * (bottom - top)
    return out if rank == 3 else out[..., 0]


@_graph_code
def sample(image: tf.Tensor, coords: tf.Tensor, method: str = "bilinear") -> tf.Tensor:
    """Sample ``image`` at ``coords`` with zero fill outside the image.

    The TF-core replacement for ``tfa.image.dense_image_warp`` / ``resampler``.

    Args:
      image: [H, W] or [H, W, C] tensor (any dtype for "nearest", float for "bilinear").
      coords: float [h, w, 2] sampling positions ``(row, col)`` in input pixels.
      method: "bilinear" (4 gathered neighbours; each one outside the image reads 0) or
        "nearest" (round half away from zero; outside the image -> 0).

    Returns:
      [h, w] or [h, w, C] tensor of ``image.dtype``.
    """
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    image = tf.convert_to_tensor(image)
    if image.shape.rank not in (2, 3):
        raise ValueError(f"sample expects an [H, W] or [H, W, C] image, got shape {image.shape}")
    if method == "bilinear" and not image.dtype.is_floating:
        raise TypeError(f"bilinear sampling needs a float image, got {image.dtype}")
    coords = tf.cast(coords, tf.float32)
    return _sample_rc(image, coords[..., 0], coords[..., 1], method)


def _centre(height, width) -> tf.Tensor:
    return tf.stack([(tf.cast(height, tf.float32) - 1.0) / 2.0, (tf.cast(width, tf.float32) - 1.0) / 2.0])


def _grid_rc(matrix: tf.Tensor, offset: tf.Tensor | None, height: int, width: int):
    """Row and column sampling coordinates [H, W] each (static H, W, no broadcasting ops)."""
    matrix = tf.cast(tf.convert_to_tensor(matrix), tf.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    # static centred pixel positions: constants, so only 6 elementwise ops at run time
    rows = tf.constant([[i - cy] * width for i in range(height)], tf.float32)
    cols = tf.constant([[j - cx for j in range(width)]] * height, tf.float32)
    shift_r = tf.constant(cy, tf.float32)
    shift_c = tf.constant(cx, tf.float32)
    if offset is not None:
        offset = tf.cast(offset, tf.float32)
        shift_r, shift_c = shift_r + offset[0], shift_c + offset[1]
    r = matrix[0, 0] * rows + matrix[0, 1] * cols + shift_r
    c = matrix[1, 0] * rows + matrix[1, 1] * cols + shift_c
    return r, c


@_graph_code
def affine_grid(matrix, height: int, width: int, offset=None) -> tf.Tensor:
    """Sampling coordinates ``centre + matrix @ (p - centre) + offset`` for an output grid.

    Args:
      matrix: [2, 2] acting on ``(row, col)`` vectors (output -> input).
      height, width: static output (= input) size.
      offset: optional [2] translation ``(row, col)`` in input pixels.

    Returns:
      float32 [height, width, 2] ``(row, col)`` input coordinates.
    """
    return tf.stack(_grid_rc(matrix, offset, int(height), int(width)), axis=-1)


def _projective_transform(matrix: tf.Tensor, offset: tf.Tensor | None, height, width) -> tf.Tensor:
    """The 8-vector of ``ImageProjectiveTransformV3`` (x = col, y = row) for our affine map."""
    matrix = tf.cast(tf.convert_to_tensor(matrix), tf.float32)
    centre = _centre(height, width)
    shift = centre if offset is None else centre + tf.cast(offset, tf.float32)
    # input = M @ p + (shift - M @ centre), in (row, col)
    b_row = shift[0] - matrix[0, 0] * centre[0] - matrix[0, 1] * centre[1]
    b_col = shift[1] - matrix[1, 0] * centre[0] - matrix[1, 1] * centre[1]
    zero = tf.constant(0.0)
    return tf.stack([matrix[1, 1], matrix[1, 0], b_col, matrix[0, 1], matrix[0, 0], b_row, zero, zero])


_IPT_DTYPES = (tf.uint8, tf.int32, tf.int64, tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _warp_affine(image: tf.Tensor, transform: tf.Tensor, method: str) -> tf.Tensor:
    rank = image.shape.rank
    dtype = image.dtype
    x = image if dtype in _IPT_DTYPES else tf.cast(image, tf.int32 if dtype.is_integer else tf.float32)
    x4 = x[None, :, :, None] if rank == 2 else x[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x4,
        transforms=transform[None],
        output_shape=tf.shape(x)[:2] if None in x.shape[:2] else tf.constant(x.shape[:2].as_list(), tf.int32),
        fill_value=tf.constant(0.0),
        interpolation=method.upper(),
        fill_mode="CONSTANT",
    )
    out = out[0, :, :, 0] if rank == 2 else out[0]
    return tf.cast(out, dtype)


@_graph_code
def apply_affine(image: tf.Tensor, matrix, offset=None, method: str = "bilinear") -> tf.Tensor:
    """Resample ``image`` ([H, W] or [H, W, C]) with the affine map of :func:`affine_grid`.

    Uses the fused ``tf.raw_ops.ImageProjectiveTransformV3`` (constant fill 0), which
    implements the same sampling as ``sample(image, affine_grid(...), method)``.
    """
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    image = tf.convert_to_tensor(image)
    if image.shape.rank not in (2, 3):
        raise ValueError(f"apply_affine expects an [H, W] or [H, W, C] image, got shape {image.shape}")
    shape = tf.shape(image)
    return _warp_affine(image, _projective_transform(matrix, offset, shape[0], shape[1]), method)


@_graph_code
def rotation_matrix(angle) -> tf.Tensor:
    """[2, 2] output->input matrix on ``(row, col)`` for a counter-clockwise rotation.

    ``angle = pi/2`` with :func:`apply_affine` reproduces ``np.rot90`` on square images.
    """
    angle = tf.cast(angle, tf.float32)
    c, s = tf.cos(angle), tf.sin(angle)
    return tf.stack([tf.stack([c, s]), tf.stack([-s, c])])


def _elastic_field(height: int, width: int, alpha: float, sigma: float, seed) -> tf.Tensor:
    """[2, H, W] (row, col) displacement; see :func:`elastic_displacement`."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    noise = tf.random.stateless_normal([2, height, width], seed=seed, alg=_ALG)
    field = separable_filter(noise, gaussian_kernel1d(sigma, radius))
    magnitude = tf.sqrt(tf.reduce_max(field[0] * field[0] + field[1] * field[1]))
    return field * (alpha / tf.maximum(magnitude, 1e-12))


@_graph_code
def elastic_displacement(height: int, width: int, alpha: float, sigma: float, seed) -> tf.Tensor:
    """A smooth random displacement field [height, width, 2] (row, col) in pixels.

    White Gaussian noise per component, smoothed with a Gaussian of std ``sigma``
    (truncated at ceil(3 sigma), symmetric borders) and rescaled so that the largest
    displacement magnitude is exactly ``alpha`` pixels. ``height``/``width`` static.
    """
    return tf.transpose(_elastic_field(int(height), int(width), alpha, sigma, seed), [1, 2, 0])


# --------------------------------------------------------------------------- random


# fixed layout of the scalar draws (independent of which transforms are enabled)
_FLIP_H, _FLIP_V, _ROT_GATE, _ROT, _SCALE_GATE, _SCALE = 0, 1, 2, 3, 4, 5
_CROP_GATE, _CROP_AREA, _CROP_ASPECT, _CROP_ROW, _CROP_COL, _ELASTIC_GATE = 6, 7, 8, 9, 10, 11
_NUM_DRAWS = 12


@_graph_code
def random_affine(cfg: SpatialAugConfig, u: tf.Tensor, height: int, width: int):
    """The affine part of :func:`random_spatial` for the U[0, 1) draws ``u`` ([12]).

    The output view is scale(rotate(flip(resized_crop(input)))), so the output->input
    matrix is ``crop @ flip @ rotation / scale`` (built from scalars: tiny matmuls are
    comparatively expensive ops on CPU).

    Returns:
      A dict: ``matrix`` [2, 2] and ``offset`` [2] (the map of :func:`affine_grid`),
      ``transform`` [8] (the same map as an ``ImageProjectiveTransformV3`` vector),
      ``flips`` [2] bool (vertical, horizontal), and ``pure_flip``: a bool tensor (or
      Python True when no other transform is enabled) telling that no rotation, scaling
      or crop was drawn, i.e. the map is just ``flips``.
    """
    one, zero = tf.constant(1.0), tf.constant(0.0)
    false = tf.constant(False)
    vals = tf.unstack(u, num=_NUM_DRAWS)

    def gate(prob: float, index: int) -> tf.Tensor:
        return tf.constant(True) if prob >= 1.0 else vals[index] < prob

    def lerp(lo: float, hi: float, index: int) -> tf.Tensor:
        return lo + (hi - lo) * vals[index]

    frac_h = frac_w = one  # crop size / image size
    off_r = off_c = zero  # crop centre - image centre, input pixels
    cos, sin = one, zero
    inv_scale = one
    flip_v = flip_h = false
    others = []  # gates of the non-flip transforms
    if cfg.crop_prob > 0.0:
        crop = gate(cfg.crop_prob, _CROP_GATE)
        area = lerp(*cfg.crop_area_range, _CROP_AREA)
        aspect = tf.exp(lerp(math.log(3.0 / 4.0), math.log(4.0 / 3.0), _CROP_ASPECT))  # w / h
        # a side longer than the image (area near 1 with aspect != 1) is cut to the image
        frac_h = tf.where(crop, tf.minimum(tf.sqrt(area / aspect), 1.0), one)
        frac_w = tf.where(crop, tf.minimum(tf.sqrt(area * aspect), 1.0), one)
        # the crop centre is uniform over the positions keeping the crop inside the image
        off_r = (vals[_CROP_ROW] - 0.5) * (1.0 - frac_h) * height
        off_c = (vals[_CROP_COL] - 0.5) * (1.0 - frac_w) * width
        others.append(crop)
    if cfg.flip_prob > 0.0:
        flip_v = gate(cfg.flip_prob, _FLIP_V)
        flip_h = gate(cfg.flip_prob, _FLIP_H)
    if cfg.rotation_prob > 0.0 and cfg.rotation_max > 0.0:
        rotate = gate(cfg.rotation_prob, _ROT_GATE)
        angle = tf.where(rotate, lerp(-cfg.rotation_max, cfg.rotation_max, _ROT), zero)
        cos, sin = tf.cos(angle), tf.sin(angle)
        others.append(rotate)
    if cfg.scale_prob > 0.0:
        rescale = gate(cfg.scale_prob, _SCALE_GATE)
        inv_scale = tf.where(rescale, 1.0 / lerp(*cfg.scale_range, _SCALE), one)
        others.append(rescale)
    row = frac_h * tf.where(flip_v, -one, one) * inv_scale
    col = frac_w * tf.where(flip_h, -one, one) * inv_scale
    m00, m01, m10, m11 = row * cos, row * sin, -col * sin, col * cos
    # ImageProjectiveTransformV3 vector (x = col, y = row): input = M p + centre + off - M centre
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    b_row = (cy + off_r) - (m00 * cy + m01 * cx)
    b_col = (cx + off_c) - (m10 * cy + m11 * cx)
    transform = tf.stack([m11, m10, b_col, m01, m00, b_row, zero, zero])
    pure_flip = tf.logical_not(tf.reduce_any(tf.stack(others))) if others else True
    return {
        "matrix": tf.stack([tf.stack([m00, m01]), tf.stack([m10, m11])]),
        "offset": tf.stack([off_r, off_c]),
        "transform": transform,
        "flips": tf.stack([flip_v, flip_h]),
        "pure_flip": pure_flip,
    }


def _flip(x: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
    x = tf.where(flips[0], tf.reverse(x, [0]), x)
    return tf.where(flips[1], tf.reverse(x, [1]), x)


@_graph_code
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
    if not image.dtype.is_floating:
        raise TypeError(f"random_spatial expects a float image, got {image.dtype}")
    if image.shape.rank not in (2, 3):
        raise ValueError(f"random_spatial expects an [H, W] or [H, W, C] image, got shape {image.shape}")
    height, width = image.shape[0], image.shape[1]
    if height is None or width is None:
        raise ValueError(f"random_spatial needs a static spatial shape, got {image.shape}")
    if label is not None:
        label.shape[:2].assert_is_compatible_with([height, width])

    seeds = split_seed(seed, 2)  # [0]: scalar draws, [1]: elastic field
    u = uniform_draws(_NUM_DRAWS, seeds[0])
    params = random_affine(cfg, u, height, width)
    pure_flip = params["pure_flip"]
    tensors = (image,) if label is None else (image, label)
    methods = ("bilinear", "nearest")

    def _flip_only():
        return tuple(_flip(t, params["flips"]) for t in tensors)

    def _affine():
        return tuple(_warp_affine(t, params["transform"], m) for t, m in zip(tensors, methods))

    def _elastic():
        rows, cols = _grid_rc(params["matrix"], params["offset"], height, width)
        field = _elastic_field(height, width, cfg.elastic_alpha, cfg.elastic_sigma, seeds[1])
        rows, cols = rows + field[0], cols + field[1]
        out = tf.cast(_sample_rc(tf.cast(image, tf.float32), rows, cols, "bilinear"), image.dtype)
        return (out,) if label is None else (out, _sample_rc(label, rows, cols, "nearest"))

    if pure_flip is True:
        rigid = _flip_only
    else:
        def rigid():
            return tf.cond(pure_flip, _flip_only, _affine)

    if cfg.elastic_prob <= 0.0 or cfg.elastic_alpha <= 0.0:
        result = rigid()
    elif cfg.elastic_prob >= 1.0:
        result = _elastic()
    else:
        result = tf.cond(u[_ELASTIC_GATE] < cfg.elastic_prob, _elastic, rigid)
    result = tuple(result)
    return (result[0], None) if label is None else (result[0], result[1])
