"""Atomic writes: all or nothing, with the usual file modes."""

from __future__ import annotations

import os
import stat

import pytest

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.io_utils import atomic_dir, atomic_path, atomic_write_json, read_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_file_gets_the_umask_mode_and_no_temp_is_left(tmp_path, umask_022):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_mode_and_overwrite(tmp_path, umask_022):
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "f").write_text("1")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    with pytest.raises(TfSemisegError, match="already exists"):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "f").write_text("2")
    assert (tmp_path / "model" / "f").read_text() == "1"
    with atomic_dir(tmp_path / "model", overwrite=True) as tmp:
        (tmp / "f").write_text("3")
    assert (tmp_path / "model" / "f").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
