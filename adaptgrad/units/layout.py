"""Where each unit's weights are in one layer: its incoming slices, then its outgoing slices.

Example:
    >>> import keras
    >>> from adaptgrad.units.layout import Layout
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="h"), keras.layers.Dense(2, name="out")])
    >>> layout = Layout(model.get_layer("h"), model.get_layer("out"))
    >>> layout.size, [variable.name for variable in layout.variables], layout.variables[2] is model.get_layer("out").kernel
    (4, ['kernel', 'bias', 'kernel'], True)
    >>> layout.indices(1)  # h's kernel column, its bias entry, out's kernel row
    [(Ellipsis, array([1])), (Ellipsis, array([1])), (array([1]),)]

Position ``i`` numbers a unit's slices: first one per incoming weight (:mod:`.incoming`), then one
per outgoing weight (:mod:`.outgoing`); a recurrent kernel holds both (its columns of the unit are
incoming, its row of the unit outgoing). The indices of each unit are computed once.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from adaptgrad.units.incoming import incoming_weights
from adaptgrad.units.outgoing import Index, outgoing_weights

__all__ = ["Layout"]


class Layout:
    """The unit weights of ``layer`` (:func:`~adaptgrad.units.incoming.incoming_weights`) and the
    outgoing ones into ``next_layer`` (None: unknown); ``explicit``: ``next_layer`` was named by the
    user and must consume the units directly.

    Raises:
        TypeError: the layer type is not supported.
        ValueError: the consumer, or the chain of layers to it, cannot be mapped exactly.
    """

    def __init__(self, layer: keras.layers.Layer, next_layer: keras.layers.Layer | None, explicit: bool = False) -> None:
        self.weights, self.prefixes = incoming_weights(layer)
        first, blocks, _ = self.weights[0]
        self.size = int(first.shape[-1]) // blocks
        self.outgoing = outgoing_weights(layer, self.weights, self.size, next_layer, explicit)
        self.variables: list[Any] = [variable for variable, _, _ in self.weights] + [out.variable for out in self.outgoing]
        """The weight at each position (a recurrent kernel twice: incoming, then outgoing)."""
        counts = [sum(other is variable for other in self.variables) for variable in self.variables]
        self.shared = [i for i, count in enumerate(counts) if count > 1]
        """The positions whose weight holds other positions' slices too (a recurrent kernel: units'
        columns and rows cross)."""
        self._indices: dict[int, list[Index]] = {}

    @property
    def incoming(self) -> range:
        """The positions of the incoming slices."""
        return range(len(self.weights))

    @property
    def outgoing_positions(self) -> range:
        """The positions of the outgoing slices."""
        return range(len(self.weights), len(self.variables))

    def columns(self, unit: int, blocks: int) -> np.ndarray:
        """Indices along the last axis that belong to ``unit`` in a weight with ``blocks`` blocks."""
        return unit + self.size * np.arange(blocks)

    def indices(self, unit: int) -> list[Index]:
        """The index of ``unit``'s slice at every position."""
        if unit not in self._indices:
            incoming = [(Ellipsis, self.columns(unit, blocks)) for _, blocks, _ in self.weights]
            self._indices[unit] = incoming + [out.index(unit) for out in self.outgoing]
        return self._indices[unit]
