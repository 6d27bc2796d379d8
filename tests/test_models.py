"""U-Net sub-models, heads, and strict by-name weight transfer between stages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg.config import ModelConfig
from tfsemiseg.errors import ConfigError, TfSemisegError
from tfsemiseg.models.layers import BatchNorm
from tfsemiseg.models import (
    PARTS,
    UNet,
    build_unet,
    load_weights_by_name,
    save_weights_by_name,
    variable_part,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(depth=3, base_width=4, global_head_dims=(16, 8), local_head_dims=(8, 6))


def _images(n: int = 2, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 1), dtype=np.float32)


def _perturb(model: keras.Model, seed: int = 1) -> dict[str, np.ndarray]:
    """Give every variable random values (so a copy is told from a fresh init); return them."""
    rng = np.random.default_rng(seed)
    values = {}
    for v in model.variables:
        value = rng.normal(size=v.shape).astype("float32")
        if v.path.endswith("moving_variance"):
            value = np.abs(value) + 0.5
        v.assign(value)
        values[v.path] = value
    return values


def _paths(model: keras.Model, *parts: str) -> list[str]:
    return [v.path for v in model.variables if variable_part(v.path) in parts]


@pytest.fixture(scope="module")
def small_unet() -> UNet:
    """A U-Net shared by the tests that do not change weights."""
    return build_unet(SMALL, 16, 2)


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize(
    "depth, norm, upsample, activation",
    [
        (3, "batch", "transpose", "leaky_relu"),
        (3, "instance", "bilinear", "relu"),
        (3, "group", "transpose", "relu"),
        (3, "none", "bilinear", "leaky_relu"),
        (4, "batch", "bilinear", "leaky_relu"),
        (4, "instance", "transpose", "leaky_relu"),
        (4, "group", "bilinear", "relu"),
        (4, "none", "transpose", "relu"),
    ],
)
def test_submodel_output_shapes(depth: int, norm: str, upsample: str, activation: str) -> None:
    cfg = ModelConfig(depth=depth, base_width=8, norm=norm, groups=2, upsample=upsample,
                      activation=activation, global_head_dims=(16, 8), local_head_dims=(8, 6))
    unet = build_unet(cfg, image_size=16, num_classes=3)
    x = _images(2, 16)
    bottom = 16 // 2**depth
    expected = {
        unet.encoder: (2, bottom, bottom, 8 * 2**depth),
        unet.decoder_features: (2, 16, 16, 8),
        unet.segmenter: (2, 16, 16, 3),
        unet.global_model: (2, 8),
        unet.local_model: (2, 16, 16, 6),
    }
    for model, shape in expected.items():
        assert tuple(model.output.shape) == (None, *shape[1:]), model.name
    for model in (unet.segmenter, unet.global_model, unet.local_model):
        assert model.output.dtype == "float32"
    # one real forward pass through the shared graph computes all five outputs
    everything = keras.Model(unet.segmenter.input, [m.output for m in expected])
    for model, y in zip(expected, everything(x, training=True)):
        y = keras.ops.convert_to_numpy(y)
        assert y.shape == expected[model], model.name
        assert np.isfinite(y).all(), model.name

    # conv bias only without a normalisation after it; layers of the configured kind
    layers = {layer.name: layer for layer in unet.segmenter.layers}
    assert layers["enc0_conv0"].use_bias == (norm == "none")
    assert f"dec{depth - 1}_up" in layers and "dec0_conv1" in layers and "bottleneck_conv1" in layers
    assert ("dec0_resize" in layers) == (upsample == "bilinear")
    act = layers["dec0_act1"]
    assert isinstance(act, keras.layers.LeakyReLU if activation == "leaky_relu" else keras.layers.ReLU)
    if activation == "leaky_relu":
        assert act.negative_slope == pytest.approx(0.01)
    if norm == "none":
        assert "enc0_norm0" not in layers
    elif norm == "batch":
        assert isinstance(layers["dec1_norm0"], BatchNorm)
    else:  # dec1 has 16 channels: instance = 16 groups of 1, group = cfg.groups
        assert isinstance(layers["dec1_norm0"], keras.layers.GroupNormalization)
        assert layers["dec1_norm0"].groups == (16 if norm == "instance" else 2)


def test_layer_names_prefix_variable_paths_and_parts(small_unet: UNet) -> None:
    unet = small_unet
    for model in (unet.segmenter, unet.global_model, unet.local_model):
        for layer in model.layers:
            for w in layer.weights:
                assert w.path.startswith(layer.name + "/"), (layer.name, w.path)
    assert {variable_part(p) for p in _paths(unet.encoder, *PARTS)} == {"encoder"}
    assert {variable_part(v.path) for v in unet.decoder_features.variables} == {"encoder", "decoder"}
    assert {variable_part(v.path) for v in unet.segmenter.variables} == {"encoder", "decoder", "seg_head"}
    assert {variable_part(v.path) for v in unet.global_model.variables} == {"encoder", "h1"}
    assert {variable_part(v.path) for v in unet.local_model.variables} == {"encoder", "decoder", "h2"}
    assert _paths(unet.segmenter, "seg_head") == ["seg_head/kernel", "seg_head/bias"]
    assert variable_part("bottleneck_norm1/moving_mean") == "encoder"
    assert variable_part("something_else/kernel") == "other"


def test_submodels_share_weights() -> None:
    unet = build_unet(SMALL, 16, 2)
    x = _images(2, 16)
    assert unet.segmenter.get_layer("enc0_conv0") is unet.global_model.get_layer("enc0_conv0")

    before = {m.name: keras.ops.convert_to_numpy(m(x)) for m in (unet.global_model, unet.segmenter, unet.encoder)}
    kernel = unet.local_model.get_layer("enc0_conv0").kernel  # changed through a third model
    kernel.assign(kernel.numpy() * 2.0 + 0.1)
    after = {m.name: keras.ops.convert_to_numpy(m(x)) for m in (unet.global_model, unet.segmenter, unet.encoder)}
    for name in before:
        assert not np.allclose(before[name], after[name]), name

    # a decoder weight changes the segmenter but not the encoder or h1
    bias = unet.local_model.get_layer("dec0_up").bias
    bias.assign(bias.numpy() + 1.0)
    assert not np.allclose(keras.ops.convert_to_numpy(unet.segmenter(x)), after["segmenter"])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(unet.encoder(x)), after["encoder"])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(unet.global_model(x)), after["global_model"])


@pytest.mark.parametrize("size, depth", [(20, 3), (24, 4), (4, 3)])
def test_image_size_not_divisible_is_a_clear_error(size: int, depth: int) -> None:
    expected = rf"image_size {size} must be a positive multiple of 2\*\*model.depth = {2**depth}"
    with pytest.raises(ConfigError, match=expected):
        build_unet(ModelConfig(depth=depth, base_width=4), size, 2)


def _expected_params(depth: int, width: int, num_classes: int) -> int:
    """Parameters of our U-Net with BatchNorm and transposed-conv upsampling.

    Each 3x3 conv: 9*c_in*c weights, no bias, then BN with 4*c (gamma, beta, moving mean,
    moving variance). Each transposed conv: 2*2*(2c)*c + c. Head: c0*K + K.
    """
    def block(c_in: int, c: int) -> int:
        return 9 * c_in * c + 4 * c + 9 * c * c + 4 * c

    total, c_in = 0, 1
    for level in range(depth):
        total += block(c_in, width * 2**level)
        c_in = width * 2**level
    total += block(c_in, width * 2**depth)
    for level in range(depth):
        c = width * 2**level
        total += 4 * 2 * c * c + c + block(2 * c, c)
    return total + width * num_classes + num_classes


def test_parameter_count_matches_reference_unet() -> None:
    # depth 4, widths 64..1024 is the classic U-Net (Ronneberger et al. 2015, padded convs).
    unet = build_unet(ModelConfig(depth=4, base_width=64, norm="batch"), 16, 2)
    count = unet.segmenter.count_params()
    assert count == _expected_params(4, 64, 2) == 31_048_322
    # The classic U-Net (conv biases, no normalisation) has 31,030,658 parameters for 2
    # classes. We swap each 3x3 conv's bias (c) for BatchNorm's 4 per channel: +3 per
    # channel over 2*(64+..+512) + 2*1024 + 2*(512+..+64) = 5888 channels = 17,664
    # (0.06 %), so "about 31.0 M" holds to within 0.1 %.
    assert abs(count - 31_030_658) == 3 * 5888
    assert abs(count - 31_030_658) / 31_030_658 < 1e-3
    # and the small CPU default
    small = build_unet(ModelConfig(depth=3, base_width=16), 64, 3).segmenter
    assert small.count_params() == _expected_params(3, 16, 3) == 483_891


def test_mixed_precision_outputs_float32() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        unet = build_unet(SMALL, 16, 2)
        assert unet.segmenter.get_layer("enc0_conv0").compute_dtype == "float16"
        x = _images(2, 16)
        for model in (unet.segmenter, unet.global_model, unet.local_model):
            y = model(x, training=True)
            assert keras.backend.standardize_dtype(y.dtype) == "float32", model.name
            assert np.isfinite(keras.ops.convert_to_numpy(y)).all()
        assert all(v.dtype == "float32" for v in unet.segmenter.variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- transfer


def test_save_writes_every_variable_atomically(tmp_path: Path) -> None:
    unet = build_unet(SMALL, 16, 2)
    values = _perturb(unet.segmenter)
    path = tmp_path / "w.npz"
    path.write_text("old")  # replaced, not appended to
    save_weights_by_name(unet.segmenter, path)
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # no temporary file left
    with np.load(path) as data:
        assert sorted(data.files) == sorted(values)
        assert "enc0_norm0/moving_mean" in data.files
        for key in data.files:
            np.testing.assert_array_equal(data[key], values[key])


def test_stage1_to_stage2_copies_the_encoder(tmp_path: Path) -> None:
    stage1 = build_unet(SMALL, 16, 2)
    saved = _perturb(stage1.global_model)
    save_weights_by_name(stage1.global_model, tmp_path / "global.npz")

    stage2 = build_unet(SMALL, 16, 2)
    local = stage2.local_model
    h2_before = {v.path: v.numpy() for v in local.variables if variable_part(v.path) == "h2"}
    report = load_weights_by_name(local, tmp_path / "global.npz", require=["encoder"])

    encoder = _paths(local, "encoder")
    assert len(encoder) == 40  # 4 blocks x (2 kernels + 2 BN x 4)
    for v in local.variables:
        if v.path in encoder:
            np.testing.assert_array_equal(v.numpy(), saved[v.path])
    for path, value in h2_before.items():  # the new head keeps its fresh init
        np.testing.assert_array_equal(dict((v.path, v.numpy()) for v in local.variables)[path], value)
    assert report.loaded == encoder
    assert sorted(report.dropped) == sorted(_paths(stage1.global_model, "h1"))
    assert report.fresh == _paths(local, "decoder", "h2")
    assert report.summary() == "loaded 40 (encoder), dropped 4 (h1), kept fresh 40 (decoder 36, h2 4)"


def test_stage2_to_stage3_copies_encoder_and_decoder(tmp_path: Path) -> None:
    stage2 = build_unet(SMALL, 16, 2)
    saved = _perturb(stage2.local_model)
    save_weights_by_name(stage2.local_model, tmp_path / "local.npz")

    stage3 = build_unet(SMALL, 16, 2)
    seg = stage3.segmenter
    report = load_weights_by_name(seg, tmp_path / "local.npz", require=["encoder", "decoder"])

    body = _paths(seg, "encoder", "decoder")
    for v in seg.variables:
        if v.path in body:
            np.testing.assert_array_equal(v.numpy(), saved[v.path])
    assert report.loaded == body
    assert sorted(report.dropped) == ["h2_conv0/bias", "h2_conv0/kernel", "h2_conv1/bias", "h2_conv1/kernel"]
    assert report.fresh == ["seg_head/kernel", "seg_head/bias"]
    assert report.summary() == "loaded 76 (encoder 40, decoder 36), dropped 4 (h2), kept fresh 2 (seg_head)"

    # same weights => the segmenter's features equal the stage 2 model's
    x = _images(2, 16)
    np.testing.assert_allclose(stage3.decoder_features(x), stage2.decoder_features(x), rtol=1e-5, atol=1e-5)


def test_width_mismatch_names_the_variable_and_changes_nothing(tmp_path: Path) -> None:
    wide = build_unet(ModelConfig(depth=3, base_width=8), 16, 2)
    save_weights_by_name(wide.global_model, tmp_path / "wide.npz")
    narrow = build_unet(SMALL, 16, 2)
    before = [v.numpy() for v in narrow.local_model.variables]
    with pytest.raises(TfSemisegError) as info:
        load_weights_by_name(narrow.local_model, tmp_path / "wide.npz", require=["encoder"])
    message = str(info.value)
    assert str(tmp_path / "wide.npz") in message
    assert "enc0_conv0/kernel (file (3, 3, 1, 8), model (3, 3, 1, 4))" in message
    for v, value in zip(narrow.local_model.variables, before):
        np.testing.assert_array_equal(v.numpy(), value)


def test_renamed_layers_raise_instead_of_loading_nothing(tmp_path: Path) -> None:
    # a model with the same architecture idea but other layer names (as a renaming would)
    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="contr_1_1")(inp)
    x = keras.layers.BatchNormalization(name="contr_1_1_bn")(x)
    other = keras.Model(inp, x)
    save_weights_by_name(other, tmp_path / "renamed.npz")

    unet = build_unet(SMALL, 16, 2)
    with pytest.raises(TfSemisegError, match=r"40 required encoder variable\(s\) of local_model are not in the file: "
                                              r"enc0_conv0/kernel.*the file has contr_1_1/kernel"):
        load_weights_by_name(unet.local_model, tmp_path / "renamed.npz", require=["encoder"])
    # without `require` the (empty) load is allowed, and the report says so
    report = load_weights_by_name(unet.local_model, tmp_path / "renamed.npz", require=[])
    assert report.loaded == [] and len(report.dropped) == 5
    assert report.summary().startswith("loaded 0, dropped 5 (other), kept fresh 80")


def test_one_missing_required_variable_is_named(tmp_path: Path) -> None:
    unet = build_unet(SMALL, 16, 2)
    save_weights_by_name(unet.local_model, tmp_path / "local.npz")
    with np.load(tmp_path / "local.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "dec1_norm0/moving_mean"}
    np.savez(tmp_path / "partial.npz", **arrays)
    target = build_unet(SMALL, 16, 2).segmenter
    load_weights_by_name(target, tmp_path / "partial.npz", require=["encoder"])  # decoder not required: fine
    with pytest.raises(TfSemisegError, match=r"1 required decoder variable\(s\) of segmenter are not in the file: "
                                              r"dec1_norm0/moving_mean$"):
        load_weights_by_name(target, tmp_path / "partial.npz", require=["encoder", "decoder"])


def test_unreadable_weight_files(tmp_path: Path, small_unet: UNet) -> None:
    model = small_unet.segmenter
    with pytest.raises(TfSemisegError, match="weights file not found"):
        load_weights_by_name(model, tmp_path / "absent.npz", require=["encoder"])
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(TfSemisegError, match="not a weights .npz file"):
        load_weights_by_name(model, tmp_path / "junk.npz", require=["encoder"])
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(TfSemisegError, match="not a weights .npz file"):
        load_weights_by_name(model, tmp_path / "single.npy")
    with pytest.raises(ValueError, match="unknown part"):
        load_weights_by_name(model, tmp_path / "junk.npz", require=["backbone"])


def test_fused_batchnorm_matches_numpy_and_keras() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3, 5, 4, 6)) * 2 + 1).astype("float32")
    gamma, beta = rng.uniform(0.5, 2, 6).astype("float32"), rng.normal(size=6).astype("float32")
    ours = BatchNorm(momentum=0.9, epsilon=1e-5, name="bn")
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (ours, ref):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    assert [v.path for v in ours.variables] == ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        y, y_ref = ours(xt, training=True), ref(xt, training=True)
        w = tf.constant(rng.normal(size=x.shape).astype("float32"))  # a non-trivial upstream gradient
        loss, loss_ref = tf.reduce_sum(w * y), tf.reduce_sum(w * y_ref)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y.numpy(), (x - mean) / np.sqrt(var + 1e-5) * gamma + beta, rtol=1e-4, atol=1e-4)
    for a, b in [(tape.gradient(loss, xt), tape.gradient(loss_ref, xt)),
                 (tape.gradient(loss, ours.gamma), tape.gradient(loss_ref, ref.gamma)),
                 (tape.gradient(loss, ours.beta), tape.gradient(loss_ref, ref.beta))]:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    n = x.size // 6  # moving statistics: momentum 0.9, unbiased variance (PyTorch's convention)
    np.testing.assert_allclose(ours.moving_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    # inference uses the moving statistics
    mm, mv = ours.moving_mean.numpy(), ours.moving_variance.numpy()
    np.testing.assert_allclose(ours(xt, training=False).numpy(), (x - mm) / np.sqrt(mv + 1e-5) * gamma + beta,
                               rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- distribution

_MIRRORED = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tfsemiseg.config import ModelConfig
    from tfsemiseg.models import build_unet

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        unet = build_unet(ModelConfig(depth=1, base_width=4, norm="batch"), 16, 2)
    model = unet.segmenter
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 1)).astype("float32")
    x[2:] = 3.0 * x[2:] + 1.0  # the two replicas see different statistics
    batch = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(4))))

    @tf.function
    def forward(b):
        return strategy.run(lambda t: model(t, training=True), args=(b,))

    replicas = [t.numpy() for t in strategy.experimental_local_results(forward(batch))]
    assert [r.shape for r in replicas] == [(2, 16, 16, 2)] * 2
    distributed = np.concatenate(replicas)
    whole = model(x, training=True).numpy()  # one device, statistics of the whole batch
    halves = np.concatenate([model(x[:2], training=True).numpy(), model(x[2:], training=True).numpy()])
    assert np.isfinite(distributed).all()
    # synchronised: every replica normalised with the statistics of the global batch
    np.testing.assert_allclose(distributed, whole, rtol=1e-3, atol=1e-4)
    assert not np.allclose(halves, whole, rtol=1e-3, atol=1e-4)

    # weights of mirrored variables save and load by name
    import os, tempfile
    from tfsemiseg.models import load_weights_by_name, save_weights_by_name
    path = os.path.join(tempfile.mkdtemp(), "w.npz")
    save_weights_by_name(model, path)
    with strategy.scope():
        other = build_unet(ModelConfig(depth=1, base_width=4, norm="batch"), 16, 2).segmenter
    load_weights_by_name(other, path, require=["encoder", "decoder", "seg_head"])
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    print("SYNC_BN_OK")
    """
)


def test_synchronized_batchnorm_under_mirrored_strategy() -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SYNC_BN_OK" in result.stdout


def test_softmax_ensemble_outputs_the_log_of_the_mean_softmax() -> None:
    import tensorflow as tf

    from tfsemiseg.models.ensemble import SoftmaxEnsemble

    units = [build_unet(SMALL, 16, 3).segmenter for _ in range(3)]
    x = tf.random.stateless_uniform([2, 16, 16, 1], seed=[1, 2])
    ensemble = SoftmaxEnsemble(units)
    out = ensemble(x).numpy()
    logits = [u(x).numpy() for u in units]
    probs = [np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
             for z in logits]
    mean = np.mean(probs, 0)
    np.testing.assert_allclose(np.exp(out), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tf.nn.softmax(out).numpy(), mean, atol=1e-6)  # softmax gives the mean back
    assert len(ensemble.trainable_variables) == 3 * len(units[0].trainable_variables)
    with pytest.raises(ValueError, match="at least one member"):
        SoftmaxEnsemble([])
