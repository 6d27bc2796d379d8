"""The demo: phantom data and a short run of the whole method, on a CPU in minutes.

Global contrast, supervised local contrast (block), fine-tuning on 20% of the train
volumes; evaluation on the test split; SavedModel export; prediction of one volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tfsemiseg.config import load_config
from tfsemiseg.data.phantom import make_phantom
from tfsemiseg.serving.export import export_run
from tfsemiseg.serving.predict import predict_files
from tfsemiseg.layout import Cell, RunLayout
from tfsemiseg.training.methods import prepare_and_run
from tfsemiseg.training.strategy import make_strategy

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
CELL = Cell(fold=0, fraction=0.2, method="global+local-block")


def run_demo(out: Path, echo: Callable[[str], None] = print) -> dict:
    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "dataset.json").is_file():
        echo(f"writing a phantom dataset to {data_dir}")
        make_phantom(data_dir, num_train=20, num_test=4)
    cfg = load_config(CONFIG).replace(**{"data.cache_dir": str(out / "cache")})
    run = RunLayout(out)
    result = prepare_and_run(cfg, data_dir, run, CELL, make_strategy(cfg.train.devices), echo)
    model_dir = export_run(run.cell_dir(CELL), out / "saved_model", overwrite=True)
    echo(f"\nexported the SavedModel to {model_dir}")
    volume = sorted((data_dir / "imagesTs").glob("*.nii.gz"))[0]
    for pred in predict_files(model_dir, [volume], out / "predictions", force=True):
        echo("predicted " + pred.summary(result["class_names"]))
    echo(f"\nTensorBoard: tensorboard --logdir {out}")
    return result
