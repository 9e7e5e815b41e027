"""Parametrized matrices with a few representative cases in the default run.

The default ``pytest`` runs the cases named here; every other case of the matrix (each layer
type, optimizer, compile mode, statistic subset, ...) is marked ``slow`` and runs in CI with
``pytest -m slow``. The representatives cover each behaviour a test claims; the slow cases
cover it for every variant.

Example:
    >>> [getattr(case, "values", case) for case in representative(["gru", "lstm"], "gru")]
    ['gru', ('lstm',)]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest


def representative(values: Iterable[Any], *default: Any) -> list[Any]:
    """``values`` for ``pytest.mark.parametrize``, those not among ``default`` marked ``slow``;
    a tuple is one case of several arguments."""
    return [
        value if value in default else pytest.param(*(value if isinstance(value, tuple) else (value,)), marks=pytest.mark.slow)
        for value in values
    ]
