"""The bad-input matrix of the README: each bad input, the message a user sees, before training."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import TINY
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from adaptgrad.app import LAUNCHERS, missing_launcher
from adaptgrad.composition import compose
from adaptgrad.config import prepare
from adaptgrad.preflight import check_invocation
from adaptgrad.run import run

# (overrides, message the job records) - each fails before the first epoch
BEFORE_TRAINING = {
    "unknown_layer": (
        ["layer=rnn"],
        "model 'minimal_rnn_model' has no layer named 'rnn'; its layers: ['inputs', 'minimalrnn', 'minimal_rnn_cell', 'head']",
    ),
    "fraction_out_of_range": (
        ["rule=taylor_prune", "rule.fraction=1.5"],
        "taylor_prune: fraction=1.5 is out of range; valid: (0.0, 1.0)",
    ),
    "negative_epochs": (["trainer.epochs=-1"], "trainer.epochs=-1 must be an integer >= 1"),
    "negative_start_epoch": (["rule=none", "rule.start_epoch=-2"], "none: start_epoch=-2 must be an integer >= 0"),
    "min_active_above_units": (
        ["rule=taylor_prune", "rule.min_active=9"],
        "taylor_prune: min_active=9 exceeds the 4 units of layer 'minimalrnn'; valid: 1..4",
    ),
    "data_does_not_fit": (["data=sunspots", "data.window=400"], "window=400 and horizon=1 leave 0 windows of 309 values"),
    "through_time_on_dense": (
        ["layer=head", "through_time=true"],
        "through_time=True needs a recurrent layer (keras.layers.RNN, SimpleRNN, GRU, LSTM); layer 'head' is a Dense",
    ),
    "rule_not_a_rule": (
        ["rule._target_=collections.OrderedDict"],
        "rule._target_='collections.OrderedDict' is not an adaptgrad.AdaptationRule subclass",
    ),
    "rule_not_importable": (["rule._target_=no_such_module.Rule"], "rule._target_='no_such_module.Rule' cannot be imported"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_TRAINING))
def test_bad_input_fails_before_training_with_a_clear_message(tiny, case, tmp_path):
    overrides, message = BEFORE_TRAINING[case]
    result = run(compose([*tiny, *overrides]), tmp_path, rule_preset=None)
    assert result["status"] == "failed" and result["epochs"] == 0
    assert message in result["error"]["message"]
    assert "\n" not in result["error"]["message"]  # one line, no traceback


@pytest.mark.parametrize(
    "override,valid", [("model=rnn", "minimal_rnn"), ("data=mnist", "sunspots"), ("rule=prune", "taylor_prune")]
)
def test_unknown_group_option_lists_the_valid_ones(override, valid):
    with pytest.raises(
        MissingConfigException, match=rf"(?s)Could not find '{override.replace('=', '/')}'.*Available options.*{valid}"
    ):
        compose([override])


def test_malformed_override_is_a_parse_error():
    with pytest.raises(Exception, match="Error parsing override 'trainer.epochs==3'"):
        compose(["trainer.epochs==3"])


def test_key_that_does_not_exist_says_how_to_add_it():
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not override 'data.window'.*\+data.window=400"):
        compose(["data=toy", "data.window=400"])  # the toy data has no window


def test_gating_every_unit_is_stopped_by_min_active(tiny, tmp_path):
    result = run(compose([*tiny, "rule=taylor_prune", "rule.fraction=0.9", "rule.min_active=2", "trainer.epochs=4"]), tmp_path)
    assert result["status"] == "ok" and result["final"]["active_units"] == 2
    assert pd.read_parquet(tmp_path / "units.parquet").groupby("epoch").active.sum().tolist() == [2, 2, 2, 2]


def test_nan_gradients_skip_the_rule_and_end_the_job_as_diverged(tmp_path):
    result = run(compose([*TINY, "optimizer.learning_rate=1e30"]), tmp_path)
    assert result["status"] == "diverged" and result["error"]["message"].startswith("loss is NaN or inf")
    actions = pd.read_csv(tmp_path / "actions.csv")
    assert actions.action.iloc[-1] == "skip_nonfinite"  # the rule never acts on NaN statistics


def test_launcher_not_installed(monkeypatch):
    assert (
        missing_launcher(["rule=none"]) is None and missing_launcher(["hydra/launcher=joblib"]) is None
    )  # the test extra has joblib
    monkeypatch.setitem(LAUNCHERS, "ray", ("hydra_plugins.no_such_launcher", "ray"))  # whether or not the ray extra is installed
    message = missing_launcher(["-m", "hydra/launcher=ray"])
    assert message == (
        "error: hydra/launcher=ray needs the ray launcher plugin, which is not installed.\n"
        "Install it with:  pip install 'adaptgrad[ray]'"
    )


# (overrides, message) checked in the main process without TensorFlow, before any job starts;
# each also fails the job in-process (adaptgrad.run.run) with the same message
CHECKED_UP_FRONT = {
    "learning_rate_negative": (["optimizer.learning_rate=-1.0"], "optimizer.learning_rate=-1.0 must be a finite number > 0"),
    "learning_rate_nan": (["optimizer.learning_rate=nan"], "optimizer.learning_rate=nan must be a finite number > 0"),
    "units_not_integer": (["model.units=1.5"], "model.units=1.5 must be an integer >= 1"),
    "through_time_string": (["through_time='false'"], "through_time='false' must be auto, true or false"),
    "unknown_trainer_key": (["+trainer.epoch=3"], "trainer.epoch is not a key of trainer; valid: epochs, batch_size"),
    "unknown_rule_key": (
        ["rule=taylor_prune", "+rule.fractoin=0.5"],
        "rule.fractoin is not a parameter of adaptgrad.rules.taylor_prune.TaylorPrune; valid:",
    ),
    "mirrored_uneven_batch": (
        ["trainer.distribution=mirrored", "trainer.cpu_devices=3", "trainer.batch_size=2"],
        "trainer.batch_size=2 does not split evenly over trainer.cpu_devices=3 replicas; use a multiple of 3",
    ),
    "model_target_not_importable": (
        ["model._target_=no_such_module.build"],
        "model._target_='no_such_module.build' cannot be imported",
    ),
    "layer_twice": (["layer=[minimalrnn,minimalrnn]"], "layer=['minimalrnn', 'minimalrnn'] names a layer twice"),
    "fraction_out_of_range": (
        ["rule=taylor_prune", "rule.fraction=1.5"],
        "taylor_prune: fraction=1.5 is out of range; valid: (0.0, 1.0)",
    ),
    "data_does_not_fit": (["data=sunspots", "data.window=400"], "window=400 and horizon=1 leave 0 windows of 309 values"),
}


@pytest.mark.parametrize("case", sorted(CHECKED_UP_FRONT))
def test_bad_value_is_caught_before_any_job_starts(case, tmp_path):
    overrides, message = CHECKED_UP_FRONT[case]
    (point,) = check_invocation([*TINY, *overrides], multirun=False)
    assert point.error is not None and message in point.error, point.error
    if case in ("unknown_trainer_key", "unknown_rule_key"):
        assert "did you mean 'epochs'?" in point.error or "did you mean 'fraction'?" in point.error
    if case != "data_does_not_fit":  # the job's own check says the same (data: see BEFORE_TRAINING)
        result = run(compose([*TINY, *overrides]), tmp_path)
        assert result["status"] == "failed" and result["epochs"] == 0 and message in result["error"]["message"]


def test_up_front_checks_need_no_tensorflow(tmp_path):
    script = (
        "import sys\n"
        "from adaptgrad.preflight import check_invocation\n"
        "points = check_invocation(['data=toy', 'seed=0,1', 'rule=taylor_prune', 'rule.fraction=0.5,1.5'], multirun=True)\n"
        "print([p.error is None for p in points], 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.strip() == "[True, False, True, False] False False", proc.stderr[-2000:]


def test_integer_learning_rate_is_taken_as_a_float():
    job = prepare(compose(["data=toy", "optimizer.learning_rate=1"]))
    assert job.optimizer["learning_rate"] == 1.0 and isinstance(job.optimizer["learning_rate"], float)
    assert job.make_optimizer().get_config()["learning_rate"] == 1.0


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.epoch=3", "trainer.epoch is not a key of the config; did you mean 'trainer.epochs'?"),
        ("model.unitz=3", "model.unitz is not a key of the config; did you mean 'model.units'?"),
        (
            "model=gruu",
            "Could not find 'model/gruu'; valid model options: gru, lstm, minimal_rnn, simple_rnn; did you mean 'gru'?",
        ),
        ("rule=taylor_prun", "did you mean 'taylor_prune'?"),
        ("experiment=questoin", "Could not find 'experiment/questoin'; valid experiment options: question, "),
        (
            "hparams_search=optuma",
            "Could not find 'hparams_search/optuma'; valid hparams_search options: optuna; did you mean 'optuna'?",
        ),
    ],
)
def test_misspelt_keys_and_options_get_a_did_you_mean(override, message):
    (point,) = check_invocation(["data=toy", override], multirun=False)
    assert point.error is not None and message in point.error, point.error


def test_misspelt_experiment_is_an_error_everywhere():
    with pytest.raises(MissingConfigException, match="Could not find 'experiment/questoin'"):
        compose(["experiment=questoin"])  # not silently the default job


def test_cli_misspelt_experiment_exits_nonzero_naming_it(tmp_path, adaptgrad_cli):
    code, _, err = adaptgrad_cli("experiment=questoin", f"hydra.run.dir={tmp_path / 'out'}")
    assert code == 2
    assert "experiment/questoin" in err and "did you mean 'question'?" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_sweep_with_one_bad_point_trains_nothing(tmp_path, adaptgrad_cli):
    sweep = tmp_path / "sweep"
    code, _, err = adaptgrad_cli(
        "-m", *TINY, "rule=taylor_prune", "rule.fraction=0.1,1.5", "seed=0,1", f"hydra.sweep.dir={sweep}"
    )
    assert code == 2 and not sweep.exists()
    assert (
        "error: job 2 (data=toy model.units=4 trainer.epochs=2 trainer.batch_size=1 rule=taylor_prune rule.fraction=1.5 seed=0)"
        in err
    )
    assert "taylor_prune: fraction=1.5 is out of range; valid: (0.0, 1.0)" in err
    assert "error: 2 of 4 jobs cannot run; no job was started" in err


def test_cli_sweep_params_of_an_experiment_are_checked_too(tmp_path, adaptgrad_cli):
    sweep = tmp_path / "sweep"  # study_toy sweeps 2 models x 7 rules x 5 seeds in hydra.sweeper.params
    code, _, err = adaptgrad_cli("-m", "experiment=study_toy", "trainer.epochs=0", f"hydra.sweep.dir={sweep}")
    assert code == 2 and "error: 48 of 48 jobs cannot run; no job was started" in err and not sweep.exists()


def test_empty_training_set_and_zero_time_steps_are_refused(tmp_path, monkeypatch):
    (tmp_path / "shapeless_data.py").write_text(
        "import numpy as np\n"
        "from adaptgrad.data import Dataset\n"
        "def empty():\n"
        "    x = np.zeros((0, 5, 1), np.float32)\n"
        "    return Dataset('empty', x, np.zeros((0, 1), np.float32), np.zeros((2, 5, 1), np.float32), np.zeros((2, 1), np.float32), task='regression', outputs=1)\n"
        "def no_steps():\n"
        "    x = np.zeros((4, 0, 1), np.float32)\n"
        "    return Dataset('no_steps', x, np.zeros((4, 1), np.float32), x, np.zeros((4, 1), np.float32), task='regression', outputs=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, message in (("empty", "has no training examples"), ("no_steps", "has sequences of 0 time steps")):
        (point,) = check_invocation(["data=toy", f"data._target_=shapeless_data.{target}"], multirun=False)
        assert point.error == f"data 'shapeless_data.{target}' {message}" + (
            "; a recurrent layer needs at least 1" if target == "no_steps" else ""
        )


def test_checked_jobs_are_the_jobs_hydra_runs(tmp_path):
    """Each job's config as checked up front is the config the job gets, and its dir the job's dir."""
    sweep = ["rule=none,taylor_prune", "seed=0,1", "model.units=2,3", "data=toy"]
    subdir = "hydra.sweep.subdir=${hydra.job.override_dirname}"
    points = check_invocation([*sweep, f"hydra.sweep.dir={tmp_path}", subdir], multirun=True)
    assert len(points) == 8 and all(p.error is None for p in points)
    for point in points:
        task = [o for o in point.overrides if not o.startswith("hydra")]
        assert point.config_text == OmegaConf.to_yaml(compose(task), resolve=True)
        assert point.directory == tmp_path / ",".join(sorted(task)) and point.root == tmp_path  # Hydra sorts them
