"""The tfsemiseg command line: `tfsemiseg COMMAND --help` (or `python cli.py COMMAND --help`
in a checkout) explains each command."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click

from tfsemiseg.config import Config, load_config
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.training.plans import METHOD_HELP

DEFAULT_FRACTIONS = (0.05, 0.1, 0.2)


def friendly_errors(fn):
    """Turn the project's errors into one clear line and exit code 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TfSemisegError as exc:
            raise click.ClickException(str(exc)) from None
        except ModuleNotFoundError as exc:
            if exc.name != "tensorflow":
                raise
            raise click.ClickException(
                "TensorFlow is not installed: pip install 'tfsemiseg[cpu]' (or 'tfsemiseg[gpu]' for NVIDIA GPUs)"
            ) from None

    return wrapper


def parse_overrides(items: tuple[str, ...]) -> dict:
    """`--set train.seed=1` -> {"train.seed": 1} (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TfSemisegError(f"--set {item!r}: expected KEY=VALUE, e.g. train.finetune_stage.epochs=40")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_with_overrides(config_path: Optional[Path], overrides: tuple[str, ...]) -> Config:
    from tfsemiseg.config import ConfigError

    cfg = load_config(config_path)
    changes = parse_overrides(overrides)
    if not changes:
        return cfg
    try:
        return cfg.replace(**changes)
    except KeyError as exc:
        raise ConfigError(f"--set: unknown config key {exc}") from None


def config_option(fn):
    fn = click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override a config value (dotted key, YAML value); repeatable.",
    )(fn)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="YAML config (see configs/); built-in defaults when omitted.",
    )(fn)


def run_root(cfg: Config, out: Optional[Path]) -> Path:
    return out if out is not None else Path(cfg.output_dir) / cfg.name


def run_layout(cfg: Config, out: Optional[Path]):
    from tfsemiseg.layout import RunLayout

    return RunLayout(run_root(cfg, out))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Label-efficient 2D medical image segmentation with semi-supervised contrastive learning."""


@cli.command()
@config_option
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Dataset folder (MSD layout, or MM-WHS with data.layout: mmwhs).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder for splits.json (default: OUTPUT_DIR/NAME from the config).")
@click.option("--fractions", type=float, multiple=True, default=DEFAULT_FRACTIONS, show_default=True, help="Labeled fractions to summarise (repeat the option).")
@friendly_errors
def prepare(config_path: Optional[Path], overrides: tuple[str, ...], data_dir: Path, out: Optional[Path], fractions: tuple[float, ...]) -> None:
    """Validate every volume, preprocess and cache its slices, write splits.json, print a summary.

    Every image/label pair is checked (readable, 3D, matching shapes, finite, non-constant,
    label values among the dataset's classes); the first bad file stops with its name.
    Re-running reuses the cache and the splits.
    """
    from tfsemiseg.data.summary import prepare_and_summarise

    cfg = load_with_overrides(config_path, overrides)
    click.echo(prepare_and_summarise(cfg, data_dir, run_root(cfg, out), fractions))


@cli.command("make-phantom")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train", "num_train", default=24, show_default=True, help="Labeled volumes.")
@click.option("--test", "num_test", default=4, show_default=True,
              help="Unlabeled volumes (imagesTs; in MM-WHS layout, images without a label).")
