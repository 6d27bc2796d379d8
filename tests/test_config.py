"""Typed config: unknown keys, wrong types, value checks, YAML files in configs/, CLI errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO
from tfsemiseg.config import (
    AugmentConfig,
    Config,
    DataConfig,
    IntensityAugConfig,
    OptimConfig,
    from_dict,
    load_config,
)
from tfsemiseg.errors import ConfigError

CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs").glob("*.yml"))


def names(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, one_line: bool = True) -> str:
    path = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg  # names the file
    if one_line:  # the CLI prints it as one `Error:` line
        assert "\n" not in msg, msg
    return msg[len(f"{path}: "):]


# --------------------------------------------------------------------------- defaults and files


def test_defaults():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.data.image_size == 64 and cfg.data.slice_axis == -1 and cfg.split.ratios == (3.0, 1.0, 1.0)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path / "e.yaml", "")) == Config()


def test_yaml_values_are_read(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", """
name: exp1
data: {image_size: 32, slice_axis: 0, label_map: {500: 1}, class_names: [bg, lv]}
split: {ratios: [2, 1, 1], seed: 7}
augment: {finetune_spatial: {flip_prob: 0.25}}
train: {finetune_stage: {learning_rate: 0.001, schedule: cosine}}
"""))
    assert cfg.name == "exp1"
    assert (cfg.data.image_size, cfg.data.slice_axis, cfg.data.label_map) == (32, 0, {500: 1})
    assert cfg.split.ratios == (2.0, 1.0, 1.0) and all(isinstance(r, float) for r in cfg.split.ratios)
    assert cfg.augment.finetune_spatial.flip_prob == 0.25
    assert cfg.augment.global_spatial == Config().augment.global_spatial  # untouched sections keep defaults
    assert cfg.train.finetune_stage.learning_rate == 0.001 and cfg.train.finetune_stage.schedule == "cosine"


def test_round_trip(tmp_path):
    cfg = Config().replace(**{"data.label_map": {500: 1, 600: 2}, "data.class_names": ["a", "b", "c"],
                              "split.seed": 3, "train.global_stage.clip_norm": 1.5})
    assert from_dict(cfg.to_dict()) == cfg
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(tmp_path / "config.yaml") == cfg


def test_replace():
    cfg = Config()
    other = cfg.replace(**{"data.image_size": 32})
    assert other.data.image_size == 32 and cfg.data.image_size == 64
    assert other.split == cfg.split
    with pytest.raises(ConfigError, match="data.image_size must be >= 8"):
        cfg.replace(**{"data.image_size": 4})


@pytest.mark.skipif(not CONFIG_FILES, reason="no YAML files in configs/ yet")
@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_lists_valid_ones(tmp_path):
    msg = load_error(tmp_path, "nmae: x\n")
    assert msg == f"unknown config key(s) nmae in the top level; valid keys: {names(Config)}"


def test_unknown_nested_key_lists_valid_ones(tmp_path):
    msg = load_error(tmp_path, "data:\n  imagesize: 64\n")
    assert msg == f"unknown config key(s) data.imagesize in data; valid keys: {names(DataConfig)}"


@pytest.mark.parametrize(
    "text, key, cls",
    [
        ("augment: {global_intensity: {blur: 0.5}}", "augment.global_intensity.blur", IntensityAugConfig),
        ("train: {local_stage: {lr: 0.1}}", "train.local_stage.lr", OptimConfig),
        ("augment: {local_spatial: {}}", "augment.local_spatial", AugmentConfig),
    ],
)
def test_unknown_deep_key(tmp_path, text, key, cls):
    msg = load_error(tmp_path, text + "\n")
    where = key.rsplit(".", 1)[0]
    assert msg == f"unknown config key(s) {key} in {where}; valid keys: {names(cls)}"


# --------------------------------------------------------------------------- wrong types / values


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data: {image_size: big}", "data.image_size must be an integer, got 'big'"),
        ("data: {image_size: 64.5}", "data.image_size must be an integer, got 64.5"),
        ("data: {image_size: true}", "data.image_size must be an integer, got True"),
        ("data: {layout: nifti}", "data.layout must be one of ['msd', 'mmwhs'], got 'nifti'"),
        ("data: {use_test_images_unlabeled: 1}", "data.use_test_images_unlabeled must be true or false, got 1"),
        ("data: {label_map: {a: 1}}", "data.label_map key must be an integer, got 'a'"),
        ("data: {class_names: bg}", "data.class_names must be a list, got 'bg'"),
        ("data: [1, 2]", "data must be a mapping, got list"),
        ("split: {ratios: [3, 1]}", "split.ratios must be a list of 3 values, got [3, 1]"),
        ("name: 5", "name must be a string, got 5"),
        ("train: {global_stage: {learning_rate: fast}}", "train.global_stage.learning_rate must be a number, got 'fast'"),
        ("train: {global_loss: {temperature: true}}", "train.global_loss.temperature must be a number, got True"),
        # the older layout's loss settings are read where they live now, and checked there
        ("train: {global_stage: {temperature: true}}", "train.global_loss.temperature must be a number, got True"),
    ],
)
def test_wrong_types(tmp_path, text, expected):
    assert load_error(tmp_path, text + "\n") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data: {image_size: 4}", "data.image_size must be >= 8"),
        ("data: {slice_axis: 3}", "data.slice_axis must be one of 0, 1, 2 (or -3..-1)"),
        ("data: {layout: mmwhs}", "data.label_map is required for the mmwhs layout"),
        ("data: {label_map: {1: 5}, class_names: [a, b]}", "data.label_map maps to classes [5] outside 0..1"),
        ("split: {num_folds: 0}", "split.num_folds must be >= 1"),
        ("train: {global_stage: {epochs: -1}}", "train.global_stage.epochs must be >= 0"),
        ("model: {norm: group, base_width: 12}", "model.groups must divide model.base_width"),
        ("downloads: {X: {url: u, checksum: 'md5:12'}}", "downloads.X.checksum must be 'md5:HEX' or 'sha256:HEX'"),
    ],
)
def test_bad_values(tmp_path, text, expected):
    assert load_error(tmp_path, text + "\n") == expected


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    assert load_error(tmp_path, "data: {image_size: [\n", one_line=False).startswith("not valid YAML")
    assert load_error(tmp_path, "- a\n- b\n") == "the top level must be a mapping of sections"


# Regressions of bugs once found in tfsemiseg/config.py.


def test_quoted_number_is_a_type_error(tmp_path):
    load_error(tmp_path, "data: {image_size: '64'}\n")


def test_augment_error_names_full_key(tmp_path):
    msg = load_error(tmp_path, "augment: {global_intensity: {brightness_prob: 2.0}}\n")
    assert msg.startswith("augment.global_intensity.brightness_prob")


def test_partial_section_keeps_stage_defaults(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", """
augment: {global_spatial: {flip_prob: 0.3}}
train: {finetune_stage: {learning_rate: 0.001}}
"""))
    default = Config()
    # only the given keys change; the stage's own defaults (not the class defaults) stay
    assert cfg.augment.global_spatial == dataclasses.replace(default.augment.global_spatial, flip_prob=0.3)
    assert cfg.train.finetune_stage == dataclasses.replace(default.train.finetune_stage, learning_rate=0.001)


def test_invalid_yaml_error_is_one_line(tmp_path):
    load_error(tmp_path, "data: {image_size: [\n")


def test_download_without_url_is_a_config_error(tmp_path):
    load_error(tmp_path, "downloads: {X: {checksum: 'md5:00000000000000000000000000000000'}}\n")


# --------------------------------------------------------------------------- through the CLI


def test_cli_bad_config_key_subprocess(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", "data:\n  imagesize: 64\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "prepare", "--config", str(bad), "--data", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"Error: {bad}: unknown config key(s) data.imagesize in data; valid keys: {names(DataConfig)}"]


@pytest.mark.parametrize("command", [["download", "Task04_Hippocampus", "--to", "OUT"], ["prepare", "--data", "OUT"]])
def test_cli_bad_config_type(tmp_path, command):
    from tfsemiseg.cli import cli

    bad = write_yaml(tmp_path / "bad.yaml", "split: {seed: many}\n")
    args = [a.replace("OUT", str(tmp_path / "x")) for a in command] + ["--config", str(bad)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert res.output.strip() == f"Error: {bad}: split.seed must be an integer, got 'many'"
    assert not (tmp_path / "x").exists()


def test_yaml_dump_of_defaults_loads(tmp_path):
    """The defaults written out as YAML (as a user would start a config) load back unchanged."""
    path = write_yaml(tmp_path / "d.yaml", yaml.safe_dump(Config().to_dict()))
    assert load_config(path) == Config()


# --------------------------------------------------------------------------- older layout


def _older_dump(cfg: Config) -> dict:
    """cfg.to_dict() as older versions wrote it (in result.json and metadata.json): every
    stage section held temperature, mode, stride and block_size."""
    d = cfg.to_dict()
    g, l_ = d["train"].pop("global_loss"), d["train"].pop("local_loss")
    for stage in ("global_stage", "local_stage", "finetune_stage"):
        d["train"][stage].update(temperature=0.1, mode="stride", stride=4, block_size=16)
    d["train"]["global_stage"]["temperature"] = g["temperature"]
    d["train"]["local_stage"].update(temperature=l_["temperature"], mode="block", stride=l_["stride"],
                                     block_size=l_["block_size"])
    return d


def test_older_complete_dumps_are_read_into_the_loss_sections():
    cfg = Config().replace(**{"train.global_loss.temperature": 0.3, "train.local_loss.temperature": 0.05,
                              "train.local_loss.block_size": 8})
    old = _older_dump(cfg)
    assert "global_loss" not in old["train"] and old["train"]["local_stage"]["mode"] == "block"
    assert from_dict(old) == cfg


def test_older_keys_alone_move_and_mode_is_dropped(tmp_path):
    cfg = from_dict({"train": {"local_stage": {"epochs": 3, "stride": 2}, "global_stage": {"temperature": 0.2}}})
    assert cfg.train.local_loss.stride == 2 and cfg.train.global_loss.temperature == 0.2
    assert cfg.train.local_stage.epochs == 3
    # the older tiny.yaml: mode (always overridden by the method) without stride
    old_tiny = {"local_stage": {"epochs": 2, "temperature": 0.1, "mode": "block", "block_size": 8}}
    assert from_dict({"train": old_tiny}).train.local_loss.block_size == 8
    assert load_error(tmp_path, "train: {local_stage: {stride: 2}, local_loss: 3}\n") == (
        "train.local_loss must be a mapping, got int")
    msg = load_error(tmp_path, "train: {local_stage: {temperature: 0.2}, local_loss: {temperature: 0.1}}\n")
    assert msg == ("train.local_stage.temperature (0.2) is now train.local_loss.temperature (0.1): "
                   "give it once, as train.local_loss.temperature")


def test_replace_reads_older_dotted_keys():
    cfg = Config().replace(**{"train.local_stage.temperature": 0.05, "train.global_stage.temperature": 0.3,
                              "train.local_stage.block_size": 8})
    assert (cfg.train.local_loss.temperature, cfg.train.global_loss.temperature) == (0.05, 0.3)
    assert cfg.train.local_loss.block_size == 8
    with pytest.raises(ConfigError, match="train.local_stage.mode: the local loss's mode is the method's"):
        Config().replace(**{"train.local_stage.mode": "block"})


def test_select_best_is_refused_for_the_local_stage(tmp_path):
    with pytest.raises(ConfigError, match="train.local_stage.select_best must be false: the local stage has no validation score"):
        Config().replace(**{"train.local_stage.select_best": True})
    assert Config().train.global_stage.select_best is False and Config().train.finetune_stage.select_best is True
