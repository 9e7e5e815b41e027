"""The user's model by ``_target_``: a model that does not fit the data is named with what fits."""

from __future__ import annotations

import re

import pytest

from adaptgrad.models import make_model

WRONG = """
import keras

def too_wide(input_shape, outputs, task):
    return keras.Sequential([keras.Input(input_shape), keras.layers.GRU(3), keras.layers.Dense(outputs + 2)])

def fixed_input(input_shape, outputs, task):
    return keras.Sequential([keras.Input((5, 4)), keras.layers.GRU(3), keras.layers.Dense(outputs)])
"""


@pytest.mark.parametrize(
    "function,message",
    [
        (
            "too_wide",
            "model._target_='wrong_models.too_wide' gives outputs of shape (3,) per example; the data needs (1,) (regression): "
            "end the model with a layer of the outputs argument's width",
        ),
        (
            "fixed_input",
            "model._target_='wrong_models.fixed_input' cannot take the data's sequences of shape (5, 2) (steps, features): ",
        ),
    ],
)
def test_a_user_model_that_does_not_fit_the_data_is_named(tmp_path, monkeypatch, function, message):
    (tmp_path / "wrong_models.py").write_text(WRONG)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        make_model({"_target_": f"wrong_models.{function}"}, input_shape=(5, 2), outputs=1, task="regression")
    assert "\x1b[" not in str(caught.value) and "\n" not in str(caught.value)
