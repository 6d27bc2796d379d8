"""Self-training: pseudo-labels against numpy, the settings' checks, and the method end to end."""

from __future__ import annotations

import hashlib
import json
import shutil

import keras
import numpy as np
import pytest

from conftest import REPO
from tfsemiseg.errors import ConfigError, TfSemisegError


def _tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    return keras.Model(x, keras.layers.Conv2D(3, 3, padding="same")(h))


def _numpy_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_pseudo_labels_are_the_argmax_of_the_teachers_mean_mirrored_softmax():
    from tfsemiseg.training.self_training import pseudo_labels

    teachers = [_tiny_model(1), _tiny_model(2)]
    images = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    mean = np.zeros((5, 8, 8, 3))
    for t in teachers:
        for axes in [(), (1,), (2,), (1, 2)]:  # flip, predict, flip back
            flipped = np.flip(images, axes) if axes else images
            probs = _numpy_softmax(np.asarray(t(flipped[..., None], training=False), np.float64))
            mean += (np.flip(probs, axes) if axes else probs) / 8
    got = pseudo_labels(teachers, images, mirror=True)
    assert got.dtype == np.uint8 and got.shape == (5, 8, 8)
    margin = np.sort(mean, -1)[..., -1] - np.sort(mean, -1)[..., -2]
    sure = margin > 1e-5  # float32 ties aside
    np.testing.assert_array_equal(got[sure], mean.argmax(-1)[sure])
    assert sure.mean() > 0.95
    single = pseudo_labels(teachers[:1], images, mirror=False)
    ref = _numpy_softmax(np.asarray(teachers[0](images[..., None], training=False), np.float64)).argmax(-1)
    assert (single == ref).mean() > 0.99


@pytest.mark.parametrize("teachers, message", [
    (["self-training"], "self-training itself"),
    (["randm"], "unknown method 'randm'"),
    ([], "at least one method"),
    (["global", "rndm"], "unknown method 'rndm'"),
])
def test_bad_teachers_are_refused_with_the_key(teachers, message):
    from tfsemiseg.config import load_config

    with pytest.raises(ConfigError, match=message) as info:
        load_config(REPO / "configs" / "tiny.yaml").replace(**{"train.self_training.teachers": teachers})
    assert "train.self_training.teachers" in str(info.value)


