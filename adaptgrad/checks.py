"""Checks of single values, shared by the runner's config, the data, the models and the rules:
each bad value gets one message naming it and what would be valid. No TensorFlow.

Example:
    >>> from adaptgrad.checks import boolean, did_you_mean, integer, number_in
    >>> integer("trainer.epochs", 3), integer("model.head_units", None, optional=True)
    (3, None)
    >>> integer("trainer.epochs", 1.5)
    Traceback (most recent call last):
    ...
    ValueError: trainer.epochs=1.5 must be an integer >= 1
    >>> number_in("taylor_prune: fraction", 1.5, 0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: taylor_prune: fraction=1.5 is out of range; valid: (0.0, 1.0)
    >>> did_you_mean("epoch", ["epochs", "batch_size"])
    "; did you mean 'epochs'?"
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``options`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def first_line(error: BaseException) -> str:
    """The first non-blank line of an error's message, or its type's name.

    Example:
        >>> first_line(ValueError("\\nbad value\\nmore detail")), first_line(KeyError())
        ('bad value', 'KeyError')
    """
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def integer(name: str, value: Any, minimum: int = 1, *, optional: bool = False) -> int | None:
    """``value`` as an int if it is a whole number (an int, a NumPy integer or a float such as
    ``2.0``; not a bool) ``>= minimum``, or None when ``optional``; else a ValueError naming it."""
    if value is None and optional:
        return None
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    whole = real and math.isfinite(float(value)) and float(value) == int(value)
    if not whole or int(value) < minimum:
        raise ValueError(f"{name}={value!r} must be {'null or ' if optional else ''}an integer >= {minimum}")
    return int(value)


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not a string, not a number), else a ValueError naming it."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be true or false")
    return value


def number_in(name: str, value: Any, low: float, high: float, *, closed: str = "neither") -> float:
    """``value`` as a float if it lies in the interval from ``low`` to ``high`` (``closed``:
    ``neither``, ``left``, ``right`` or ``both`` ends included), else a ValueError naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number") from None
    left = number >= low if closed in ("left", "both") else number > low
    right = number <= high if closed in ("right", "both") else number < high
    if isinstance(value, bool) or not (left and right):  # NaN fails both comparisons
        brackets = {"neither": "()", "left": "[)", "right": "(]", "both": "[]"}[closed]
        raise ValueError(f"{name}={value!r} is out of range; valid: {brackets[0]}{low}, {high}{brackets[1]}")
    return number
