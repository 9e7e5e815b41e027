"""From a Hydra config to plain objects: values checked, the user's model config as given."""

from __future__ import annotations

import pytest

from adaptgrad.config import check, compose, register_rules


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
