"""Tests for tfsemiseg.transforms (intensity and spatial augmentation)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from tfsemiseg.config import IntensityAugConfig, SpatialAugConfig
from tfsemiseg.transforms import (
    affine_grid,
    apply_affine,
    elastic_displacement,
    gaussian_blur,
    random_intensity,
    random_spatial,
    rotation_matrix,
    sample,
    split_seed,
)

NO_INTENSITY = IntensityAugConfig(brightness_prob=0.0, contrast_prob=0.0, gamma_prob=0.0, noise_prob=0.0, blur_prob=0.0)
NO_SPATIAL = SpatialAugConfig(flip_prob=0.0, rotation_prob=0.0, scale_prob=0.0, crop_prob=0.0, elastic_prob=0.0)
ALL_INTENSITY = IntensityAugConfig(brightness_prob=0.5, contrast_prob=0.5, gamma_prob=0.5, noise_prob=0.5, blur_prob=0.5)
# every spatial transform always on (moderate zoom so that geometry checks are meaningful)
ALL_SPATIAL = SpatialAugConfig(
    flip_prob=0.5, rotation_prob=1.0, rotation_max=math.pi, scale_prob=1.0, scale_range=(0.8, 1.25),
    crop_prob=1.0, crop_area_range=(0.6, 1.0), elastic_prob=1.0, elastic_alpha=2.0, elastic_sigma=4.0,
)


def intensity_only(**kw) -> IntensityAugConfig:
    return dataclasses.replace(NO_INTENSITY, **kw)


def spatial_only(**kw) -> SpatialAugConfig:
    return dataclasses.replace(NO_SPATIAL, **kw)


def seed(i: int, j: int = 0) -> tf.Tensor:
    return tf.constant([i, j], tf.int64)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = ndimage.gaussian_filter(rng.random((64, 64)), 2.0)
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)  # in [0, 1], like a slice


def blob_label(values, size: int = 64, block: int = 8, rng_seed: int = 0) -> np.ndarray:
    """A label map of constant blocks (large regions, few boundary pixels)."""
    rng = np.random.default_rng(rng_seed)
    coarse = rng.choice(np.asarray(values), size=(size // block, size // block))
    return np.kron(coarse, np.ones((block, block))).astype(np.int32)


def interior_mask(label: np.ndarray) -> np.ndarray:
    """Pixels whose full 3x3 neighbourhood has a single label value (image border excluded)."""
    lo = ndimage.minimum_filter(label, size=3, mode="constant", cval=-1)
    hi = ndimage.maximum_filter(label, size=3, mode="constant", cval=-1)
    return lo == hi


# --------------------------------------------------------------------------- determinism


def test_seeds_determinism_and_variation(image):
    label = blob_label([0, 1, 2])
    a = random_intensity(image, ALL_INTENSITY, seed(1)).numpy()
    b = random_intensity(image, ALL_INTENSITY, seed(1)).numpy()
    np.testing.assert_array_equal(a, b)
    outs = [random_intensity(image, ALL_INTENSITY, seed(i)).numpy() for i in range(2, 6)]
    assert all(not np.array_equal(outs[0], o) for o in outs[1:])

    (ia, la), (ib, lb) = (random_spatial(image, label, ALL_SPATIAL, seed(3)) for _ in range(2))
    np.testing.assert_array_equal(ia.numpy(), ib.numpy())
    np.testing.assert_array_equal(la.numpy(), lb.numpy())
    ic, lc = random_spatial(image, label, ALL_SPATIAL, seed(4))
    assert not np.array_equal(ia.numpy(), ic.numpy())
    assert not np.array_equal(la.numpy(), lc.numpy())
    # int32 and int64 seeds are both accepted and deterministic
    s32 = tf.constant([3, 0], tf.int32)
    np.testing.assert_array_equal(random_spatial(image, None, ALL_SPATIAL, s32)[0].numpy(),
                                  random_spatial(image, None, ALL_SPATIAL, s32)[0].numpy())


def test_split_seed():
    s = split_seed(seed(5), 3)
    assert s.shape == (3, 2) and s.dtype == tf.int64
    np.testing.assert_array_equal(s.numpy(), split_seed(seed(5), 3).numpy())
    assert len({tuple(r) for r in s.numpy()}) == 3


def test_all_probabilities_zero_is_identity(image):
    label = blob_label([0, 2])
    np.testing.assert_array_equal(random_intensity(image, NO_INTENSITY, seed(1)).numpy(), image)
    out, lab = random_spatial(image, label, NO_SPATIAL, seed(1))
    np.testing.assert_array_equal(out.numpy(), image)
    np.testing.assert_array_equal(lab.numpy(), label)
    out, lab = random_spatial(image, None, NO_SPATIAL, seed(1))
    assert lab is None
    np.testing.assert_array_equal(out.numpy(), image)
    # parameters drawn but every gate closed (probabilities tiny): still exact
    tiny = dataclasses.replace(ALL_SPATIAL, flip_prob=1e-9, rotation_prob=1e-9, scale_prob=1e-9,
                               crop_prob=1e-9, elastic_prob=1e-9)
    out, lab = random_spatial(image, label, tiny, seed(2))
    np.testing.assert_array_equal(out.numpy(), image)
    np.testing.assert_array_equal(lab.numpy(), label)
    tiny_i = IntensityAugConfig(brightness_prob=1e-9, contrast_prob=1e-9, gamma_prob=1e-9,
                                noise_prob=1e-9, blur_prob=1e-9)
    np.testing.assert_array_equal(random_intensity(image, tiny_i, seed(2)).numpy(), image)


# --------------------------------------------------------------------------- spatial geometry


def test_flips_are_exact_and_shared(image):
    label = blob_label([0, 1, 2, 3])
    candidates = {
        "none": lambda a: a, "lr": np.fliplr, "ud": np.flipud, "both": lambda a: np.flipud(np.fliplr(a)),
    }
    seen = set()
    for i in range(16):
        out, lab = random_spatial(image, label, spatial_only(flip_prob=0.5), seed(i))
        hits = [k for k, f in candidates.items() if np.array_equal(out.numpy(), f(image))]
        assert len(hits) == 1, f"seed {i}: output is not an exact flip of the input"
        np.testing.assert_array_equal(lab.numpy(), candidates[hits[0]](label))
        seen.add(hits[0])
    assert seen == set(candidates)  # both flips fire independently
    out, lab = random_spatial(image, label, spatial_only(flip_prob=1.0), seed(0))
    np.testing.assert_array_equal(out.numpy(), np.flipud(np.fliplr(image)))
    np.testing.assert_array_equal(lab.numpy(), np.flipud(np.fliplr(label)))
    # the general (projective-transform) path gives the very same flips
    np.testing.assert_array_equal(apply_affine(image, np.diag([1.0, -1.0])).numpy(), np.fliplr(image))
    np.testing.assert_array_equal(apply_affine(label, np.diag([-1.0, 1.0]), method="nearest").numpy(),
                                  np.flipud(label))
    np.testing.assert_array_equal(sample(image, affine_grid(np.diag([1.0, -1.0]), 64, 64)).numpy(),
                                  np.fliplr(image))


@pytest.mark.parametrize("k", [1, -1, 2])
def test_rotation_matches_rot90(image, k):
    label = blob_label([0, 1, 2, 3])
    m = rotation_matrix(k * math.pi / 2)
    np.testing.assert_allclose(apply_affine(image, m).numpy(), np.rot90(image, k), atol=1e-5)
    np.testing.assert_array_equal(apply_affine(label, m, method="nearest").numpy(), np.rot90(label, k))
    grid = affine_grid(m, 64, 64)
    np.testing.assert_allclose(sample(image, grid).numpy(), np.rot90(image, k), atol=1e-5)
    np.testing.assert_array_equal(sample(label, grid, "nearest").numpy(), np.rot90(label, k))


def test_fused_affine_matches_gather_sampler(image):
    rng = np.random.default_rng(1)
    label = rng.integers(0, 5, (64, 64)).astype(np.int32)
    rgb = np.stack([image, 1 - image, image ** 2], -1)
    for _ in range(3):
        m = rotation_matrix(rng.uniform(-3, 3)) * rng.uniform(0.6, 1.5)
        off = rng.uniform(-7, 7, 2)
        grid = affine_grid(m, 64, 64, off)
        np.testing.assert_allclose(apply_affine(image, m, off).numpy(), sample(image, grid).numpy(), atol=1e-4)
        np.testing.assert_allclose(apply_affine(rgb, m, off).numpy(), sample(rgb, grid).numpy(), atol=1e-4)
        # nearest may only differ where a coordinate is within float error of a .5 tie
        diff = apply_affine(label, m, off, method="nearest").numpy() != sample(label, grid, "nearest").numpy()
        assert diff.mean() < 0.002
    # out-of-image samples are 0; bilinear blends towards 0 at the border
    far = sample(image, affine_grid(np.eye(2), 64, 64, [100.0, 0.0])).numpy()
    np.testing.assert_array_equal(far, 0.0)
    half = sample(image, affine_grid(np.eye(2), 64, 64, [0.0, 0.5])).numpy()
    np.testing.assert_allclose(half[:, -1], 0.5 * image[:, -1], rtol=1e-6)
    shifted = apply_affine(image, np.eye(2), [0.0, 0.5]).numpy()
    np.testing.assert_allclose(shifted[:, -1], 0.5 * image[:, -1], rtol=1e-6)


def test_elastic_and_fused_paths_agree(image):
    """A negligible elastic field gives the fused-affine result (same draws, same map)."""
    label = blob_label([0, 1, 2, 3])
    rigid = dataclasses.replace(ALL_SPATIAL, elastic_prob=0.0)
    nearly = dataclasses.replace(ALL_SPATIAL, elastic_alpha=1e-6)
    for i in range(3):
        a_img, a_lab = random_spatial(image, label, rigid, seed(i))
        b_img, b_lab = random_spatial(image, label, nearly, seed(i))
        np.testing.assert_allclose(a_img.numpy(), b_img.numpy(), atol=1e-4)
        assert (a_lab.numpy() != b_lab.numpy()).mean() < 0.002


def test_scale_zooms_in_about_centre():
    x = np.zeros((64, 64), np.int32)
    x[24:40, 24:40] = 1  # centred 16 x 16 square
    out = apply_affine(x, np.eye(2) / 2.0, method="nearest").numpy()  # scale 2
    rows, cols = np.nonzero(out)
    assert out.sum() == 32 * 32 and rows.min() == 16 and rows.max() == 47 and cols.min() == 16


@pytest.mark.parametrize("cfg", [
    ALL_SPATIAL,
    dataclasses.replace(ALL_SPATIAL, elastic_prob=0.0),  # fused affine path
    spatial_only(rotation_prob=1.0, rotation_max=math.pi, scale_prob=1.0, scale_range=(0.5, 2.0)),
    spatial_only(elastic_prob=1.0, elastic_alpha=8.0, elastic_sigma=3.0),
])
def test_label_values_stay_in_label_set(cfg):
    label = blob_label([0, 2], block=4)
    for i in range(4):
        out, lab = random_spatial(label.astype(np.float32), label, cfg, seed(i))
        assert set(np.unique(lab.numpy())) <= {0, 2}
        assert lab.dtype == tf.int32 and lab.shape == (64, 64)
    # the image (bilinear) does create in-between values: the check above is not vacuous
    assert np.any((out.numpy() > 0.1) & (out.numpy() < 1.9))


@pytest.mark.parametrize("cfg", [ALL_SPATIAL, dataclasses.replace(ALL_SPATIAL, elastic_prob=0.0)])
def test_image_and_label_share_geometry(cfg):
    for i in range(6):
        label = blob_label([0, 1, 2, 3], rng_seed=i)
        out, lab = random_spatial(label.astype(np.float32), label, cfg, seed(10 + i))
        lab = lab.numpy()
        mask = interior_mask(lab)
        assert mask.mean() > 0.5
        np.testing.assert_array_equal(np.round(out.numpy())[mask], lab[mask])
        assert not np.array_equal(lab, label)


def test_channels_and_label_none(image):
    rgb = np.stack([image, 1 - image], -1)
    out, lab = random_spatial(rgb, None, ALL_SPATIAL, seed(1))
    assert lab is None and out.shape == (64, 64, 2)
    single, _ = random_spatial(image, None, ALL_SPATIAL, seed(1))
    np.testing.assert_allclose(out.numpy()[..., 0], single.numpy(), atol=1e-6)


def test_elastic_displacement_magnitude():
    d = elastic_displacement(64, 48, 4.0, 4.0, seed(3)).numpy()
    assert d.shape == (64, 48, 2)
    np.testing.assert_allclose(np.sqrt((d ** 2).sum(-1)).max(), 4.0, rtol=1e-5)
    assert np.abs(np.diff(d, axis=0)).max() < 2.0  # smooth, not white noise


# --------------------------------------------------------------------------- intensity


def test_brightness_scales_by_factor_in_range(image):
    factors = []
    for i in range(6):
        out = random_intensity(image, intensity_only(brightness_prob=1.0), seed(i)).numpy()
        ratio = out[image > 0.05] / image[image > 0.05]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
        factors.append(ratio[0])
    assert all(0.7 <= f <= 1.3 for f in factors) and np.ptp(factors) > 0.05
    # not clipped: a factor > 1 leaves [0, 1]
    assert any(f > 1.0 for f in factors)
    bright = random_intensity(image, intensity_only(brightness_prob=1.0, brightness_range=(1.5, 1.6)), seed(0))
    assert float(tf.reduce_max(bright)) > 1.4


def test_contrast_about_mean(image):
    out = random_intensity(image, intensity_only(contrast_prob=1.0), seed(1)).numpy()
    np.testing.assert_allclose(out.mean(), image.mean(), atol=1e-5)
    c = (out - image.mean()) / (image - image.mean())
    sel = np.abs(image - image.mean()) > 0.1
    np.testing.assert_allclose(c[sel], np.median(c[sel]), rtol=1e-4)
    assert 0.75 <= np.median(c[sel]) <= 1.25


def test_gamma_is_a_power_in_range(image):
    gammas = []
    sel = (image > 0.02) & (image < 0.98)
    for i in range(6):
        out = random_intensity(image, intensity_only(gamma_prob=1.0), seed(i)).numpy()
        g = np.log(out[sel]) / np.log(image[sel])
        np.testing.assert_allclose(g, np.median(g), rtol=1e-4)  # one exponent for all pixels
        np.testing.assert_allclose(out, image ** np.median(g), rtol=1e-5, atol=1e-6)
        gammas.append(np.median(g))
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert all(0.5 <= g <= 2.0 for g in gammas) and np.ptp(gammas) > 0.1
    # negative inputs are clipped to 0 before the power (no NaN)
    neg = random_intensity(image - 0.1, intensity_only(gamma_prob=1.0), seed(0)).numpy()
    assert np.isfinite(neg).all() and neg.min() == 0.0


def test_noise_std_within_bounds(image):
    stds = []
    for i in range(8):
        out = random_intensity(image, intensity_only(noise_prob=1.0, noise_std_max=0.1), seed(i)).numpy()
        residual = out - image
        assert abs(residual.mean()) < 0.01
        stds.append(residual.std())
    assert max(stds) <= 0.1 * 1.1 and np.ptp(stds) > 0.02


def test_blur_matches_scipy(image):
    rng = np.random.default_rng(2)
    x = rng.random((40, 56)).astype(np.float32)
    for sigma in (0.5, 1.0, 1.7):
        radius = int(math.ceil(3 * sigma))
        expected = ndimage.gaussian_filter(x.astype(np.float64), sigma, mode="reflect", truncate=radius / sigma)
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), expected, atol=1e-6)
    # a fixed radius wider than 3 sigma (as random_intensity uses for sigma < sigma_max)
    expected = ndimage.gaussian_filter(x.astype(np.float64), 0.6, mode="reflect", truncate=3 / 0.6)
    np.testing.assert_allclose(gaussian_blur(x, tf.constant(0.6), radius=3).numpy(), expected, atol=1e-6)


def test_random_blur_keeps_constants_and_smooths_noise():
    cfg = intensity_only(blur_prob=1.0)
    const = np.full((64, 64), 0.37, np.float32)
    np.testing.assert_allclose(random_intensity(const, cfg, seed(1)).numpy(), 0.37, rtol=1e-6)
    noise = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    out = random_intensity(noise, cfg, seed(1)).numpy()
    assert out.var() < 0.5 * noise.var()
    np.testing.assert_allclose(out.mean(), noise.mean(), atol=2e-3)


def test_intensity_accepts_channels(image):
    rgb = np.stack([image, image], -1)
    out = random_intensity(rgb, ALL_INTENSITY, seed(4))
    assert out.shape == (64, 64, 2) and out.dtype == tf.float32


# --------------------------------------------------------------------------- tf.data


@pytest.mark.parametrize("size", [64, 160])
def test_inside_dataset_map(size):
    rng = np.random.default_rng(size)
    images = rng.random((6, size, size)).astype(np.float32)
    labels = rng.integers(0, 3, (6, size, size)).astype(np.int32)
    icfg = ALL_INTENSITY
    scfg = dataclasses.replace(ALL_SPATIAL, crop_prob=0.5, elastic_prob=0.5, rotation_prob=0.5, scale_prob=0.5)

    def augment(index, x, y):
        s = split_seed(tf.stack([tf.constant(9, tf.int64), index]), 2)
        x = random_intensity(x, icfg, s[0])
        return random_spatial(x, y, scfg, s[1])

    ds = tf.data.Dataset.from_tensor_slices((tf.range(6, dtype=tf.int64), images, labels))
    ds = ds.map(augment, num_parallel_calls=2, deterministic=True)
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    second = [(x.numpy(), y.numpy()) for x, y in ds]
    assert len(first) == 6
    for (x1, y1), (x2, y2), y in zip(first, second, labels):
        assert x1.shape == (size, size) and x1.dtype == np.float32 and y1.dtype == np.int32
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert set(np.unique(y1)) <= {0, 1, 2}
    # graph mode inside tf.data gives the same result as eager execution
    x_eager, y_eager = augment(tf.constant(2, tf.int64), images[2], labels[2])
    np.testing.assert_allclose(first[2][0], x_eager.numpy(), atol=1e-5)
    np.testing.assert_array_equal(first[2][1], y_eager.numpy())
