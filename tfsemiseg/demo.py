"""The demo: a phantom dataset and a short run of the whole method, on a CPU in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tfsemiseg.config import load_config
from tfsemiseg.data.phantom import make_phantom
from tfsemiseg.training.methods import prepare_and_run
from tfsemiseg.training.strategy import make_strategy

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def run_demo(out: Path, echo: Callable[[str], None] = print) -> dict:
    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "dataset.json").is_file():
        echo(f"writing a phantom dataset to {data_dir}")
        make_phantom(data_dir, num_train=20, num_test=4)
    cfg = load_config(CONFIG).replace(**{"data.cache_dir": str(out / "cache")})
    result = prepare_and_run(cfg, data_dir, out, "global+local-block", 0.2, 0, make_strategy(cfg.train.devices), echo)
    echo(f"\nTensorBoard: tensorboard --logdir {out}")
    return result