def test_self_training_runs_its_teacher_first_reuses_it_and_refuses_a_changed_one(tmp_path, monkeypatch):
    from tfsemiseg.config import load_config
    from tfsemiseg.data.phantom import make_phantom
    from tfsemiseg.data.prepared import prepare_dataset
    from tfsemiseg.layout import Cell, RunLayout
    from tfsemiseg.training.methods import run_method
    from tfsemiseg.training.strategy import make_strategy

    data_dir = make_phantom(tmp_path / "data", num_train=8, num_test=1, shape=(20, 24, 12), seed=1)
    cfg = load_config(REPO / "configs" / "tiny.yaml").replace(**{
        "data.cache_dir": str(tmp_path / "cache"), "data.image_size": 16,
        "model.depth": 2, "model.base_width": 4,
        "train.finetune_stage.epochs": 1, "train.finetune_stage.batch_size": 4,
        "train.finetune_stage.validate_every_epochs": 1, "train.self_training.pseudo_batch_size": 2,
    })
    run = RunLayout(tmp_path / "run")
    data = prepare_dataset(cfg, data_dir, run.root)
    strategy, quiet = make_strategy(0), (lambda s: None)
    cell = Cell(0, 0.5, "self-training")
    result = run_method(cfg, data, run, cell, strategy, quiet, part="val")
    assert result["method"] == "self-training" and result["part"] == "val"
    teacher = run.weights(Cell(0, 0.5, "random"), "finetune")
    assert teacher.is_file() and not run.result(Cell(0, 0.5, "random")).exists()  # trained, not evaluated
    info = json.loads(run.stage_done(cell, "finetune").read_text())
    assert info["teacher_weights_sha256"] == {"random": hashlib.sha256(teacher.read_bytes()).hexdigest()}
    assert info["config"]["train"]["self_training"]["teachers"] == ["random"]
    run_method(cfg, data, run, cell, strategy, quiet, part=None)  # finished: reused
    # a student with another seed and width learns from the finished teacher as it is
    shutil.rmtree(run.cell_dir(cell))
    before = teacher.read_bytes()
    other = cfg.replace(**{"train.seed": 1, "model.base_width": 2})
    run_method(other, data, run, cell, strategy, quiet, part=None)
    assert teacher.read_bytes() == before
    assert json.loads(run.stage_done(cell, "finetune").read_text())["config"]["model"]["base_width"] == 2
    # a second round in another run folder: that student is the teacher, named by its folder,
    # and the extra unlabeled images change the split's digest but not its labels
    student = run.cell_dir(cell)
    round2 = cfg.replace(**{"train.self_training.teachers": [str(student)], "data.use_test_images_unlabeled": True})
    run2 = RunLayout(tmp_path / "run2")
    data2 = prepare_dataset(round2, data_dir, run2.root)
    assert data2.split(0).digest() != data.split(0).digest()
    run_method(round2, data2, run2, cell, strategy, quiet, part=None)
    done2 = run2.stage_done(cell, "finetune")
    info = json.loads(done2.read_text())
    weights_file = run.weights(cell, "finetune")
    assert info["teacher_weights_sha256"] == {str(student): hashlib.sha256(weights_file.read_bytes()).hexdigest()}
    assert not (run2.cell_dir(Cell(0, 0.5, "random"))).exists()  # nothing run for a folder teacher
    # the same folder spelled otherwise (trailing '/', relative to the working directory) is the same teacher
    before2 = done2.read_bytes()
    monkeypatch.chdir(tmp_path)
    for spelling in (f"{student}/", f"./{student.relative_to(tmp_path)}"):
        said = []
        run_method(round2.replace(**{"train.self_training.teachers": [spelling]}), data2, run2, cell, strategy,
                   said.append, part=None)
        assert any("already finished" in line for line in said) and done2.read_bytes() == before2, spelling
    # a folder teacher changed since makes its student stale
    saved = weights_file.read_bytes()
    changed = dict(np.load(weights_file))
    changed[sorted(changed)[0]] += 1.0
    np.savez(weights_file, **changed)
    with pytest.raises(TfSemisegError, match="different configuration"):
        run_method(round2, data2, run2, cell, strategy, quiet, part=None)
    weights_file.write_bytes(saved)
    shutil.rmtree(run2.cell_dir(cell))
    # refused, naming the folder: not a finished cell, teachers of other labels, a stage.json
    # that does not say, the student's own cell, and one teacher named twice
    bad = tmp_path / "bad"
    for change, message in ((None, "not a finished cell"), ({"fraction": 1.0}, "same fold and labeled fraction"),
                            ({"fold": 1}, "same fold and labeled fraction"),
                            ({"labels_split_digest": "0" * 16}, "another split"),
                            ({"fraction": None}, "records no fraction"), ({"config": None}, "records no config")):
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(student, bad)
        for result in bad.glob("result*.json"):
            result.unlink()  # the config then comes from stage.json alone
        done = bad / "finetune" / "stage.json"
        if change is None:
            done.unlink()
        else:
            done.write_text(json.dumps({k: v for k, v in {**json.loads(done.read_text()), **change}.items()
                                        if v is not None}))
        with pytest.raises(TfSemisegError, match=message) as refused:
            run_method(round2.replace(**{"train.self_training.teachers": [str(bad)]}), data2, run2, cell, strategy,
                       quiet, part=None)
        assert str(bad) in str(refused.value)
    for teachers, message in (([str(run2.cell_dir(cell))], "cannot teach itself"),
                              ([str(student), f"{student}/"], "twice")):
        with pytest.raises(TfSemisegError, match=message):
            run_method(round2.replace(**{"train.self_training.teachers": teachers}), data2, run2, cell, strategy,
                       quiet, part=None)
    assert not run2.stage_done(cell, "finetune").exists()
    # a teacher named by method but trained on another split is refused too
    random_done = run.stage_done(Cell(0, 0.5, "random"), "finetune")
    kept = random_done.read_bytes()
    recorded = json.loads(kept)
    older = {k: v for k, v in recorded.items() if k != "labels_split_digest"}  # as versions before it wrote
    for info in ({**recorded, "labels_split_digest": "0" * 16}, {**older, "split_digest": "0" * 16}):
        random_done.write_text(json.dumps(info))
        with pytest.raises(TfSemisegError, match="another split"):
            run_method(other, data, run, cell, strategy, quiet, part=None)
    random_done.write_text(json.dumps(older))  # an older stage.json of the same split is accepted
    run_method(other, data, run, cell, strategy, quiet, part=None)
    random_done.write_bytes(kept)
    # a teacher changed since makes the student stale
    weights = dict(np.load(teacher))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1.0
    np.savez(teacher, **weights)
    with pytest.raises(TfSemisegError, match="different configuration"):
        run_method(other, data, run, cell, strategy, quiet, part=None)


