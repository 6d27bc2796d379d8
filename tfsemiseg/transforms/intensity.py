"""Random intensity augmentation of single 2D slices (graph-mode, stateless, seeded).

Everything here is a pure function of its inputs built from core TensorFlow ops, so it
runs inside ``tf.data.Dataset.map`` (any ``num_parallel_calls``) and ``tf.function``,
and gives the same output for the same ``seed`` on every run.

Conventions
-----------
* ``image``: float ``[H, W]`` (``[H, W, C]`` is accepted too; statistics such as the
  contrast mean are then taken over all pixels and channels). Images are expected in
  ``[0, 1]`` (per-volume min-max normalisation) but nothing relies on that.
* ``seed``: an int32/int64 tensor (or a pair of Python ints) of shape ``[2]``, as used by
  ``tf.random.stateless_*``. Sub-seeds are derived with
  ``tf.random.experimental.stateless_split``; see :func:`split_seed`.
* Order of the transforms (each fires independently with its own ``*_prob``):
  gamma -> brightness -> contrast -> blur -> noise. Gamma runs first so that it acts on
  the un-modified ``[0, 1]`` image; noise runs last so that it is not blurred away.
* The output is **not** clipped to ``[0, 1]``: brightness/contrast/noise may leave it.
  The only clipping is ``max(x, 0)`` before gamma (a power of a negative number is NaN).
* A transform whose probability is 0 is not even built into the graph, so with every
  probability 0 :func:`random_intensity` returns its input unchanged (exactly).
* The random draws of one transform do not depend on which other transforms are
  enabled (fixed layout of the scalar draws), so switching one transform on or off does
  not change the parameters drawn for the others under the same seed.
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from tfsemiseg.config import IntensityAugConfig

__all__ = [
    "split_seed",
    "random_intensity",
    "gaussian_kernel1d",
    "gaussian_blur",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
]

_ALG = "philox"  # explicit: identical streams on every device


# --------------------------------------------------------------------------- seeds


def as_seed(seed) -> tf.Tensor:
    """``seed`` as an int32/int64 tensor of shape [2] (Python ints become int64)."""
    if not tf.is_tensor(seed):
        seed = tf.constant(seed, dtype=tf.int64)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    seed.shape.assert_is_compatible_with([2])
    return seed


def split_seed(seed, n: int) -> tf.Tensor:
    """``n`` independent seeds derived from ``seed``: a tensor of shape [n, 2].

    Row ``i`` is a valid seed for any ``tf.random.stateless_*`` op. Same dtype as
    ``seed`` (int32 or int64).
    """
    return tf.random.experimental.stateless_split(as_seed(seed), num=n, alg=_ALG)


def uniform_draws(n: int, seed) -> tf.Tensor:
    """``n`` i.i.d. U[0, 1) float32 scalars from one stateless op."""
    return tf.random.stateless_uniform([n], seed=seed, dtype=tf.float32, alg=_ALG)


def lerp(lo: float, hi: float, u: tf.Tensor) -> tf.Tensor:
    """Map U[0, 1) draws to U[lo, hi)."""
    return lo + (hi - lo) * u


def maybe_apply(prob: float, u: tf.Tensor, fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """``fn(x)`` with probability ``prob`` (gate ``u < prob``), else ``x``.

    Probabilities 0 and 1 are resolved while tracing (no op is built for 0, no cond for 1).
    """
    if prob <= 0.0:
        return x
    if prob >= 1.0:
        return fn(x)
    return tf.cond(u < prob, lambda: fn(x), lambda: tf.identity(x))


# --------------------------------------------------------------------------- primitives


def adjust_brightness(x: tf.Tensor, factor) -> tf.Tensor:
    """Multiplicative brightness: ``x * factor``."""
    return x * factor


def adjust_contrast(x: tf.Tensor, factor) -> tf.Tensor:
    """Contrast about the image mean: ``(x - mean) * factor + mean``."""
    mean = tf.reduce_mean(x)
    return (x - mean) * factor + mean


def adjust_gamma(x: tf.Tensor, gamma) -> tf.Tensor:
    """``max(x, 0) ** gamma`` (meant for [0, 1] images, where it keeps 0 and 1 fixed)."""
    return tf.pow(tf.maximum(x, 0.0), gamma)


def gaussian_kernel1d(sigma, radius: int) -> tf.Tensor:
    """Normalised 1D Gaussian taps ``exp(-i^2 / (2 sigma^2))``, i = -radius..radius.

    ``sigma`` may be a tensor; ``radius`` is a static int. Shape [2 * radius + 1].
    """
    sigma = tf.cast(sigma, tf.float32)
    i = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(i / sigma))
    return k / tf.reduce_sum(k)


def separable_filter(x4: tf.Tensor, kernel: tf.Tensor, mode: str = "SYMMETRIC") -> tf.Tensor:
    """Filter a [1, H, W, C] tensor with the same 1D ``kernel`` along H and W.

    The input is padded with ``mode`` (``"SYMMETRIC"`` = scipy's ``mode="reflect"``,
    so a constant image stays constant up to the borders) and convolved ``VALID`` with
    two depthwise convolutions.
    """
    radius = (int(kernel.shape[0]) - 1) // 2
    channels = int(x4.shape[-1])
    x4 = tf.pad(x4, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode=mode)
    k = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])  # [K, 1, C, 1]
    x4 = tf.nn.depthwise_conv2d(x4, k, strides=[1, 1, 1, 1], padding="VALID")
    k = tf.reshape(k, [1, -1, channels, 1])  # [1, K, C, 1]
    return tf.nn.depthwise_conv2d(x4, k, strides=[1, 1, 1, 1], padding="VALID")


def blur_radius(sigma_max: float) -> int:
    """Static kernel radius used for blurs with sigma up to ``sigma_max``: ceil(3 sigma)."""
    return max(1, int(math.ceil(3.0 * sigma_max)))


def gaussian_blur(image: tf.Tensor, sigma, radius: int | None = None) -> tf.Tensor:
    """Gaussian blur of an [H, W] (or [H, W, C]) image with explicit ``sigma``.

    Separable, truncated at ``radius`` (default ceil(3 sigma), which requires a Python
    ``sigma``), with symmetric padding of the borders. Matches
    ``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=radius / sigma)``.
    ``radius`` must not exceed the image height or width.
    """
    if radius is None:
        radius = blur_radius(float(sigma))
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    x4 = image[None, :, :, None] if rank == 2 else image[None]
    out = separable_filter(x4, gaussian_kernel1d(sigma, radius))
    return out[0, :, :, 0] if rank == 2 else out[0]


# --------------------------------------------------------------------------- random


# fixed layout of the scalar draws: (gate, parameter) per transform
_GAMMA_GATE, _GAMMA, _BRIGHT_GATE, _BRIGHT, _CONTRAST_GATE, _CONTRAST = 0, 1, 2, 3, 4, 5
_BLUR_GATE, _BLUR, _NOISE_GATE, _NOISE = 6, 7, 8, 9
_NUM_DRAWS = 10


def random_intensity(image: tf.Tensor, cfg: IntensityAugConfig, seed) -> tf.Tensor:
    """Randomly augment the intensities of one slice; deterministic given ``seed``.

    Args:
      image: float [H, W] (or [H, W, C]) image, nominally in [0, 1].
      cfg: the probabilities and ranges (see ``IntensityAugConfig``).
      seed: int32/int64 tensor of shape [2].

    Returns:
      The augmented image, same shape and dtype. Not clipped (see module docstring).
    """
    image = tf.convert_to_tensor(image)
    if not image.dtype.is_floating:
        raise TypeError(f"random_intensity expects a float image, got {image.dtype}")
    probs = (cfg.gamma_prob, cfg.brightness_prob, cfg.contrast_prob, cfg.blur_prob, cfg.noise_prob)
    if all(p <= 0.0 for p in probs):
        return image

    dtype = image.dtype
    x = tf.cast(image, tf.float32)
    seeds = split_seed(seed, 2)
    u = uniform_draws(_NUM_DRAWS, seeds[0])

    x = maybe_apply(cfg.gamma_prob, u[_GAMMA_GATE],
                    lambda t: adjust_gamma(t, lerp(*cfg.gamma_range, u[_GAMMA])), x)
    x = maybe_apply(cfg.brightness_prob, u[_BRIGHT_GATE],
                    lambda t: adjust_brightness(t, lerp(*cfg.brightness_range, u[_BRIGHT])), x)
    x = maybe_apply(cfg.contrast_prob, u[_CONTRAST_GATE],
                    lambda t: adjust_contrast(t, lerp(*cfg.contrast_range, u[_CONTRAST])), x)
    if cfg.blur_prob > 0.0:
        radius = blur_radius(cfg.blur_sigma_range[1])
        x = maybe_apply(cfg.blur_prob, u[_BLUR_GATE],
                        lambda t: gaussian_blur(t, lerp(*cfg.blur_sigma_range, u[_BLUR]), radius), x)
    if cfg.noise_std_max > 0.0:
        def _noise(t: tf.Tensor) -> tf.Tensor:
            std = cfg.noise_std_max * u[_NOISE]
            return t + std * tf.random.stateless_normal(tf.shape(t), seed=seeds[1], alg=_ALG)

        x = maybe_apply(cfg.noise_prob, u[_NOISE_GATE], _noise, x)
    return tf.cast(x, dtype)
