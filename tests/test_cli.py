"""The issue's bar through ``python -m adaptgrad`` in fresh processes, as a user runs it. Each
case has a faster in-process twin (named in its docstring)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import HUGE, HUGE_DATA, TINY, cli, on_path, own_model, snapshot

from adaptgrad.results import collect
from adaptgrad.results import main as results_main

pytestmark = pytest.mark.slow


def test_own_model_two_layers_gating_rule_then_skipped(tmp_path):
    """Twin: test_app.py::test_own_model_with_two_adapted_layers_runs_resumes_and_skips."""
    args = [*own_model(tmp_path), "layer=[first,second]", "rule=taylor_gate_ema", f"hydra.run.dir={tmp_path / 'out'}"]
    first = cli(*args, cwd=tmp_path, env=on_path(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    results = collect(tmp_path / "out")
    assert results.runs.status.tolist() == ["ok"] and set(results.units.layer) == {"first", "second"}
    again = cli(*args, cwd=tmp_path, env=on_path(tmp_path))
    assert again.returncode == 0 and "it already completed with this config" in again.stderr + again.stdout


def test_refused_rerun_leaves_every_file_byte_identical(tmp_path):
    """Twin: test_reliability.py::test_refused_rerun_touches_no_file_of_the_job_and_exits_nonzero."""
    out = tmp_path / "out"
    assert cli(*TINY, f"hydra.run.dir={out}", cwd=tmp_path).returncode == 0
    before = snapshot(out)
    refused = cli(*TINY, "seed=7", f"hydra.run.dir={out}", cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().endswith("nothing was overwritten") and len(refused.stderr.strip().splitlines()) == 1
    assert snapshot(out) == before


def test_misspelt_experiment_and_a_sweep_with_a_bad_point(tmp_path):
    """Twins: test_bad_input.py::test_cli_misspelt_experiment_exits_nonzero_naming_it,
    ::test_cli_sweep_with_one_bad_point_trains_nothing."""
    typo = cli("experiment=questoin", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert typo.returncode == 2 and "questoin" in typo.stderr and not (tmp_path / "out").exists()
    sweep = cli("-m", *TINY, "rule=taylor_prune", "rule.fraction=0.1,1.5", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert sweep.returncode == 2 and "fraction=1.5 is out of range" in sweep.stderr and not (tmp_path / "sweep").exists()


def test_sweep_where_one_loss_turns_inf_keeps_final_loss_numeric(tmp_path, capsys):
    """Twin: test_reliability.py::test_infinite_loss_stays_numeric_in_files_tables_and_console."""
    (tmp_path / "my_data.py").write_text(HUGE_DATA)
    sweep = tmp_path / "sweep"
    proc = cli("-m", *HUGE, "+data.scale_train=1.0,1e20", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=on_path(tmp_path))
    assert proc.returncode == 1 and "diverged: loss is NaN or inf" in proc.stderr, proc.stderr[-3000:]
    runs = collect(sweep).runs
    assert pd.api.types.is_float_dtype(runs["final.loss"]) and runs["final.loss"].max() == float("inf")
    assert json.loads((Path(sweep) / "1" / "result.json").read_text())["final"]["loss"] == float("inf")
    assert results_main([str(sweep)]) == 0
    assert "final.loss" in capsys.readouterr().out