def test_a_teacher_along_another_axis_labels_the_students_slices_in_3d(tmp_path):
    """A teacher sliced along axis 0 labels a student's axis-2 slices: its probabilities on its
    own slices, resized to the native slices, re-sliced with numpy and resized to the model size."""
    import tensorflow as tf

    from tfsemiseg.config import load_config
    from tfsemiseg.data.phantom import make_phantom
    from tfsemiseg.data.prepared import prepare_dataset, training_arrays
    from tfsemiseg.data.preprocess import preprocess_case
    from tfsemiseg.models.transfer import save_weights_by_name
    from tfsemiseg.models.unet import build_unet
    from tfsemiseg.training.self_training import Teacher, pseudo_labeled_arrays

    data_dir = make_phantom(tmp_path / "data", num_train=6, num_test=0, shape=(14, 20, 10), seed=2)
    cfg = load_config(REPO / "configs" / "tiny.yaml").replace(**{
        "data.cache_dir": str(tmp_path / "cache"), "data.image_size": 16, "data.slice_axis": 2,
        "model.depth": 2, "model.base_width": 4, "train.self_training.mirror": False})
    data = prepare_dataset(cfg, data_dir, tmp_path / "run")
    arrays = training_arrays(data, data.split(0), 0.5)
    teacher_cfg = cfg.replace(**{"data.slice_axis": 0})
    keras.utils.set_random_seed(4)
    unet = build_unet(teacher_cfg.model, 16, 3)
    save_weights_by_name(unet.segmenter, tmp_path / "teacher.npz")
    images, labels = pseudo_labeled_arrays(cfg, data, arrays, [Teacher(tmp_path / "teacher.npz", "", teacher_cfg)])

    cases = {c.case_id: c for c in data.index.labeled}
    expected = []
    for cid in arrays.unlabeled_cases:
        along0 = preprocess_case(cases[cid], teacher_cfg.data, 3)  # [X, 16, 16] slices along axis 0
        probs = _numpy_softmax(np.asarray(unet.segmenter(along0.image[..., None], training=False), np.float64))
        native = tf.image.resize(probs, along0.native_shape[1:], method="bilinear").numpy()  # [X, Y, Z, K]
        student_order = np.moveaxis(native, 2, 0)  # [Z, X, Y, K]: the slices along axis 2
        expected.append(tf.image.resize(student_order, (16, 16), method="bilinear").numpy())
    expected = np.concatenate(expected, 0)
    assert labels.shape == images.shape == expected.shape[:3] and labels.dtype == np.uint8
    top = np.sort(expected, -1)
    sure = top[..., -1] - top[..., -2] > 1e-4
    assert sure.mean() > 0.9 and len(np.unique(expected.argmax(-1))) > 1  # a teacher that says something
    np.testing.assert_array_equal(labels[sure], expected.argmax(-1)[sure])
    # the axis-0 volumes came from (and stay in) their own cache folder beside the student's
    assert sorted(p.name for p in next((tmp_path / "cache").iterdir()).iterdir()) == ["axis0", "axis2"]
