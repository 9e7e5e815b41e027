"""The value checks every module shares."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from adaptgrad.checks import boolean, integer, number_in


@pytest.mark.parametrize("value,expected", [(3, 3), (np.int64(3), 3), (3.0, 3), (np.float32(2.0), 2)])
def test_integer_takes_whole_numbers(value, expected):
    assert integer("k", value) == expected and type(integer("k", value)) is int


@pytest.mark.parametrize("value", [True, 1.5, float("inf"), float("nan"), "3", None, 0, [2]])
def test_integer_refuses_anything_else_naming_it(value):
    with pytest.raises(ValueError, match=rf"^k={value!r} must be an integer >= 1$".replace("[", r"\[").replace("]", r"\]")):
        integer("k", value)


@pytest.mark.parametrize("value", ["true", 1, 0, None])
def test_boolean_refuses_strings_and_numbers(value):
    with pytest.raises(ValueError, match="must be true or false"):
        boolean("k", value)


def test_number_in_includes_the_ends_it_is_told():
    assert number_in("k", 0, 0.0, 1.0, closed="left") == 0.0
    for value, closed in ((0, "neither"), (1, "left"), (True, "both"), (float("nan"), "both")):
        with pytest.raises(ValueError, match="out of range"):
            number_in("k", value, 0.0, 1.0, closed=closed)


def test_the_model_module_does_not_import_the_runner_config():
    code = "import sys, adaptgrad.models\nprint('adaptgrad.config' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
