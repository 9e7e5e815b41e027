"""The ``adaptgrad`` command in this process: ``app.main()`` with ``sys.argv`` set, as the console
script calls it. Fast twins of the ``slow`` tests that start ``python -m adaptgrad`` in a fresh
process (those run in CI: ``pytest -m slow``)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cases import representative
from conftest import FAILING_RULES, cli
from omegaconf import OmegaConf

from adaptgrad.app import LAUNCHERS
from adaptgrad.results import collect
from adaptgrad.stats import SUM_FIELDS


def test_user_rule_through_own_config_folder(adaptgrad_cli, tiny, tmp_path, monkeypatch):
    (tmp_path / "gate_first_rules.py").write_text(
        "from adaptgrad import AdaptationRule\n"
        "class GateFirst(AdaptationRule, name='gate_first'):\n"
        "    def apply(self, stats, units, epoch):\n"
        "        units.gate([0])\n"
    )
    (tmp_path / "my_conf" / "rule").mkdir(parents=True)
    (tmp_path / "my_conf" / "rule" / "gate_first.yaml").write_text("_target_: gate_first_rules.GateFirst\nmin_active: 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    done = adaptgrad_cli(
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "rule=gate_first", *tiny, f"hydra.run.dir={tmp_path / 'out'}"
    )
    assert done.code == 0, done.err[-3000:]
    assert re.search(r"\| status +\| ok +\|", done.out), done.out
    actions = collect(tmp_path / "out").actions
    assert actions[["epoch", "rule", "action", "unit"]].values.tolist() == [[0, "gate_first", "gate", 0]]


def test_sweep_with_a_failing_arm_reports_and_resumes(adaptgrad_cli, tiny, tmp_path, monkeypatch):
    """The basic launcher runs the jobs in this process; the joblib twin, with a diverging arm
    too, is ``test_reliability.py::test_sweep_with_a_failing_and_a_diverging_arm`` (a diverged
    job in this process: ``test_bad_input.py::test_nan_gradients_skip_the_rule_and_end_the_job_as_diverged``)."""
    (tmp_path / "sweep_rules.py").write_text(FAILING_RULES)
    conf = tmp_path / "my_conf" / "rule"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("_target_: sweep_rules.Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "rule=none,broken",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        *tiny,
        f"hydra.sweep.dir={sweep}",
    ]

    first = adaptgrad_cli(*args)
    assert first.code == 1, first.err[-3000:]
    assert "2 ran, 0 resumed, 0 skipped (completed earlier), 1 did not complete" in first.out
    assert "failed: this rule is broken on purpose" in first.err
    runs = collect(sweep).runs.set_index("rule._target_")
    assert runs.status.value_counts().to_dict() == {"ok": 1, "failed": 1}
    assert (
        runs.loc["sweep_rules.Broken", "error.epoch"] == 1 and runs.loc["sweep_rules.Broken", "epochs"] == 2
    )  # it trained epoch 1
    ok_files = {
        p: p.read_bytes() for p in sweep.rglob("*.csv") if json.loads((p.parent / "result.json").read_text())["status"] == "ok"
    }

    second = adaptgrad_cli(*args)
    assert second.code == 1
    assert "1 ran, 0 resumed, 1 skipped (completed earlier), 1 did not complete" in second.out
    assert all(p.read_bytes() == content for p, content in ok_files.items())


def test_optuna_search_minimises_the_returned_validation_loss(adaptgrad_cli, tiny, tmp_path):
    sweep = tmp_path / "search"
    done = adaptgrad_cli("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *tiny, f"hydra.sweep.dir={sweep}")
    assert done.code == 0, done.err[-3000:]
    runs = collect(sweep).runs
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert len(runs) == 2 and (runs.status == "ok").all()
    assert best.best_value == pytest.approx(runs["final.val_loss"].min())


BAD_INPUTS = {
    "hydra.run.dir=/etc/hostname/out": "NotADirectoryError: [Errno 20] Not a directory: '/etc/hostname/out'",
    "trainer.epochs==3": "Error parsing override 'trainer.epochs==3'",
    "model=transformer": "Could not find 'model/transformer'",
    "layer=nope": "model 'minimal_rnn_model' has no layer named 'nope'",
}


@pytest.mark.parametrize("override", sorted(BAD_INPUTS))
def test_bad_inputs_print_one_screen_and_exit_nonzero(adaptgrad_cli, tiny, tmp_path, override):
    run_dir = [] if "run.dir" in override else [f"hydra.run.dir={tmp_path / 'out'}"]
    done = adaptgrad_cli(*tiny, override, *run_dir)
    assert done.code != 0
    assert BAD_INPUTS[override] in done.err + done.out, done.err[-2000:]
    assert len(done.err.splitlines()) <= 25, done.err


@pytest.mark.slow
@pytest.mark.parametrize("override", sorted(BAD_INPUTS))
def test_bad_inputs_in_a_fresh_process(tiny, tmp_path, override):
    """The same through ``python -m adaptgrad``: nothing more on the screen (TensorFlow's and
    absl's start-up lines included)."""
    run_dir = [] if "run.dir" in override else [f"hydra.run.dir={tmp_path / 'out'}"]
    proc = cli(*tiny, override, *run_dir, cwd=tmp_path)
    assert proc.returncode != 0
    assert BAD_INPUTS[override] in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert len(proc.stderr.splitlines()) <= 25, proc.stderr


def test_the_wheel_ships_the_configs_and_presets(tmp_path):
    """What ``pip install .`` puts in site-packages holds ``conf/`` and ``experiments/`` inside the
    package; the slow twin installs it and runs it from another directory."""
    from hatchling.builders.wheel import WheelBuilder

    root = Path(__file__).resolve().parent.parent
    (wheel,) = WheelBuilder(str(root)).build(directory=str(tmp_path), versions=["standard"])
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"adaptgrad/conf/config.yaml", "adaptgrad/conf/trainer/default.yaml", "adaptgrad/experiments/question.yaml"} <= names
    assert {"adaptgrad/app.py", "adaptgrad/_keras.py"} <= names and not any(name.startswith("tests/") for name in names)


