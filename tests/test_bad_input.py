"""The bad-input matrix of the README: each bad input, the message a user sees, before training."""

from __future__ import annotations

import pandas as pd
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from adaptgrad.app import LAUNCHERS, missing_launcher
from adaptgrad.config import compose
from adaptgrad.run import run

# (overrides, message the job records) - each fails before the first epoch
BEFORE_TRAINING = {
    "unknown_layer": (["layer=rnn"], "model 'minimal_rnn_model' has no layer named 'rnn'; its layers: ['inputs', 'minimalrnn', 'minimal_rnn_cell', 'head']"),
    "fraction_out_of_range": (["rule=taylor_prune", "rule.fraction=1.5"], "taylor_prune: fraction=1.5 is out of range; valid: (0.0, 1.0)"),
    "negative_epochs": (["trainer.epochs=-1"], "trainer.epochs=-1 must be an integer >= 1"),
    "negative_start_epoch": (["rule=none", "rule.start_epoch=-2"], "none: start_epoch=-2 must be >= 0"),
    "min_active_above_units": (["rule=taylor_prune", "rule.min_active=9"], "taylor_prune: min_active=9 exceeds the 4 units of layer 'minimalrnn'; valid: 1..4"),
    "data_does_not_fit": (["data=sunspots", "data.window=400"], "window=400 and horizon=1 leave 0 windows of 309 values"),
    "through_time_on_dense": (["layer=head"], "through_time=True needs a recurrent layer (keras.layers.RNN, SimpleRNN, GRU, LSTM); layer 'head' is a Dense"),
    "rule_not_a_rule": (["rule._target_=collections.OrderedDict"], "rule._target_='collections.OrderedDict' is not an adaptgrad.AdaptationRule subclass"),
    "rule_not_importable": (["rule._target_=no_such_module.Rule"], "rule._target_='no_such_module.Rule' cannot be imported"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_TRAINING))
def test_bad_input_fails_before_training_with_a_clear_message(tiny, case, tmp_path):
    overrides, message = BEFORE_TRAINING[case]
    result = run(compose([*tiny, *overrides]), tmp_path, rule_preset=None)
    assert result["status"] == "failed" and result["epochs"] == 0
    assert message in result["error"]["message"]
    assert "\n" not in result["error"]["message"]  # one line, no traceback


@pytest.mark.parametrize("override,valid", [("model=rnn", "minimal_rnn"), ("data=mnist", "sunspots"), ("rule=prune", "taylor_prune")])
def test_unknown_group_option_lists_the_valid_ones(override, valid):
    with pytest.raises(MissingConfigException, match=rf"(?s)Could not find '{override.replace('=', '/')}'.*Available options.*{valid}"):
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


def test_nan_gradients_skip_the_rule_and_end_the_job_as_diverged(tiny, tmp_path):
    result = run(compose([*tiny, "optimizer.learning_rate=1e30"]), tmp_path)
    assert result["status"] == "diverged" and result["error"]["message"] == "loss is NaN or inf"
    actions = pd.read_csv(tmp_path / "actions.csv")
    assert actions.action.iloc[-1] == "skip_nonfinite"  # the rule never acts on NaN statistics


def test_launcher_not_installed(monkeypatch):
    assert missing_launcher(["rule=none"]) is None and missing_launcher(["hydra/launcher=joblib"]) is None  # the test extra has joblib
    monkeypatch.setitem(LAUNCHERS, "ray", ("hydra_plugins.no_such_launcher", "ray"))  # whether or not the ray extra is installed
    message = missing_launcher(["-m", "hydra/launcher=ray"])
    assert message == (
        "error: hydra/launcher=ray needs the ray launcher plugin, which is not installed.\n"
        "Install it with:  pip install 'adaptgrad[ray]'"
    )