@click.option("--seed", default=0, show_default=True)
@click.option("--layout", type=click.Choice(["msd", "mmwhs"]), default="msd", show_default=True,
              help="MSD folders, or MM-WHS *_image/*_label pairs with MM-WHS label codes (configs/mmwhs.yaml).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@friendly_errors
def make_phantom(out: Path, num_train: int, num_test: int, seed: int, layout: str, force: bool) -> None:
    """Write a small synthetic dataset to OUT (two structures on a noisy background)."""
    from tfsemiseg.data.phantom import make_phantom as build

    if out.exists() and not force:
        raise TfSemisegError(f"{out}: already exists (use --force to replace it)")
    build(out, num_train=num_train, num_test=num_test, seed=seed, overwrite=force, layout=layout)
    click.echo(f"wrote {num_train} labeled and {num_test} unlabeled phantom volumes to {out}")


@cli.command()
@click.argument("task")
@config_option
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path), help="Folder to extract TASK into.")
@friendly_errors
def download(task: str, config_path: Optional[Path], overrides: tuple[str, ...], dest: Path) -> None:
    """Fetch an MSD task archive (URL and checksum from the config's `downloads`), verify, extract.

    Nothing is left half-extracted: the task folder appears only when complete.
    """
    from tfsemiseg.data.download import download_task

    cfg = load_with_overrides(config_path, overrides)
    if task not in cfg.downloads:
        raise TfSemisegError(f"unknown task {task!r}; the config knows: {', '.join(sorted(cfg.downloads))}")
    last = [-1]

    def progress(done: int, total: int) -> None:
        mb = done >> 20
        if mb // 50 != last[0]:
            last[0] = mb // 50
            click.echo(f"  {mb} MB" + (f" of {total >> 20} MB" if total else ""), err=True)

    path = download_task(task, cfg.downloads[task], dest, progress)
    click.echo(f"extracted {task} to {path}")


# --------------------------------------------------------------------------- training


def _split_values(convert):
    """Click callback: every value of a repeatable option split at commas and converted,
    so `--folds 0,1,2 --folds 3` gives (0, 1, 2, 3)."""
    def callback(ctx, param, values):
        out = []
        for value in values:
            for item in str(value).split(","):
                if item.strip():
                    try:
                        out.append(convert(item.strip()))
                    except ValueError:
                        raise click.BadParameter(f"{item.strip()!r} is not a valid {convert.__name__}") from None
        if not out:
            raise click.BadParameter("give at least one value")
        return tuple(out)
    return callback


def many(name: str, convert, help: str):
    """A required option taking comma-separated values, repeatable: --folds 0,1,2,3."""
    return click.option(name, multiple=True, required=True, callback=_split_values(convert), metavar="A,B,...",
                        help=help + " Comma-separated, or repeat the option.")


def run_options(fn):
    """--config --data --fraction --fold --out, shared by the training commands."""
    fn = click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: OUTPUT_DIR/NAME from the config).")(fn)
    fn = click.option("--fold", default=0, show_default=True, help="Which of the seeded random splits.")(fn)
    fn = click.option("--fraction", default=0.1, show_default=True, help="Fraction of train volumes whose labels are used.")(fn)
    fn = click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Dataset folder.")(fn)
    return config_option(fn)


def _run(config_path, overrides, data_dir, fraction, fold, out, method, until=None, part="test"):
    from tfsemiseg.layout import Cell
    from tfsemiseg.training.methods import prepare_and_run
    from tfsemiseg.training.strategy import make_strategy

    cfg = load_with_overrides(config_path, overrides)
    cell = Cell(fold, fraction, method)
    strategy = make_strategy(cfg.train.devices)
    return prepare_and_run(cfg, data_dir, run_layout(cfg, out), cell, strategy, click.echo, until, part)


def evaluate_on_option(fn):
    return click.option(
        "--evaluate-on", "part", type=click.Choice(["test", "val"]), default="test", show_default=True,
        help="Which part of the split to evaluate once trained: 'val' while choosing settings, 'test' once chosen.",
    )(fn)


@cli.command()
@run_options
@click.option("--method", required=True, help=METHOD_HELP)
@evaluate_on_option
@friendly_errors
def run(config_path, overrides, data_dir, fraction, fold, out, method, part) -> None:
    """Run every stage of one method (skipping finished stages), then evaluate on the test split.

    Stopped at any point, the same command resumes from the last checkpoint.
    """
    _run(config_path, overrides, data_dir, fraction, fold, out, method, part=part)


@cli.command("pretrain-global")
@run_options
@friendly_errors
def pretrain_global(config_path, overrides, data_dir, fraction, fold, out) -> None:
    """Stage 1: SimCLR on the encoder + h1 over every train slice (labels unused)."""
    _run(config_path, overrides, data_dir, fraction, fold, out, "global", until="global")


@cli.command("pretrain-local")
@run_options
@click.option("--mode", type=click.Choice(["stride", "block", "full"]), default="block", show_default=True)
@click.option("--init", "init", type=click.Choice(["global", "random"]), default="global", show_default=True,
              help="Start from the global stage (runs it if needed) or from random weights.")
