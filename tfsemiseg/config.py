"""Typed configuration: dataclasses, loaded from YAML and validated on load.

Every section is a frozen dataclass. `load_config(path)` reads a YAML file, rejects
unknown keys (listing the valid ones), checks every value's type, and runs each
section's `validate()`. `Config.to_dict()` is the inverse, used to write the
resolved config beside each run and into exported models.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from tfsemiseg.errors import ConfigError, TfSemisegError


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """Where the volumes come from and how they become 2D slices."""

    layout: Literal["msd", "mmwhs"] = "msd"
    image_size: int = 64  # paper: 64 for Hippocampus, 160 for MM-WHS
    slice_axis: int = -1  # reference code: slices along the last axis
    channel: int = 0  # modality index for 4D (multi-modal) MSD images
    # raw label value -> class index; values not listed map to 0 (MM-WHS needs one)
    label_map: Optional[dict[int, int]] = None
    # class names, index = class; MSD reads them from dataset.json when left empty
    class_names: Optional[list[str]] = None
    # add MSD imagesTs (no labels) to the global (unlabeled) stage
    use_test_images_unlabeled: bool = False
    cache_dir: str = ".cache/tfsemiseg"
    # voxel size in mm [sx, sy, sz] for every file, in place of the headers' (only for datasets
    # whose headers are known to be broken: zero, negative or NaN voxel sizes are refused otherwise)
    spacing: Optional[tuple[float, float, float]] = None

    def validate(self) -> None:
        _check(self.image_size >= 8, "data.image_size", "must be >= 8")
        if self.spacing is not None:
            _check(len(self.spacing) == 3 and all(math.isfinite(s) and s > 0 for s in self.spacing),
                   "data.spacing", "must be three finite voxel sizes > 0 in mm, or null")
        _check(self.slice_axis in (-3, -2, -1, 0, 1, 2), "data.slice_axis", "must be one of 0, 1, 2 (or -3..-1)")
        _check(self.channel >= 0, "data.channel", "must be >= 0")
        if self.layout == "mmwhs":
            _check(bool(self.label_map), "data.label_map", "is required for the mmwhs layout")
            _check(bool(self.class_names), "data.class_names", "is required for the mmwhs layout")
        if self.label_map and self.class_names:
            bad = sorted(v for v in self.label_map.values() if not 0 <= v < len(self.class_names))
            _check(not bad, "data.label_map", f"maps to classes {bad} outside 0..{len(self.class_names) - 1}")


@dataclass(frozen=True)
class SplitConfig:
    """Volume-level train/val/test splits ("folds" are independent seeded splits)."""

    ratios: tuple[float, float, float] = (3.0, 1.0, 1.0)  # paper: 3:1:1 Hippocampus, 2:1:1 MM-WHS
    seed: int = 12345
    num_folds: int = 4  # paper: 4 independent random splits

    def validate(self) -> None:
        _check(all(r >= 0 for r in self.ratios) and self.ratios[0] > 0, "split.ratios", "must be >= 0 with train > 0")
        _check(self.num_folds >= 1, "split.num_folds", "must be >= 1")


@dataclass(frozen=True)
class IntensityAugConfig:
    """Intensity augmentation; each transform fires with its own probability.

    Images are in [0, 1] after per-volume min-max normalisation.
    """

    brightness_prob: float = 0.5  # reference code: p=0.5 (additive by a bug; ours is multiplicative)
    brightness_range: tuple[float, float] = (0.7, 1.3)
    contrast_prob: float = 0.0
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_prob: float = 0.5  # reference code: gamma (0.5, 2), p=0.5
    gamma_range: tuple[float, float] = (0.5, 2.0)
    noise_prob: float = 0.5  # reference code: Gaussian noise std U(0, 0.1), p=0.5
    noise_std_max: float = 0.1
    blur_prob: float = 0.0  # SimCLR / paper text mention Gaussian blur
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)

    def validate(self) -> None:
        for name in ("brightness", "contrast", "gamma", "noise", "blur"):
            p = getattr(self, f"{name}_prob")
            _check(0.0 <= p <= 1.0, f"{name}_prob", "must be in [0, 1]")
        for name in ("brightness_range", "contrast_range", "gamma_range", "blur_sigma_range"):
            lo, hi = getattr(self, name)
            _check(0 < lo <= hi, name, "must be (low, high) with 0 < low <= high")
        _check(self.noise_std_max >= 0, "noise_std_max", "must be >= 0")


@dataclass(frozen=True)
class SpatialAugConfig:
    """Spatial augmentation, one random affine (+ optional elastic) per sample.

    The same transform is applied to image (bilinear) and label (nearest).
    """

    flip_prob: float = 0.5  # fine-tune reference code: mirror p=0.5
    rotation_prob: float = 0.5
    rotation_max: float = 0.1  # radians; fine-tune reference code: +-0.1 rad
    scale_prob: float = 0.5
    scale_range: tuple[float, float] = (0.85, 1.25)  # reference fine-tune 0.5-1.9, global 0.7-1.25
    crop_prob: float = 0.0  # random resized crop (SimCLR)
    crop_area_range: tuple[float, float] = (0.5, 1.0)
    elastic_prob: float = 0.0  # reference code uses elastic; optional here
    elastic_alpha: float = 4.0  # max displacement in pixels (at model resolution)
    elastic_sigma: float = 4.0  # smoothing of the displacement field, pixels

    def validate(self) -> None:
        for name in ("flip", "rotation", "scale", "crop", "elastic"):
            p = getattr(self, f"{name}_prob")
            _check(0.0 <= p <= 1.0, f"{name}_prob", "must be in [0, 1]")
        for name in ("scale_range", "crop_area_range"):
            lo, hi = getattr(self, name)
            _check(0 < lo <= hi, name, "must be (low, high) with 0 < low <= high")
        _check(self.crop_area_range[1] <= 1.0, "crop_area_range", "must not exceed 1")
        _check(self.rotation_max >= 0 and self.elastic_alpha >= 0 and self.elastic_sigma > 0,
               "rotation_max/elastic_alpha/elastic_sigma", "must be non-negative (sigma > 0)")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation per stage.

    global: two independent views (intensity + spatial); local: two views with intensity
    only so pixels still correspond; finetune: intensity + spatial on image and label.
    """

    global_intensity: IntensityAugConfig = field(default_factory=lambda: IntensityAugConfig(blur_prob=0.5))
    global_spatial: SpatialAugConfig = field(
        default_factory=lambda: SpatialAugConfig(
            rotation_max=3.14159,  # reference code: full circle, p=0.5
            scale_range=(0.7, 1.25),  # reference code: 0.7-1.25, p=0.5
            crop_prob=0.8,
            crop_area_range=(0.4, 1.0),
        )
    )
    local_intensity: IntensityAugConfig = field(default_factory=IntensityAugConfig)
    finetune_intensity: IntensityAugConfig = field(
        default_factory=lambda: IntensityAugConfig(brightness_prob=0.3, gamma_prob=0.3, noise_prob=0.3)
    )
    finetune_spatial: SpatialAugConfig = field(default_factory=SpatialAugConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            try:
                getattr(self, f.name).validate()
            except ConfigError as exc:
                raise ConfigError(f"{f.name}.{exc}") from None


@dataclass(frozen=True)
class ModelConfig:
    """The 2D U-Net and its contrastive heads."""

    depth: int = 3  # paper: three blocks each way; reference code: 4
    base_width: int = 16  # 16 on CPU configs; 64 at paper scale
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    groups: int = 8  # for norm=group
    activation: Literal["relu", "leaky_relu"] = "leaky_relu"  # reference code: LeakyReLU(0.01)
    upsample: Literal["transpose", "bilinear"] = "transpose"  # reference code: transposed conv
    global_head_dims: tuple[int, int] = (256, 128)  # h1: GAP -> Dense -> ReLU -> Dense
    local_head_dims: tuple[int, int] = (64, 64)  # h2: 1x1 conv -> ReLU -> 1x1 conv

    def validate(self) -> None:
        _check(1 <= self.depth <= 6, "model.depth", "must be in 1..6")
        _check(self.base_width >= 1, "model.base_width", "must be >= 1")
        if self.norm == "group":
            _check(self.base_width % self.groups == 0, "model.groups", "must divide model.base_width")


@dataclass(frozen=True)
class OptimConfig:
    """How one stage is optimised (Adam), and when it checkpoints and validates."""

    epochs: int = 10
    batch_size: int = 16  # global batch (all replicas); contrastive stages: images per batch
    learning_rate: float = 1e-4
    weight_decay: float = 0.0  # decoupled (AdamW) when > 0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    clip_norm: Optional[float] = None
    checkpoint_every_steps: int = 200
    validate_every_epochs: int = 1  # stages that validate (fine-tuning; the global stage with select_best)
    validate_from_epoch: int = 0  # no validation (nor selection) before this epoch; the last epoch always validates
    # keep the checkpoint with the best validation score rather than the last: fine-tuning by
    # validation Dice (the default), the global stage by its NT-Xent loss on two augmented views
    # of the validation slices (the reference code's choice; off by default); no local stage validates
    select_best: bool = True

    def validate(self) -> None:
        _check(self.epochs >= 0, "epochs", "must be >= 0")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.learning_rate > 0, "learning_rate", "must be > 0")
        _check(self.validate_every_epochs >= 1 and self.validate_from_epoch >= 0,
               "validate_every_epochs/validate_from_epoch", "must be >= 1 / >= 0")
        _check(self.clip_norm is None or self.clip_norm > 0, "clip_norm", "must be > 0 or null")


