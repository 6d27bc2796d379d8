"""Evaluation on whole volumes: pooled Dice, native-resolution Dice and HD95, the report."""

import json

import keras
import numpy as np

from tfsemiseg.data.preprocess import SliceVolume, resize_labels
from tfsemiseg.evaluation import evaluate_volumes, format_report
from tfsemiseg.inference import native_labels, predict_probabilities


def oracle_model(size: int, num_classes: int) -> keras.Model:
    """Logits that recover class c from an image whose intensity is c / (K - 1)."""
    x = keras.Input((size, size, 1))
    centres = np.linspace(0, 1, num_classes).astype("float32")
    logits = keras.layers.Lambda(lambda t: -1000.0 * (t - centres) ** 2)(x)
    return keras.Model(x, logits)


def make_volume(case_id: str, native: np.ndarray, size: int, k: int) -> SliceVolume:
    label = resize_labels(native, size)
    return SliceVolume(case_id, label.astype("float32") / (k - 1), label, native, native.shape, (2.0, 1.0, 1.0), np.eye(4))


def test_perfect_model_scores_one_and_report_is_json():
    rng = np.random.default_rng(0)
    k, size = 3, 32
    vols = []
    for i in range(2):
        native = np.zeros((6, 40, 28), np.uint8)
        native[:, 10:25, 5:15] = 1
        native[:, 25:32, 5:15] = 2
        native[: rng.integers(1, 3)] = 0  # some empty slices
        vols.append(make_volume(f"c{i}", native, size, k))
    report = evaluate_volumes(oracle_model(size, k), vols, ["bg", "a", "b"])
    assert report["pooled_dice"]["per_class"] == [1.0, 1.0]
    # native resolution: probabilities resized back; boundaries may move by < 1 model pixel
    assert min(report["volume_dice"]["mean"]) > 0.9
    assert report["hd95_mm"]["mean_over_classes"] < 2.0
    assert [c["case"] for c in report["cases"]] == ["c0", "c1"]
    json.dumps(report)  # JSON-ready: no NaN objects, no numpy types
    table = format_report(report)
    assert "Dice, pooled (paper)" in table and "1.0000" in table


def test_missed_class_counts_as_zero_dice_and_undefined_hd95():
    k, size = 3, 16
    native = np.zeros((4, 16, 16), np.uint8)
    native[:, 4:10, 4:10] = 2
    vol = make_volume("v", native, size, k)
    vol.image[:] = 0  # the model then predicts background everywhere
    report = evaluate_volumes(oracle_model(size, k), [vol], ["bg", "a", "b"])
    assert report["pooled_dice"]["per_class"][0] is None  # class 1 absent from both: excluded
    assert report["pooled_dice"]["per_class"][1] == 0.0
    assert report["cases"][0]["hd95_status"] == ["absent", "missing_prediction"]
    assert report["hd95_mm"]["status_counts"][1]["missing_prediction"] == 1
    assert "n/a" in format_report(report)


def test_native_labels_resizes_probabilities_then_argmax():
    probs = np.zeros((1, 4, 4, 2), np.float32)
    probs[..., 0] = 1
    probs[0, :2, :2] = [0, 1]
    out = native_labels(probs, (1, 8, 8))
    assert out.shape == (1, 8, 8)
    # bilinear blend is 0.5 exactly on the boundary rows/cols; argmax ties go to class 0
    assert (out[0, :3, :3] == 1).all() and (out[0, 5:, :] == 0).all() and (out[0, :, 5:] == 0).all()


def _conv_model(size: int, k: int, seed: int = 0) -> keras.Model:
    """A small random conv net: not mirror-symmetric, so mirroring changes its output."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((size, size, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    return keras.Model(x, keras.layers.Conv2D(k, 5, padding="same")(h))


def test_mirroring_is_the_mean_of_flipped_predictions_in_numpy():

    size, k = 12, 3
    model = _conv_model(size, k)
    images = np.random.default_rng(1).random((5, size, size), np.float32)

    def softmax_np(im):  # numpy softmax of the model's logits for [S, H, W] images
        z = np.asarray(model(im[..., None]), np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    expected = np.mean([np.flip(softmax_np(np.flip(images, ax)), ax) if ax else softmax_np(images)
                        for ax in ((), (1,), (2,), (1, 2))], axis=0)
    got = predict_probabilities(model, images, batch_size=2, mirror=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    plain = predict_probabilities(model, images, mirror=False)
    assert np.abs(plain - expected).max() > 1e-3  # mirroring did change the prediction
    # the mirrored prediction of a flipped slice is the flipped mirrored prediction
    flipped = predict_probabilities(model, np.flip(images, 2).copy(), mirror=True)
    np.testing.assert_allclose(flipped, np.flip(got, 2), atol=1e-6)


def test_evaluate_volumes_passes_mirroring_through():
    k, size = 3, 16
    model = _conv_model(size, k, seed=2)
    native = np.zeros((4, 16, 16), np.uint8)
    native[:, 3:9, 2:7] = 1
    native[:, 9:13, 2:7] = 2
    vol = make_volume("v", native, size, k)
    vol.image[:] = np.random.default_rng(3).random(vol.image.shape)
    from tfsemiseg.metrics.dice import PooledDice

    scores = []
    for mirror in (False, True):
        metric = PooledDice(k)
        metric.update(predict_probabilities(model, vol.image, mirror=mirror).argmax(-1), vol.label)
        report = evaluate_volumes(model, [vol], ["bg", "a", "b"], mirror=mirror)
        scores.append(report["pooled_dice"]["per_class"])
        assert scores[-1] == [float(v) for v in metric.result()["per_class"]]
    assert scores[0] != scores[1]  # the two settings predict differently here


def test_pooled_validator_equals_pooled_dice_of_per_volume_predictions():
    from tfsemiseg.evaluation import PooledValidator
    from tfsemiseg.metrics.dice import PooledDice

    k, size = 3, 16
    model = _conv_model(size, k, seed=4)
    rng = np.random.default_rng(5)
    vols = []
    for i, depth in enumerate((3, 7, 5)):  # 15 slices: batches of 4 leave a partial last batch
        native = np.zeros((depth, 16, 16), np.uint8)
        native[:, 3:9, 2:7] = 1
        native[:, 9:13, 2:12] = 2
        vol = make_volume(f"v{i}", native, size, k)
        vol.image[:] = rng.random(vol.image.shape)
        vols.append(vol)
    metric = PooledDice(k)
    for vol in vols:
        metric.update(predict_probabilities(model, vol.image).argmax(-1), vol.label)
    expected = metric.result()
    validator = PooledValidator(model, vols, k, batch_size=4)
    got = validator()
    for key in ("intersection", "pred_size", "label_size"):
        assert got[key] == expected[key]
    assert got["mean"] == expected["mean"] and 0 < got["mean"] < 1
    image, label, pred = validator.sample()
    assert image.shape == label.shape == pred.shape and label.any()
    # the validator follows the model's current weights
    model.set_weights([w * 0 for w in model.get_weights()])  # every logit 0: argmax is background
    assert validator()["pred_size"] == [0, 0]


def test_view_permutation_reslices_a_volume_along_any_axis():
    from tfsemiseg.data.preprocess import to_slices
    from tfsemiseg.inference import view_permutation

    volume = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    for a in range(3):
        for b in (0, 1, 2, -1):
            got = np.transpose(to_slices(volume, a), view_permutation(a, b))
            np.testing.assert_array_equal(got, np.moveaxis(volume, b, 0), err_msg=f"{a} -> {b}")
