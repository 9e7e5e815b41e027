"""What a view remembers of each unit's history: its age and its cumulative gains.

Example:
    >>> import numpy as np
    >>> from adaptgrad.units.record import UnitRecord
    >>> record = UnitRecord(3)
    >>> record.multiply(0, [0, 0, 2], [2.0, 3.0, 0.5])   # incoming gains; unit 0 twice
    >>> record.tick()
    >>> record.restart([1])
    >>> record.gains.tolist(), record.age.tolist()
    ([6.0, 1.0, 0.5], [1, 0, 1])

A unit's gain is the product of the factors folded into its incoming weights (side 0) and into
the next layer's rows that read it (side 1); a factor counts while the weights it went into last
(:meth:`UnitRecord.forget`). Its age counts completed epochs (:meth:`UnitRecord.tick`) since it was
built, re-initialised, gated or ungated (:meth:`UnitRecord.restart`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["INCOMING", "OUTGOING", "UnitRecord"]

INCOMING, OUTGOING = 0, 1
"""The two sides a gain goes into."""


class UnitRecord:
    """The age and gains of ``size`` units."""

    def __init__(self, size: int) -> None:
        self.scales = np.ones((2, size))
        """Each unit's gain in its incoming weights (row 0) and in the next layer's rows (row 1)."""
        self.age = np.zeros(size, dtype=np.int64)

    @property
    def gains(self) -> np.ndarray:
        """Each unit's cumulative gain, both sides."""
        return self.scales.prod(axis=0)

    def tick(self) -> None:
        """One more completed epoch for every unit."""
        self.age += 1

    def restart(self, units: Sequence[int]) -> None:
        """The units start again at age 0."""
        self.age[list(units)] = 0

    def forget(self, side: int, units: Sequence[int]) -> None:
        """The units' weights on ``side`` are new: their gain there is 1."""
        self.scales[side, list(units)] = 1.0

    def multiply(self, side: int, units: Sequence[int], factors: Sequence[float]) -> None:
        """Multiply the units' gains on ``side`` by their factors (a unit listed twice, twice)."""
        np.multiply.at(self.scales[side], list(units), np.asarray(factors, dtype=np.float64))

    def copy(self) -> UnitRecord:
        twin = UnitRecord(self.age.size)
        twin.scales, twin.age = self.scales.copy(), self.age.copy()
        return twin

    def get_state(self) -> dict[str, Any]:
        """``scales`` (2 × units) and ``age``."""
        return {"scales": self.scales.copy(), "age": self.age.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s values; a 1-D ``scales`` (saved before the outgoing gain) is the incoming side."""
        scales = np.asarray(state["scales"], dtype=np.float64)
        self.scales = np.stack([scales, np.ones_like(scales)]) if scales.ndim == 1 else scales.copy()
        self.age = np.asarray(state["age"], dtype=np.int64).copy()
