"""tf.data input pipelines, one per stage.

All training pipelines are infinite (shuffle, repeat, augment, batch with a fixed batch
size) so the engine takes a fixed number of steps per epoch with static shapes.
Augmentation is stateless: each sample's random seed comes from a seeded
`tf.data.Dataset.random` stream, so a pipeline with the same seed yields the same
batches.

global:   every train slice, labels unused -> (view_a, view_b), each [B, H, W, 1]
views:    every train slice, intensity-only views -> (view_a, view_b) (local self baseline)
unlabeled: every train slice, no augmentation -> image [B, H, W, 1] (TCSM)
local:    labeled slices, intensity-only views -> (view_a, view_b, label [B, H, W])
finetune: labeled slices, spatial + intensity -> (image [B, H, W, 1], label [B, H, W])
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfsemiseg.config import AugmentConfig
from tfsemiseg.transforms import random_intensity, random_spatial

AUTOTUNE = tf.data.AUTOTUNE


def _base(arrays: tuple[np.ndarray, ...], seed: int, deterministic: bool) -> tf.data.Dataset:
    """Shuffled, repeated samples zipped with a per-sample stateless seed [2]."""
    n = len(arrays[0])
    if n == 0:
        raise ValueError("a training pipeline needs at least one slice")
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    seeds = tf.data.Dataset.random(seed=seed + 1).batch(2, drop_remainder=True)
    ds = tf.data.Dataset.zip((ds, seeds))
    options = tf.data.Options()
    options.deterministic = deterministic
    # in-memory data: multi-worker sharding splits elements, not files
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _finish(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _pipeline(arrays: tuple[np.ndarray, ...], per_sample, batch_size: int, seed: int,
              deterministic: bool) -> tf.data.Dataset:
    """`_base` samples mapped by per_sample(sample, seed [2]) and batched."""
    ds = _base(arrays, seed, deterministic)
    return _finish(ds.map(per_sample, num_parallel_calls=AUTOTUNE, deterministic=deterministic), batch_size)


def global_dataset(
    images: np.ndarray, batch_size: int, aug: AugmentConfig, seed: int = 0, deterministic: bool = False
) -> tf.data.Dataset:
    """Two independently augmented views of each slice: (view_a, view_b) [B, H, W, 1]."""

    def views(sample, s):
        (image,) = sample
        sa, sb, sc, sd = tf.unstack(tf.random.experimental.stateless_split(s, 4))

        def view(seed_spatial, seed_intensity):
            x, _ = random_spatial(image, None, aug.global_spatial, seed_spatial)
            return random_intensity(x, aug.global_intensity, seed_intensity)[..., None]

        return view(sa, sb), view(sc, sd)

    return _pipeline((images.astype(np.float32),), views, batch_size, seed, deterministic)


def local_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, aug: AugmentConfig, seed: int = 0,
                  deterministic: bool = False) -> tf.data.Dataset:
    """Two intensity-only views sharing one label map: (view_a, view_b, label)."""

    def views(sample, s):
        image, label = sample
        sa, sb = tf.unstack(tf.random.experimental.stateless_split(s, 2))
        a = random_intensity(image, aug.local_intensity, sa)[..., None]
        b = random_intensity(image, aug.local_intensity, sb)[..., None]
        return a, b, tf.cast(label, tf.int32)

    return _pipeline((images.astype(np.float32), labels.astype(np.uint8)), views, batch_size, seed, deterministic)


def finetune_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, aug: AugmentConfig, seed: int = 0,
                     deterministic: bool = False) -> tf.data.Dataset:
    """Spatially and intensity-augmented labeled slices: (image [B,H,W,1], label [B,H,W])."""

    def augment(sample, s):
        image, label = sample
        sa, sb = tf.unstack(tf.random.experimental.stateless_split(s, 2))
        x, y = random_spatial(image, tf.cast(label, tf.int32), aug.finetune_spatial, sa)
        x = random_intensity(x, aug.finetune_intensity, sb)
        return x[..., None], y

    return _pipeline((images.astype(np.float32), labels.astype(np.uint8)), augment, batch_size, seed, deterministic)


def views_dataset(
    images: np.ndarray, batch_size: int, aug: AugmentConfig, seed: int = 0, deterministic: bool = False
) -> tf.data.Dataset:
    """Two intensity-only views of unlabeled slices: (view_a, view_b) [B, H, W, 1].

    For the self-supervised local baseline, whose points must correspond across views.
    """

    def views(sample, s):
        (image,) = sample
        sa, sb = tf.unstack(tf.random.experimental.stateless_split(s, 2))
        return (random_intensity(image, aug.local_intensity, sa)[..., None],
                random_intensity(image, aug.local_intensity, sb)[..., None])

    return _pipeline((images.astype(np.float32),), views, batch_size, seed, deterministic)


def unlabeled_dataset(images: np.ndarray, batch_size: int, seed: int = 0, deterministic: bool = False) -> tf.data.Dataset:
    """Shuffled unlabeled slices, unaugmented: [B, H, W, 1] (TCSM augments inside the step)."""
    ds = _base((images.astype(np.float32),), seed, deterministic)
    return _finish(ds.map(lambda sample, s: sample[0][..., None], num_parallel_calls=AUTOTUNE), batch_size)
