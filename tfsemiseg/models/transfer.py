"""Move weights between stages by variable path, strictly.

A stage saves every variable of the model it trained (trainable and not, e.g. the
BatchNormalization moving statistics) as a `.npz` keyed by `variable.path`
(`enc0_conv0/kernel`, ...). The next stage loads every variable its own model has under
the same path, and must name the parts it cannot do without:

    save_weights_by_name(unet.global_model, "global.npz")
    report = load_weights_by_name(unet2.local_model, "global.npz", require=["encoder"])
    print(report.summary())  # loaded 40 (encoder), dropped 4 (h1), kept fresh 40 (decoder 36, h2 4)

Unlike `load_state_dict(strict=False)` in the reference code, which silently loads
nothing when names differ, a required variable that is missing from the file, or any
variable whose shape differs, raises `TfSemisegError` naming the file and the variables,
and then no variable of the model has been changed.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.io_utils import atomic_path
from tfsemiseg.config import Config
from tfsemiseg.models.unet import PARTS, SEGMENTER_PARTS, UNet, build_unet, variable_part

_MAX_LISTED = 8  # variable paths quoted in an error message


@dataclass
class TransferReport:
    """What `load_weights_by_name` did, as variable paths.

    loaded:  in the file and in the model, copied into the model.
    dropped: in the file only (e.g. the previous stage's head), ignored on purpose.
    fresh:   in the model only (e.g. the new head), left at their initial values.
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """E.g. "loaded 38 (encoder 20, decoder 18), dropped 4 (h2), kept fresh 2 (seg_head)".

        Per-part counts are given when there is more than one part.
        """
        return ", ".join(
            _count(label, paths)
            for label, paths in (("loaded", self.loaded), ("dropped", self.dropped), ("kept fresh", self.fresh))
        )


def save_weights_by_name(model: keras.Model, path: str | Path) -> None:
    """Write every variable of `model` to the `.npz` file `path`, keyed by `variable.path`.

    The file is written to a temporary file beside `path` and renamed onto it, so a
    crash never leaves a truncated file behind.
    """
    arrays: dict[str, np.ndarray] = {}
    for variable in model.variables:
        if variable.path in arrays:
            raise TfSemisegError(f"{path}: cannot save {model.name}: two variables share the path {variable.path!r}")
        arrays[variable.path] = np.asarray(variable.numpy())
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no ".npz"
        np.savez(f, **arrays)


def load_weights_by_name(model: keras.Model, path: str | Path, require: Sequence[str] = ()) -> TransferReport:
    """Copy the variables of the `.npz` file `path` into the `model` variables of the same path.

    `require` names parts (see `tfsemiseg.models.unet.PARTS`, e.g. ["encoder", "decoder"])
    of which every variable the model has must be in the file. Raises TfSemisegError,
    before changing anything, when one is missing or when any variable's shape differs
    between file and model.
    """
    unknown = sorted(set(require) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown} in require; expected some of {', '.join(PARTS)}")
    arrays = _read_npz(Path(path))

    report = TransferReport(path=str(path))
    pairs, mismatched = [], []
    for variable in model.variables:
        array = arrays.get(variable.path)
        if array is None:
            report.fresh.append(variable.path)
        elif tuple(array.shape) != tuple(variable.shape):
            mismatched.append(f"{variable.path} (file {tuple(array.shape)}, model {tuple(variable.shape)})")
        else:
            pairs.append((variable, array))
            report.loaded.append(variable.path)
    missing = [p for p in report.fresh if variable_part(p) in require]

    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} variable(s) differ in shape: {_listing(mismatched)}")
    if missing:
        parts = "/".join(sorted({variable_part(p) for p in missing}))
        problems.append(
            f"{len(missing)} required {parts} variable(s) of {model.name} are not in the file: {_listing(missing)}"
        )
        if not any(variable_part(p) in require for p in report.loaded):
            problems.append(f"the file has {_listing(sorted(arrays))} (different layer names?)")
    if problems:
        raise TfSemisegError(f"{path}: cannot load weights into {model.name}: " + "; ".join(problems))

    for variable, array in pairs:
        variable.assign(array.astype(variable.dtype))
    model_paths = {v.path for v in model.variables}
    report.dropped = [p for p in arrays if p not in model_paths]
    return report


# --------------------------------------------------------------------------- helpers


def load_segmenter(cfg: Config, weights: str | Path, num_classes: int) -> UNet:
    """The U-Net of `cfg`, built in float32 whatever the training precision, with the
    fine-tuned weights in `weights` (encoder, decoder and segmentation head required).
    Evaluation, figures and export all load a trained model through this."""
    from tfsemiseg.training.precision import precision_policy

    with precision_policy("float32"):
        unet = build_unet(cfg.model, cfg.data.image_size, num_classes)
    load_weights_by_name(unet.segmenter, weights, require=SEGMENTER_PARTS)
    return unet


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive")
        with data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise TfSemisegError(f"{path}: weights file not found") from None
    except OSError as exc:
        raise TfSemisegError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None
    except (ValueError, zipfile.BadZipFile) as exc:
        raise TfSemisegError(f"{path}: not a weights .npz file ({exc})") from None


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _count(label: str, paths: Sequence[str]) -> str:
    if not paths:
        return f"{label} 0"
    counts = Counter(variable_part(p) for p in paths)
    if len(counts) == 1:  # "dropped 4 (h2)"
        return f"{label} {len(paths)} ({next(iter(counts))})"
    order = [*PARTS, *sorted(set(counts) - set(PARTS))]  # "loaded 38 (encoder 20, decoder 18)"
    return f"{label} {len(paths)} (" + ", ".join(f"{part} {counts[part]}" for part in order if part in counts) + ")"
