"""One job of the app: its console summary whatever the job left."""

from __future__ import annotations

import re

import pytest

from adaptgrad.run import summary_table

FAILED = {"status": "failed", "epochs": 0, "rule": "none", "error": {"type": "ValueError", "message": "no layer named 'a'"}}


def test_summary_of_a_failed_job_on_several_layers_names_them(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {cell: gru, units: 4}\ndata: {_target_: adaptgrad.data.toy}\nlayer: [a, b]\n")
    table = summary_table(FAILED, tmp_path)
    assert re.search(r"\| layer +\| a, b +\|", table) and "ValueError: no layer named 'a'" in table


def test_summary_names_a_users_model_by_its_function(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {_target_: my_models.stacked, units: 8}\n")
    assert re.search(r"\| model +\| my_models.stacked \(units=8\) +\|", summary_table(FAILED, tmp_path))


@pytest.mark.parametrize("content", [b"model: \xff\n", b"[unclosed\n"])
def test_summary_of_a_job_whose_config_cannot_be_read(tmp_path, content):
    (tmp_path / "config.yaml").write_bytes(content)
    assert re.search(r"\| model +\| \? \(\? units\) +\|", summary_table(FAILED, tmp_path))