@dataclass(frozen=True)
class GlobalLossConfig:
    """The global stage's NT-Xent loss."""

    temperature: float = 0.5

    def validate(self) -> None:
        _check(self.temperature > 0, "temperature", "must be > 0")


@dataclass(frozen=True)
class LocalLossConfig:
    """The local stage's contrastive loss. Its mode (stride, block, full, or the
    self-supervised baseline) is the method's: global+local-block, local-stride, ..."""

    temperature: float = 0.1
    stride: int = 4  # stride mode: every stride-th pixel; paper: 4
    block_size: int = 16  # block mode: tiles of block_size x block_size; paper: 16 (reference code default 32)

    def validate(self) -> None:
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(self.stride >= 1 and self.block_size >= 2, "stride/block_size", "must be >= 1 / >= 2")


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the non-contrastive baselines (fine-tune stage settings apply too)."""

    mixup_alpha: float = 1.0  # reference code: lambda ~ Beta(1, 1)
    tcsm_ema_decay: float = 0.99  # mean teacher (Tarvainen & Valpola; TCSM); update n uses min(1 - 1/(n+1), this)
    tcsm_consistency_weight: float = 1.0  # maximum weight of the consistency loss (short schedules: see docs/results.md)
    tcsm_rampup_epochs: float = 40.0  # sigmoid ramp-up exp(-5 (1 - t)^2) over these epochs
    tcsm_noise_std: float = 0.05  # Gaussian noise on student and teacher inputs
    tcsm_unlabeled_batch_size: int = 8  # unlabeled slices per step beside the labeled batch
    tcsm_rotate90: bool = True  # TCSM's transforms: flips and multiples of 90 degrees; false: flips only
    self_positions: int = 13  # global+local(self): 13 (or 9) points per map

    def validate(self) -> None:
        _check(self.mixup_alpha > 0, "mixup_alpha", "must be > 0")
        _check(0 <= self.tcsm_ema_decay < 1, "tcsm_ema_decay", "must be in [0, 1)")
        _check(self.tcsm_consistency_weight >= 0 and self.tcsm_rampup_epochs >= 0 and self.tcsm_noise_std >= 0,
               "tcsm_*", "must be >= 0")
        _check(self.tcsm_unlabeled_batch_size >= 1, "tcsm_unlabeled_batch_size", "must be >= 1")
        _check(self.self_positions in (9, 13), "self_positions", "must be 9 or 13")


@dataclass(frozen=True)
class SelfTrainingConfig:
    """The `self-training` method (pseudo-labels; an extension, not in the paper's table).

    Finished fine-tuned cells of the same fold, split and fraction (the teachers: methods of
    the student's run folder, or cell folders of other runs) label every unlabeled train
    slice with the argmax of their mean softmax; a student trained from random weights sees,
    per step, one batch of labeled slices and one of pseudo-labeled ones, both with the
    fine-tuning augmentation. An epoch is one pass over the labeled slices.
    """

    # methods of the student's run folder (run first if missing), or folders of finished cells
    # of any run (a path, e.g. a student of an earlier round), of the same fold and fraction
    teachers: list[str] = field(default_factory=lambda: ["random"])
    mirror: bool = True  # the teachers predict with test-time mirroring
    pseudo_batch_size: int = 8  # pseudo-labeled slices per step beside the labeled batch
    pseudo_weight: float = 1.0  # weight of their segmentation loss

    def validate(self) -> None:
        from tfsemiseg.training.plans import METHODS, canonical_method, is_cell_folder  # no TensorFlow

        _check(len(self.teachers) >= 1, "teachers", "must name at least one method or cell folder")
        for name in self.teachers:
            if is_cell_folder(name):  # checked when the student runs: the folder may not exist yet
                continue
            try:
                method = canonical_method(name)
            except TfSemisegError:
                raise ConfigError(f"teachers: unknown method {name!r}; choose from {', '.join(METHODS)}, or give "
                                  "a finished cell's folder as a path holding a '/' (e.g. ./runs/x)") from None
            _check(method != "self-training", "teachers", "cannot include self-training itself")
        _check(self.pseudo_batch_size >= 1, "pseudo_batch_size", "must be >= 1")
        _check(self.pseudo_weight >= 0, "pseudo_weight", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Stages and the runtime they share."""

    global_stage: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=70, batch_size=64, learning_rate=1e-4, select_best=False)
    )
    local_stage: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=60, batch_size=4, learning_rate=1e-4, select_best=False)
    )
    finetune_stage: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=120, batch_size=8, learning_rate=5e-4)
    )
    global_loss: GlobalLossConfig = field(default_factory=GlobalLossConfig)
    local_loss: LocalLossConfig = field(default_factory=LocalLossConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    devices: int = 0  # 0: all visible GPUs (or one CPU); N>1 on CPU: N logical CPU devices
    # auto: mixed_bfloat16 where the CPU (AMX-BF16, AVX512-BF16) or every GPU (compute capability
    # 8.0+) has native bfloat16, else float32; or float32 / mixed_float16 (GPUs, loss scaling) /
    # mixed_bfloat16 by hand. Losses, softmax and batch-norm statistics stay float32.
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    deterministic: bool = False  # fixed tf.data order (CPU kernels are already deterministic), for tests
    seed: int = 0

    def validate(self) -> None:
        for name in ("global_stage", "local_stage", "finetune_stage", "global_loss", "local_loss", "baselines",
                     "self_training"):
            try:
                getattr(self, name).validate()
            except ConfigError as exc:
                raise ConfigError(f"train.{name}.{exc}") from None
        _check(self.devices >= 0, "train.devices", "must be >= 0")
        _check(not self.local_stage.select_best, "train.local_stage.select_best",
               "must be false: the local stage has no validation score")


@dataclass(frozen=True)
class EvalConfig:
    """How evaluation and exported models predict a slice."""

    # Test-time mirroring (nnU-Net's default): the softmax averaged over the slice and its
    # flips along each in-plane axis and both (4 passes). Validation during training stays
    # a single pass.
    mirror: bool = False

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class DownloadSource:
    """Where `download TASK` fetches an archive from, and its checksum ("md5:HEX" or "sha256:HEX")."""

    url: str
    checksum: str = ""

    def validate(self) -> None:
        algo, _, hexdigest = self.checksum.partition(":")
        _check(algo in ("md5", "sha256") and len(hexdigest) in (32, 64), "checksum", "must be 'md5:HEX' or 'sha256:HEX'")


def _default_downloads() -> dict[str, DownloadSource]:
    # MSD archives as mirrored for MONAI's DecathlonDataset (same URLs and md5 sums).
    return {
        "Task04_Hippocampus": DownloadSource(
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
            checksum="md5:9d24dba78a72977dbd1d2e110310f31b",
        ),
        "Task02_Heart": DownloadSource(
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task02_Heart.tar",
            checksum="md5:06ee59366e1e5124267b774dbd654057",
        ),
    }


@dataclass(frozen=True)
class Config:
    """The whole configuration of a run."""

    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    downloads: dict[str, DownloadSource] = field(default_factory=_default_downloads)

    def validate(self) -> None:
        for section in ("data", "split", "augment", "model", "train", "evaluation"):
            try:
                getattr(self, section).validate()
            except ConfigError as exc:
                msg = str(exc)
                raise ConfigError(msg if msg.startswith(section) else f"{section}.{msg}") from None
        for task, source in self.downloads.items():
            try:
                source.validate()
            except ConfigError as exc:
                raise ConfigError(f"downloads.{task}.{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> "Config":
        """A copy with dotted-path overrides, e.g. replace(**{"train.seed": 1})."""
        data = self.to_dict()
        for dotted, value in changes.items():
            node = data
            *parents, leaf = _current_key(dotted).split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return from_dict(data)


# --------------------------------------------------------------------------- loading


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {problem}")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, base: Any = None) -> Any:
    """Check `value` against the annotation `tp`; return it in canonical form.

    `base` is the default this value replaces: a partial mapping for a dataclass field
    keeps the other values of that default (e.g. a stage's own defaults).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, base)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".", base if isinstance(base, tp) else None)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {_coerce_key(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _coerce_key(k: Any, tp: Any, key: str) -> Any:
    """Mapping keys: YAML may give integer keys as strings ('500': 1) in JSON-like files."""
    if tp is int and isinstance(k, str) and k.lstrip("-").isdigit():
        return int(k)
    return _coerce(k, tp, f"{key} key")


def _build(cls: type, values: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)} in {where}; "
            f"valid keys: {', '.join(names)}"
        )
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values and base is None]
    if missing:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} is missing required key(s): {', '.join(missing)}")
    if base is None and not required:
        base = cls()  # nested sections then start from this class's own defaults
    kwargs = {k: _coerce(v, hints[k], prefix + k, getattr(base, k, None)) for k, v in values.items()}
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


# Older configs kept the loss settings in every train.*_stage section: where each lives now.
_MOVED_STAGE_KEYS = {
    "global_stage": {"temperature": "global_loss"},
    "local_stage": {"temperature": "local_loss", "stride": "local_loss", "block_size": "local_loss"},
}
_OLD_STAGE_KEYS = ("temperature", "mode", "stride", "block_size")


def _current_key(dotted: str) -> str:
    """A dotted key of the older layout as it is now: train.local_stage.temperature ->
    train.local_loss.temperature (`mode` stays, and is refused: it is the method's now)."""
    parts = dotted.split(".")
    if len(parts) == 3 and parts[0] == "train":
        target = _MOVED_STAGE_KEYS.get(parts[1], {}).get(parts[2])
        if target is not None:
            return f"train.{target}.{parts[2]}"
        if parts[2] == "mode":
            raise ConfigError(f"{dotted}: the local loss's mode is the method's (--method global+local-stride, "
                              "local-block, ...), not a setting")
    return dotted


def _migrate(values: dict[str, Any]) -> dict[str, Any]:
    """Read a config of the older layout (the config in an older result.json or exported
    metadata.json, or an older YAML file): each loss setting moves from its stage section
    to train.global_loss / train.local_loss; `mode` (which the method always overrode) and
    the settings no stage used are dropped. A setting given in both places with two values
    is an error."""
    train = values.get("train")
    if not isinstance(train, dict):
        return values
    train = dict(train)
    for stage in ("global_stage", "local_stage", "finetune_stage"):
        section = train.get(stage)
        if not isinstance(section, dict) or not set(section) & set(_OLD_STAGE_KEYS):
            continue
        section = dict(section)
        for key in _OLD_STAGE_KEYS:
            if key not in section:
                continue
            value = section.pop(key)
            target = _MOVED_STAGE_KEYS.get(stage, {}).get(key)
            if target is None:
                continue
            if not isinstance(train.get(target) or {}, dict):
                raise ConfigError(f"train.{target} must be a mapping, got {type(train[target]).__name__}")
            loss = dict(train.get(target) or {})
            if key in loss and loss[key] != value:
                raise ConfigError(f"train.{stage}.{key} ({value!r}) is now train.{target}.{key} ({loss[key]!r}): "
                                  f"give it once, as train.{target}.{key}")
            loss[key] = value
            train[target] = loss
        train[stage] = section
    return {**values, "train": train}


def from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from plain data (as read from YAML; older layouts are
    read too, see `_migrate`)."""
    cfg = _build(Config, _migrate(values or {}))
    cfg.validate()
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Read a YAML config file; None gives the built-in defaults.

    Raises ConfigError naming the file and the offending key.
    """
    if path is None:
        return from_dict({})
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{path}: not valid YAML{at} ({problem})") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return from_dict(values or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
