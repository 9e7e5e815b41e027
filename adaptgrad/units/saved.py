"""The weights a gated unit had when it was gated, that :meth:`~adaptgrad.UnitView.ungate` restores.

Example:
    >>> import numpy as np
    >>> from adaptgrad.units.saved import SavedWeights
    >>> saved = SavedWeights()
    >>> saved.keep(2, [np.array([1.0, 2.0]), np.array([3.0])])   # unit 2: one incoming, one outgoing slice
    >>> saved.update([2], [0], lambda unit, position, values: 10 * values)   # its incoming slice
    >>> 2 in saved, [a.tolist() for a in saved.get(2)]
    (True, [[10.0, 20.0], [3.0]])

Per gated unit, one array per position of the layout (:mod:`.layout`): its incoming slices, then
its outgoing slices. A recurrent kernel's entry (i, column of j) is both unit i's outgoing and
unit j's incoming slice: while both are gated it is 0 in the model and held by both
(:meth:`SavedWeights.fill` puts it back in a copy of the weights). The arrays are replaced, never
changed in place, so that a transaction's snapshot (:meth:`SavedWeights.snapshot`) is a shallow copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from adaptgrad.units.outgoing import Index

__all__ = ["SavedWeights"]


class SavedWeights:
    """Gated unit -> its slices at every position."""

    def __init__(self) -> None:
        self._by_unit: dict[int, list[np.ndarray]] = {}

    def __contains__(self, unit: int) -> bool:
        return unit in self._by_unit

    @property
    def units(self) -> list[int]:
        """The units whose weights are held, ascending."""
        return sorted(self._by_unit)

    def get(self, unit: int) -> list[np.ndarray] | None:
        """Copies of the unit's slices; None if not held."""
        slices = self._by_unit.get(unit)
        return None if slices is None else [array.copy() for array in slices]

    def keep(self, unit: int, slices: list[np.ndarray]) -> None:
        """Hold ``slices`` (owned from now on) for ``unit``."""
        self._by_unit[unit] = slices

    def pop(self, unit: int) -> list[np.ndarray] | None:
        """The unit's slices, no longer held (None if they were not)."""
        return self._by_unit.pop(unit, None)

    def update(
        self, units: Iterable[int], positions: Iterable[int], change: Callable[[int, int, np.ndarray], np.ndarray]
    ) -> None:
        """Replace each held unit's slice at each of ``positions`` by ``change(unit, position, slice)``."""
        positions = list(positions)
        for unit in units:
            slices = self._by_unit[unit]
            for i in positions:
                slices[i] = change(unit, i, slices[i])

    def fill(self, positions: list[int], arrays: list[np.ndarray], indices: Callable[[int], list[Index]]) -> None:
        """Write every held slice at ``positions`` into ``arrays`` (one per position, the same array
        where positions share a weight) at ``indices(unit)``: the weights as they would be with no
        unit gated, where slices of several units overlap."""
        for unit, slices in self._by_unit.items():
            index = indices(unit)
            for i in positions:
                arrays[i][index[i]] = slices[i]

    def snapshot(self) -> dict[int, list[np.ndarray]]:
        """What :meth:`restore` puts back."""
        return {unit: list(slices) for unit, slices in self._by_unit.items()}

    def restore(self, snapshot: dict[int, list[np.ndarray]]) -> None:
        self._by_unit = snapshot

    def get_state(self) -> dict[int, list[np.ndarray]]:
        """Every held unit's slices (copies)."""
        return copy.deepcopy(self._by_unit)

    def set_state(self, state: dict[int, Any]) -> None:
        self._by_unit = copy.deepcopy(dict(state))
