"""From a Hydra config to plain objects: values checked, the user's model config as given."""

from __future__ import annotations

import re

import pytest

from adaptgrad.composition import compose, register_rules
from adaptgrad.config import check, job_config, prepare


@pytest.mark.parametrize("value", ["'false'", "maybe", "0", "1"])
def test_trainer_deterministic_must_be_a_boolean(value):
    with pytest.raises(ValueError, match=r"trainer.deterministic=.* must be true or false"):
        check(compose([f"trainer.deterministic={value}"]))


def test_own_model_on_the_command_line_takes_no_key_of_the_built_in_preset():
    cfg = compose(["model=gru", "model._target_=my_models.build", "model.depth=3"])
    assert dict(cfg.model) == {"_target_": "my_models.build", "depth": 3}  # no cell, no preset units
    assert compose(["model=gru"]).model.cell == "gru"  # a built-in model keeps its preset


@pytest.mark.parametrize(
    "source,raised",
    [
        ("raise RuntimeError('boom at import')\n", "RuntimeError on import: boom at import"),
        ("def broken(:\n", "SyntaxError on import: invalid syntax (bad_rules.py, line 1)"),
    ],
)
def test_a_rules_module_that_fails_at_import_is_one_line(tmp_path, monkeypatch, source, raised):
    (tmp_path / "bad_rules.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="rules_module='bad_rules' raised ") as caught:
        register_rules(["bad_rules"])
    assert raised in str(caught.value) and "\n" not in str(caught.value)


def test_rule_settings_set_a_key_for_one_rule_of_a_sweep_only():
    settings = ["+rule_settings.taylor_prune.fraction=0.3", "+rule_settings.dormant_reset.grace=5"]
    pruned = check(compose(["rule=taylor_prune", *settings]), "taylor_prune").rule
    assert pruned.fraction == 0.3 and check(compose(["rule=dormant_reset", *settings]), "dormant_reset").rule.grace == 5
    assert check(compose(["rule=none", *settings]), "none").rule.name == "none"  # the none arm ignores them


@pytest.mark.parametrize(
    "setting,message",
    [
        ("+rule_settings.taylor_prun.fraction=0.1", "rule_settings.taylor_prun names no rule; valid: "),
        ("+rule_settings.taylor_prune.fractoin=0.1", "fractoin is not a parameter of rule taylor_prune; valid: criterion, every"),
        ("+rule_settings.taylor_prune=0.1", "rule_settings.taylor_prune=0.1 must be a mapping key -> value"),
    ],
)
def test_bad_rule_settings_are_refused_whatever_the_rule(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check(compose(["rule=none", setting]), "none")


def test_the_job_config_records_the_rule_settings_its_rule_gets():
    cfg = job_config(compose(["rule=taylor_prune", "+rule_settings.taylor_prune.fraction=0.3"]), [], "taylor_prune")
    assert cfg.rule.fraction == 0.3


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.momentum=-3", "optimizer.momentum=-3 must be a number in [0, 1]"),
        ("+optimizer.epsilon=0", "optimizer.epsilon=0 must be a finite number > 0"),
        ("+optimizer.clipnorm=inf", "optimizer.clipnorm=inf must be a finite number > 0"),
        ("optimizer.momentum='high'", "optimizer.momentum='high' must be a number in [0, 1]"),
    ],
)
def test_optimizer_arguments_are_checked_without_tensorflow(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check(compose(["optimizer=sgd", override]))


def test_an_optimizer_target_that_is_no_optimizer_is_named():
    with pytest.raises(
        ValueError, match=re.escape("optimizer._target_='collections.OrderedDict' made a OrderedDict, not a keras")
    ):
        prepare(compose(["data=toy", "optimizer._target_=collections.OrderedDict", "~optimizer.learning_rate"]))
