"""The one way the project predicts: validation, evaluation, figures and the exported
SavedModel all go through these functions.

    raw slices [N, H, W] --model_input--> images [N, S, S, 1] in [0, 1]     (data.preprocess)
    images --softmax_probabilities--> probabilities [N, S, S, K]           (optional mirroring)
    probabilities --resize_probabilities--> [N, H, W, K] --argmax--> labels at native size

`predict_probabilities` runs `softmax_probabilities` on numpy slices in batches, compiled
once per model; the SavedModel's graph calls the same functions (serving/export.py).

Models trained on slices along different axes of the volumes (views) are combined at native
resolution: each view's probabilities are resized to its own slices' size, transposed by
`view_permutation` into one slicing order, and averaged.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

_PREDICTORS: "weakref.WeakKeyDictionary[keras.Model, dict[bool, Any]]" = weakref.WeakKeyDictionary()
_MIRROR_AXES = ([], [1], [2], [1, 2])


def softmax_probabilities(model: keras.Model, x: tf.Tensor, mirror: bool = False) -> tf.Tensor:
    """Softmax of `model` on images x [B, H, W, 1] -> float32 [B, H, W, K].

    With `mirror` (test-time mirroring), the mean of softmax(model(flip_a(x))) flipped back
    by flip_a over the four flips a in (none, H, W, H and W), as one batch of 4B images.
    """
    if not mirror:
        return tf.nn.softmax(tf.cast(model(x, training=False), tf.float32), axis=-1)
    views = tf.concat([tf.reverse(x, axes) if axes else x for axes in _MIRROR_AXES], 0)
    probs = tf.split(tf.nn.softmax(tf.cast(model(views, training=False), tf.float32), axis=-1), 4, 0)
    return tf.add_n([tf.reverse(p, axes) if axes else p for p, axes in zip(probs, _MIRROR_AXES)]) / 4.0


def resize_probabilities(probabilities: tf.Tensor, size: Sequence[int] | tf.Tensor) -> tf.Tensor:
    """Probabilities [N, S, S, K] resized (bilinear) to size (h, w) -> [N, h, w, K]."""
    return tf.image.resize(probabilities, size, method="bilinear")


def view_permutation(axis: int, to_axis: int) -> list[int]:
    """The transpose that takes a volume's slices along `axis` to its slices along `to_axis`.

    Slices along an axis are the volume with that axis moved first and the other two kept in
    order (`data.preprocess.to_slices`), so for a volume v [X, Y, Z]:
    `transpose(to_slices(v, axis), view_permutation(axis, to_axis)) == to_slices(v, to_axis)`.
    """
    order = {a: [a] + [b for b in range(3) if b != a] for a in (axis % 3, to_axis % 3)}
    return [order[axis % 3].index(a) for a in order[to_axis % 3]]


def _predictor(model: keras.Model, mirror: bool):
    """One compiled softmax predictor per model and mirror setting, dropped with the model."""
    cache = _PREDICTORS.setdefault(model, {})
    if mirror not in cache:
        @tf.function(reduce_retracing=True)
        def predict(x):
            return softmax_probabilities(model, x, mirror)

        cache[mirror] = predict
    return cache[mirror]


def predict_probabilities(
    model: keras.Model, images: np.ndarray, batch_size: int = 64, mirror: bool = False
) -> np.ndarray:
    """Softmax probabilities [S, H, W, K] of slices [S, H, W] at model resolution, in batches
    (`mirror`: test-time mirroring, see `softmax_probabilities`)."""
    predict = _predictor(model, mirror)
    out = [predict(tf.constant(images[i : i + batch_size, :, :, None])).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out, 0)


def view_probabilities(model: keras.Model, images: np.ndarray, native_shape: Sequence[int], axis: int,
                       to_axis: int, mirror: bool = False) -> np.ndarray:
    """Native-resolution probabilities of one volume's slices along `axis` (images [S, H, W] at
    model resolution, native slices of `native_shape`), in the slicing order of `to_axis`:
    float32 [S', h', w', K] (`predict_probabilities`, resized, transposed by `view_permutation`)."""
    probs = resize_probabilities(predict_probabilities(model, images, mirror=mirror), tuple(native_shape[1:]))
    return tf.transpose(probs, view_permutation(axis, to_axis) + [3]).numpy()


def native_labels(probabilities: np.ndarray, native_shape: Sequence[int]) -> np.ndarray:
    """Probabilities [S, H, W, K] resized to the native slice size (S, h, w), argmax -> uint8 [S, h, w]."""
    resized = resize_probabilities(probabilities, (int(native_shape[1]), int(native_shape[2])))
    return tf.argmax(resized, axis=-1, output_type=tf.int32).numpy().astype(np.uint8)
