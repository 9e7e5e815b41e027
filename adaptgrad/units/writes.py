"""One edit's changes to a layer's variables: each read at most once and assigned at most once.

Example:
    >>> import keras, numpy as np
    >>> from adaptgrad.units.transaction import Journal
    >>> from adaptgrad.units.writes import Writes
    >>> layer = keras.layers.Dense(3)
    >>> layer.build((None, 2))
    >>> writes = Writes(optimizer=None, journal=Journal())
    >>> writes.write(layer.kernel, (Ellipsis, [1]), 0.0)   # unit 1's column
    >>> writes.write(layer.bias, (Ellipsis, [1]), 5.0)
    >>> writes.commit()
    >>> layer.kernel.numpy()[:, 1].tolist(), layer.bias.numpy().tolist()
    ([0.0, 0.0], [0.0, 5.0, 0.0])

An edit of a few units costs a handful of eager TensorFlow operations whatever it does: one read
of each variable it touches, one assignment of each it changes, and the same for the optimizer
slots of the entries it writes (:mod:`adaptgrad.slots`: fresh, as a new weight's). Each costs
about as much as the numpy work of a whole edit, so writes are gathered in numpy copies and
assigned at :meth:`Writes.commit`, in the order the variables were first changed. The compiled
train step reads the variables, so it sees the edit at its next run and is not traced again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adaptgrad import slots
from adaptgrad.units.outgoing import Index
from adaptgrad.units.transaction import Journal

__all__ = ["Writes"]


class Writes:
    """The pending changes of one edit; ``optimizer`` (or None) holds the slots to refresh,
    ``journal`` is told every variable's value before it changes."""

    def __init__(self, optimizer: Any, journal: Journal) -> None:
        self._optimizer = optimizer
        self._journal = journal
        self._arrays: dict[int, np.ndarray] = {}
        self._changed: dict[int, Any] = {}  # insertion-ordered: assigned in this order
        self._fresh: dict[int, list[Index]] = {}  # entries whose optimizer slots start afresh

    def array(self, variable: Any) -> np.ndarray:
        """A writable copy of ``variable``'s value, read once; changes to it in place are assigned
        at :meth:`commit` if :meth:`changed` is called."""
        key = id(variable)
        if key not in self._arrays:
            value = np.array(variable.numpy())
            if self._journal.recording:
                self._journal.remember(variable, value.copy())
            self._arrays[key] = value
        return self._arrays[key]

    def changed(self, variable: Any) -> None:
        """``array(variable)`` was changed in place: assign it at :meth:`commit`."""
        self._changed.setdefault(id(variable), variable)

    def write(self, variable: Any, index: Index, values: Any) -> None:
        """Set ``variable[index]`` to ``values``, its optimizer slots there to fresh values."""
        self.array(variable)[index] = values
        self.changed(variable)
        self._fresh.setdefault(id(variable), []).append(index)

    def commit(self) -> None:
        """Assign every changed variable, then the fresh entries of its optimizer slots."""
        for key, variable in self._changed.items():
            variable.assign(self._arrays[key])
        for key, indices in self._fresh.items():
            weights = self._arrays[key]
            for _, slot, fresh in slots.slots_of(self._optimizer, self._changed[key]):
                array = self.array(slot)
                for index in indices:
                    array[index] = fresh(weights[index])
                slot.assign(array)
        self._changed.clear()
        self._fresh.clear()
