"""adaptgrad.atomic: a write killed half-way leaves the previous complete file (or none), never a torn one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from adaptgrad.atomic import write_frame, write_json, write_text


def torn_write(path: Path, data: str, *args, **kwargs) -> int:
    """A write the process is killed in: half the text reaches the file, then the interrupt."""
    Path.write_bytes(path, data[: len(data) // 2].encode())
    raise KeyboardInterrupt


def test_a_killed_write_keeps_the_previous_version_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_json(path, {"status": "running", "epochs": 0})
    with monkeypatch.context() as patched:
        patched.setattr(Path, "write_text", torn_write)
        with pytest.raises(KeyboardInterrupt):
            write_json(path, {"status": "ok", "epochs": 5, "final": {"loss": 0.25}})
    assert json.loads(path.read_text()) == {"status": "running", "epochs": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_killed_first_write_leaves_no_file(tmp_path, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(Path, "write_text", torn_write)
        with pytest.raises(KeyboardInterrupt):
            write_text(tmp_path / "config.yaml", "seed: 0\n" * 100)
    assert list(tmp_path.iterdir()) == []


def test_tables_are_written_by_their_suffix_and_read_back(tmp_path):
    frame = pd.DataFrame({"epoch": [0, 1], "loss": [0.5, float("inf")]})
    for name in ("history.csv", "units.parquet"):
        write_frame(tmp_path / name, frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "history.csv"), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "units.parquet"), frame)
    with pytest.raises(ValueError, match=r"use \.csv or \.parquet"):
        write_frame(tmp_path / "history.txt", frame)
