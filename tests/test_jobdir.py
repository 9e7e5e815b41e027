"""The job folder: what an earlier attempt left decides whether a job runs, is skipped or is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptgrad import jobdir
from adaptgrad.jobdir import plan, read_result, refusal

CONFIG = "seed: 0\n"


def completed(directory: Path, config: str = CONFIG, result: str = '{"status": "ok"}') -> Path:
    """A dir as a job that completed leaves it (contents stand in for the real tables)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / jobdir.CONFIG).write_text(config)
    (directory / jobdir.RESULT).write_text(result)
    for name in (*jobdir.TABLES, jobdir.MODEL):
        (directory / name).write_text("epoch\n0\n")
    return directory


def test_a_completed_job_is_skipped_and_another_config_refused(tmp_path):
    directory = completed(tmp_path / "job")
    assert plan(directory, CONFIG) == "skip"
    assert plan(directory, "seed: 1\n") == "refuse"
    assert plan(tmp_path / "new", CONFIG) == "run"


@pytest.mark.parametrize("left", [jobdir.RESULT, jobdir.HISTORY, jobdir.MODEL, jobdir.CHECKPOINTS])
def test_a_job_s_files_without_their_config_are_never_overwritten(tmp_path, left):
    # a finished run whose config.yaml is gone: no other config may run into it
    directory = completed(tmp_path / "job")
    (directory / jobdir.CHECKPOINTS).mkdir()
    for name in jobdir.JOB_FILES:
        if name != left and (directory / name).is_file():
            (directory / name).unlink()
    if left != jobdir.CHECKPOINTS:
        (directory / jobdir.CHECKPOINTS).rmdir()
    assert plan(directory, "seed: 7\n") == "refuse"
    assert f"holds a job's files ({left}) but no config.yaml" in refusal(directory)


def test_a_dir_with_only_hydra_records_runs(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(CONFIG)  # Hydra wrote, the job had not yet
    assert plan(tmp_path, CONFIG) == "run"


@pytest.mark.parametrize("gone", [jobdir.HISTORY, jobdir.UNITS, jobdir.ACTIONS, jobdir.MODEL])
def test_a_completed_job_with_a_missing_or_emptied_file_runs_again(tmp_path, gone):
    missing, emptied = completed(tmp_path / "missing"), completed(tmp_path / "emptied")
    (missing / gone).unlink()
    (emptied / gone).write_text("")
    assert plan(missing, CONFIG) == "run" and plan(emptied, CONFIG) == "run"


def test_a_model_keras_could_not_save_is_not_awaited(tmp_path):
    directory = completed(tmp_path / "job", result='{"status": "ok", "model_saved": false}')
    (directory / jobdir.MODEL).unlink()
    assert plan(directory, CONFIG) == "skip"


@pytest.mark.parametrize("text", ["[1, 2]", '"ok"', "null", "{not json", "\udcff"])
def test_a_result_json_that_is_not_an_object_reads_as_unknown(tmp_path, text):
    (tmp_path / jobdir.RESULT).write_bytes(text.encode("utf-8", "surrogateescape"))
    assert read_result(tmp_path) == {}
    (tmp_path / jobdir.CONFIG).write_text(CONFIG)
    assert plan(tmp_path, CONFIG) == "run"  # its status is unknown: run (resume) again


def test_a_config_yaml_that_is_not_utf8_is_another_config(tmp_path):
    completed(tmp_path)
    (tmp_path / jobdir.CONFIG).write_bytes(b"seed: \xff\n")
    assert plan(tmp_path, CONFIG) == "refuse"


def test_no_result_json_reads_as_none(tmp_path):
    assert read_result(tmp_path) is None and read_result(tmp_path / "absent") is None


def test_the_file_names_are_the_documented_ones():
    # README ("what a job writes") and adaptgrad.recorder's docstring name them; users' scripts read them
    assert (jobdir.CONFIG, jobdir.RESULT, jobdir.HISTORY, jobdir.UNITS, jobdir.ACTIONS) == (
        "config.yaml",
        "result.json",
        "history.csv",
        "units.parquet",
        "actions.csv",
    )
    assert (jobdir.ORACLE, jobdir.MODEL, jobdir.CHECKPOINTS, jobdir.TENSORBOARD) == (
        "oracle.parquet",
        "model.keras",
        "checkpoints",
        "tb",
    )