def test_a_launcher_that_is_not_installed_stops_before_hydra_starts(adaptgrad_cli, monkeypatch):
    monkeypatch.setitem(LAUNCHERS, "ray", ("hydra_plugins.no_such_launcher", "ray"))
    done = adaptgrad_cli("-m", "hydra/launcher=ray", "seed=0,1")
    assert done.code == 2 and done.out == ""
    assert (
        done.err
        == "error: hydra/launcher=ray needs the ray launcher plugin, which is not installed.\nInstall it with:  pip install 'adaptgrad[ray]'\n"
    )


def test_oracle_runs_record_the_oracle_beside_every_criterion(adaptgrad_cli, tiny, tmp_path):
    """``oracle=1``: every epoch, before the rule acts, oracle.parquet gets the true loss change of
    gating each unit beside each criterion; ``through_time=auto`` gives the gating rule through-time
    statistics; ``stats=all`` (the default) captures every sum; ``--criteria`` judges them."""
    from adaptgrad.results.cli import main as results_main

    out = tmp_path / "out"
    done = adaptgrad_cli("rule=taylor_prune", "oracle=1", *tiny, f"hydra.run.dir={out}")
    assert done.code == 0, done.err[-3000:]
    results = collect(out)
    oracle = results.oracle
    assert sorted(oracle.epoch.unique()) == [0, 1] and len(oracle) == 2 * 4
    assert {"taylor_fisher", "taylor_example_abs", "activation", "rule.taylor_prune"} <= set(oracle.columns)
    np.testing.assert_array_equal(oracle["rule.taylor_prune"], oracle["taylor_example_abs"])  # the rule's default
    assert (oracle.query("epoch == 0").oracle != oracle.query("epoch == 0").oracle_zero_output).any()
    units = results.units
    assert units[list(SUM_FIELDS)].notna().all().all()  # every statistic, not only what the rule reads
    # the statistics are through time: 5 steps per sequence of the toy task
    assert (units.query("epoch == 0")["count"] == 5 * units.query("epoch == 0")["batches"]).all()
    assert results_main([str(out), "--criteria"]) == 0


def test_the_control_arm_captures_what_every_arm_captures(adaptgrad_cli, tiny, tmp_path):
    done = adaptgrad_cli("rule=none", *tiny, f"hydra.run.dir={tmp_path / 'none'}")
    assert done.code == 0, done.err[-3000:]
    units = collect(tmp_path / "none").units
    assert units[list(SUM_FIELDS)].notna().all().all() and (units["grad_sq_sum"] > 0).any()
    done = adaptgrad_cli("rule=none", "stats=rule", *tiny, f"hydra.run.dir={tmp_path / 'lean'}")
    assert done.code == 0, done.err[-3000:]
    assert collect(tmp_path / "lean").units[list(SUM_FIELDS)].isna().all().all()


@pytest.mark.parametrize("value, message", [("maybe", "through_time='maybe' must be auto, true or false")])
def test_bad_capture_keys_are_refused_before_training(adaptgrad_cli, tiny, tmp_path, value, message):
    done = adaptgrad_cli(f"through_time={value}", *tiny, f"hydra.run.dir={tmp_path / 'out'}")
    assert done.code != 0 and message in done.err, done.err[-2000:]
    done = adaptgrad_cli("stats=[taylor]", *tiny, f"hydra.run.dir={tmp_path / 'out2'}")
    assert done.code != 0 and "unknown statistic 'taylor'" in done.err, done.err[-2000:]


@pytest.mark.parametrize("model", representative(["gru", "lstm"], "gru"))
def test_the_default_command_ends_ok_on_a_built_in_model(adaptgrad_cli, tiny, tmp_path, model):
    done = adaptgrad_cli(f"model={model}", *tiny, f"hydra.run.dir={tmp_path / model}")
    assert done.code == 0, done.err[-3000:]


def test_a_sweep_with_a_rule_that_cannot_use_its_capture_mode_is_refused_before_any_job(adaptgrad_cli, tiny, tmp_path):
    sweep = tmp_path / "sweep"
    done = adaptgrad_cli("-m", "rule=none,taylor_prune", "through_time=false", *tiny, f"hydra.sweep.dir={sweep}")
    assert done.code != 0
    assert "through_time=false with rule taylor_prune on a minimal_rnn layer" in done.err and "use through_time=true" in done.err
    assert not any(sweep.glob("*/result.json"))  # no job started
