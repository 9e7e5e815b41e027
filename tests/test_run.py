"""One job of the app: its console summary whatever the job left."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from adaptgrad.run import NATIVE_NOISE, native_lines_filtered, summary_table

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


def test_native_start_up_lines_are_held_back_and_others_pass(capfd):
    with native_lines_filtered(NATIVE_NOISE):
        os.write(2, b"E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"


@pytest.mark.slow
def test_tensorflow_starts_without_its_native_start_up_lines():
    """A fresh process (TensorFlow starts once per process); the filter: the test above."""
    code = "from adaptgrad.run import start_tensorflow\nstart_tensorflow()\nimport tensorflow as tf\ntf.constant(1.0) + 1\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


POISONING_RULE = """
import numpy as np
from adaptgrad import AdaptationRule

class Poisons(AdaptationRule):
    def apply(self, stats, units, epoch):
        for weight in units.model.trainable_weights:  # the next epoch's loss is NaN
            weight.assign(np.full(weight.shape, np.nan, weight.dtype))
"""


def test_a_diverged_job_runs_again_from_scratch_not_from_its_checkpoint(tmp_path, monkeypatch):
    from conftest import TINY

    from adaptgrad.composition import compose
    from adaptgrad.run import run

    (tmp_path / "poisoning_rules.py").write_text(POISONING_RULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [*TINY, "rule=none", "rule._target_=poisoning_rules.Poisons"]
    first = run(compose(overrides), tmp_path / "job")
    assert first["status"] == "diverged" and first["error"]["epoch"] == 1  # epoch 0 ended finite and was checkpointed
    assert (tmp_path / "job" / "checkpoints" / "epoch-0000.ckpt").is_file()
    again = run(compose(overrides), tmp_path / "job")
    assert again["outcome"] == "ran" and again["resumed_from"] is None and again["status"] == "diverged"