@friendly_errors
def pretrain_local(config_path, overrides, data_dir, fraction, fold, out, mode, init) -> None:
    """Stage 2: supervised local contrast on the labeled slices (encoder + decoder + h2)."""
    method = f"global+local-{mode}" if init == "global" else f"local-{mode}"
    _run(config_path, overrides, data_dir, fraction, fold, out, method, until="local")


@cli.command()
@run_options
@click.option("--method", default="global+local-block", show_default=True, help="Whose pre-trained weights to fine-tune: " + METHOD_HELP)
@evaluate_on_option
@friendly_errors
def finetune(config_path, overrides, data_dir, fraction, fold, out, method, part) -> None:
    """Stage 3: fine-tune the U-Net on the labeled slices (runs missing earlier stages), then evaluate."""
    _run(config_path, overrides, data_dir, fraction, fold, out, method, until="finetune", part=part)


@cli.command()
@run_options
@click.option("--method", required=True, help=METHOD_HELP)
@click.option("--part", type=click.Choice(["test", "val"]), default="test", show_default=True)
@friendly_errors
def evaluate(config_path, overrides, data_dir, fraction, fold, out, method, part) -> None:
    """Evaluate a finished method: pooled Dice (paper), per-volume Dice and HD95; writes a JSON report."""
    from tfsemiseg.data.prepared import prepare_dataset
    from tfsemiseg.layout import Cell
    from tfsemiseg.training.methods import evaluate_method

    cfg = load_with_overrides(config_path, overrides)
    cell = Cell(fold, fraction, method)
    run = run_layout(cfg, out)
    evaluate_method(cfg, prepare_dataset(cfg, data_dir, run.root), run, cell, click.echo, part)


@cli.command()
@config_option
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Dataset folder.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: OUTPUT_DIR/NAME).")
@many("--methods", str, "Methods: " + METHOD_HELP)
@many("--fractions", float, "Labeled fractions, e.g. 0.05,0.1,0.2.")
@many("--folds", int, "Folds, e.g. 0,1,2,3.")
@friendly_errors
def experiment(config_path, overrides, data_dir, out, methods, fractions, folds) -> None:
    """Run a grid of (fold, method, fraction) cells; finished cells and stages are skipped.

    Each cell writes its result.json (config, split hash, seeds, timings, every metric).
    """
    from tfsemiseg.training.methods import run_grid
    from tfsemiseg.training.strategy import make_strategy

    cfg = load_with_overrides(config_path, overrides)
    run_grid(cfg, data_dir, run_layout(cfg, out), list(methods), list(fractions), list(folds),
             make_strategy(cfg.train.devices), click.echo)


@cli.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where to write (default: RESULTS_DIR).")
@friendly_errors
def report(results_dir: Path, out: Optional[Path]) -> None:
    """Table 1-style Markdown (mean ± std over folds, paper numbers beside, each method against
    random init volume by volume), CSV, and a Dice plot."""
    from tfsemiseg.reporting import write_report

    for kind, path in write_report(results_dir, out).items():
        click.echo(f"{kind}: {path}")


@cli.command()
@run_options
@many("--methods", str, "Methods to show side by side.")
@click.option("--to", "dest", type=click.Path(path_type=Path), default=None, help="Output folder (default: the run folder).")
@friendly_errors
def figures(config_path, overrides, data_dir, fraction, fold, out, methods, dest) -> None:
    """Segmentation overlays (paper Fig. 3) and t-SNE of decoder features (Fig. 4) as PNGs."""
    from tfsemiseg.data.prepared import prepare_dataset
    from tfsemiseg.figures import overlay_figure, tsne_figure
    from tfsemiseg.layout import Cell

    cfg = load_with_overrides(config_path, overrides)
    run = run_layout(cfg, out)
    data = prepare_dataset(cfg, data_dir, run.root)
    cells = [Cell(fold, fraction, m) for m in methods]
    dest = dest or run.root
    tag = f"fold{fold}_frac{fraction:g}"
    click.echo(overlay_figure(cfg, data, run, cells, dest / f"overlays_{tag}.png"))
    click.echo(tsne_figure(cfg, data, run, cells, dest / f"tsne_{tag}.png"))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path), help="Destination folder, e.g. saved_models/NAME.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset folder: evaluate the exported model on the validation and test parts of the runs' "
                   "shared fold, into metadata.json and MODEL_CARD.md.")
