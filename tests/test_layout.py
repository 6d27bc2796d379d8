"""The run layout: where every file of a run and of an exported model lives."""

from pathlib import Path

import pytest

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.layout import Cell, RunLayout, finished_cell_files, model_files, result_name, run_root_of, stage_files
from tfsemiseg.training.plans import METHOD_HELP, METHODS, plan_until


def test_cell_folders_and_files(tmp_path):
    run = RunLayout(tmp_path)
    cell = Cell(1, 0.05, "global+local(block)")  # the paper's spelling is accepted
    assert cell.method == "global+local-block" and str(cell) == "fold 1, global+local-block, 5%"
    assert run.cell_dir(cell) == tmp_path / "fold1" / "frac0.05" / "global+local-block"
    assert run.stage_dir(cell, "local") == run.cell_dir(cell) / "local"
    # the label-free global stage belongs to the fold, shared by every fraction and method
    assert run.stage_dir(cell, "global") == run.stage_dir(Cell(1, 0.2, "global"), "global") == tmp_path / "fold1" / "global"
    assert run.weights(cell) == run.cell_dir(cell) / "finetune" / "weights.npz"
    assert run.stage_done(cell, "local") == run.cell_dir(cell) / "local" / "stage.json"
    assert run.result(cell) == run.cell_dir(cell) / "result.json"
    assert run.result(cell, "val") == run.cell_dir(cell) / "result_val.json" and result_name("val") == "result_val.json"
    assert run.splits == tmp_path / "splits.json"
    assert run_root_of(run.cell_dir(cell)) == tmp_path.resolve()
    assert Cell(0, 1, "random").fraction == 1.0 and RunLayout(tmp_path).cell_dir(Cell(0, 1, "random")).name == "random"
    with pytest.raises(TfSemisegError, match="unknown method 'globall'; choose one of: random, global"):
        Cell(0, 0.1, "globall")


def test_results_are_found_sorted(tmp_path):
    run = RunLayout(tmp_path)
    for cell in (Cell(1, 0.1, "random"), Cell(0, 0.2, "global"), Cell(0, 0.05, "random")):
        run.result(cell).parent.mkdir(parents=True)
        run.result(cell).write_text("{}")
    run.result(Cell(0, 0.05, "random"), "val").write_text("{}")  # not a test result
    assert [p.relative_to(tmp_path).as_posix() for p in run.results()] == [
        "fold0/frac0.05/random/result.json", "fold0/frac0.2/global/result.json", "fold1/frac0.1/random/result.json"]


def test_an_exported_cell_uses_its_test_result_else_its_validation_result(tmp_path):
    run = RunLayout(tmp_path)
    cell = Cell(0, 0.05, "self-training")
    folder = run.cell_dir(cell)
    folder.mkdir(parents=True)
    run.result(cell, "val").write_text("{}")  # evaluated on validation only, while choosing
    assert finished_cell_files(folder) == (folder / "result_val.json", folder / "finetune" / "weights.npz")
    run.result(cell).write_text("{}")  # then on test, once
    assert finished_cell_files(folder)[0] == folder / "result.json"


def test_stage_and_model_files():
    s = stage_files(Path("/r/s"))
    assert (s.done.name, s.weights.name, s.log.name, s.checkpoints.name, s.best.name, s.tensorboard.name) == (
        "stage.json", "weights.npz", "train.log", "checkpoints", "best", "tb")
    m = model_files(Path("/m"))
    assert (m.saved_model.name, m.metadata.name, m.model_card.name) == ("saved_model.pb", "metadata.json", "MODEL_CARD.md")


def test_plans_name_their_stages_and_start_points():
    assert list(METHODS)[:2] == ["random", "global"] and all(m in METHOD_HELP for m in METHODS)
    for method, plans in METHODS.items():
        names = [p.name for p in plans]
        assert names[-1] == "finetune" and len(set(names)) == len(names), method
        for p in plans:  # a stage starts from an earlier stage of its own plan, or from random weights
            assert p.init_from is None or p.init_from in names[: names.index(p.name)], method
    assert [p.name for p in plan_until("global+local-stride", "local")] == ["global", "local"]
    assert METHODS["local-block"][0].local_mode == "block" and METHODS["tcsm"][0].variant == "tcsm"
    with pytest.raises(TfSemisegError, match="method random has no local stage"):
        plan_until("random", "local")