@click.option("--parts", type=click.Choice(["val,test", "val", "test"]), default="val,test", show_default=True,
              help="With --data: which parts to evaluate (choose on val; evaluate test once).")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@friendly_errors
def export(run_dirs: tuple[Path, ...], dest: Path, data_dir: Optional[Path], parts: str, force: bool) -> None:
    """Export a finished run (its method folder), or several as one ensemble averaging their
    softmax, as a SavedModel that segments whole volumes. Runs sliced along other axes than
    the first run's are averaged in 3D as views.

    Signature serving_default: slices float32 [N, H, W] -> probabilities [N, H, W, K],
    labels int32 [N, H, W]; metadata.json and MODEL_CARD.md beside it. Written to a
    temporary folder first.
    """
    from tfsemiseg.serving.export import export_run

    if dest.exists() and not force:
        raise TfSemisegError(f"{dest}: already exists (use --force to replace it)")
    if data_dir is None and click.get_current_context().get_parameter_source("parts").name != "DEFAULT":
        raise TfSemisegError("--parts needs --data (the dataset to evaluate the exported model on)")
    export_run(list(run_dirs), dest, overwrite=force, data_dir=data_dir, parts=parts.split(","))
    click.echo(f"exported {', '.join(map(str, run_dirs))} to {dest}")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--result", "result_path", required=True, type=click.Path(path_type=Path),
              help="The result.json of the run the model was exported from (a release keeps it).")
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path),
              help="The method folder to write, RUN/fold<k>/frac<f>/<method>.")
@click.option("--member", type=int, default=None,
              help="For an ensemble: the member to rebuild (its index in metadata.json members); "
                   "--result is then that member's result file.")
@click.option("--stage", "stage_path", type=click.Path(path_type=Path), default=None,
              help="The run's fine-tuning stage.json (a release keeps it): written as finetune/stage.json, "
                   "so that the folder can teach a self-training student.")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@friendly_errors
def unpack(model_dir: Path, result_path: Path, dest: Path, member: Optional[int], stage_path: Optional[Path],
           force: bool) -> None:
    """Rebuild a finished run's method folder from an exported model (or one member of an
    exported ensemble) and that run's result.json, e.g. to put a released model into a new
    ensemble with `export`, or to let it teach a student."""
    from tfsemiseg.serving.unpack import unpack_export

    unpack_export(model_dir, result_path, dest, overwrite=force, member=member, stage_path=stage_path)
    click.echo(f"unpacked {model_dir}{'' if member is None else f' member {member}'} to {dest}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="An exported model folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the label NIfTIs.")
@click.option("--probabilities", is_flag=True, help="Also write a 4D float probability map per input.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--spacing", type=(float, float, float), default=None, metavar="SX SY SZ",
              help="Voxel size in mm to use for every input in place of its header's (only for files whose "
                   "headers are known to be broken; zero, negative or NaN voxel sizes are refused otherwise).")
@friendly_errors
def predict(inputs, model_dir: Path, out_dir: Path, probabilities: bool, force: bool, spacing) -> None:
    """Segment NIfTI volumes (files or folders) with an exported model; one uint8 label NIfTI each."""
    from tfsemiseg.serving.predict import expand_inputs, predict_files, read_metadata

    files = expand_inputs(inputs)
    names = read_metadata(model_dir)["class_names"]
    lines: list[str] = []
    with click.progressbar(length=len(files), label="segmenting", file=sys.stderr) as bar:
        def done(pred):
            lines.append(pred.summary(names))
            bar.update(1)

        predict_files(model_dir, files, out_dir, force, probabilities, done, spacing=spacing)
    for line in lines:
        click.echo(line)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@friendly_errors
def demo(out: Path) -> None:
    """Phantom data, global + supervised local (block) + fine-tune, briefly; evaluate; print the Dice table."""
    from tfsemiseg.demo import run_demo

    run_demo(out, click.echo)


def main() -> None:
    """Entry point of the `tfsemiseg` console command."""
    cli()


if __name__ == "__main__":
    main()
