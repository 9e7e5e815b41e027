"""Which weights feed a unit: a layer's per-unit incoming weights, by Keras's conventions or a protocol.

Example:
    >>> import keras
    >>> from adaptgrad.units.incoming import incoming_weights
    >>> gru = keras.layers.GRU(4)
    >>> gru.build((None, 5, 3))
    >>> weights, prefixes = incoming_weights(gru)
    >>> [(variable.name, blocks) for variable, blocks, _ in weights], prefixes
    ([('kernel', 3), ('recurrent_kernel', 3), ('bias', 3)], ['kernel', 'recurrent', 'bias'])

"Unit j" is output feature j. Its *incoming* weights are the slices along the last axis of every
weight that feeds it: the kernel column, the recurrent-kernel column and the bias entry — for a
GRU or LSTM the unit's column in every gate block (z, r, h / i, f, c, o), so that a unit is
edited as a whole: unit j owns indices ``j + k*units`` of the last axis.

A layer or cell following Keras's conventions — weights ``kernel``, ``recurrent_kernel``,
``bias`` whose last axis is k·units, output = first state, initialisers in ``*_initializer``
attributes — is adaptable as it is. Another one declares its weights by defining
``adaptgrad_unit_weights(self)``, returning ``[(variable, gate_blocks, initializer), ...]``.
"""

from __future__ import annotations

from typing import Any

import keras

from adaptgrad import _instrument
from adaptgrad.gates import unwrap

__all__ = ["UnitWeight", "incoming_weights", "weight_owner"]

UnitWeight = tuple[Any, int, Any]
"""``(variable, gate_blocks, initializer or None)``: unit j owns indices ``j + k*units`` of the last axis."""

_CONVENTION = {"kernel": "kernel", "recurrent_kernel": "recurrent", "bias": "bias"}  # weight -> attribute prefix


def weight_owner(layer: keras.layers.Layer) -> Any:
    """The object holding a layer's unit weights: the cell of a recurrent layer, else the layer."""
    return layer.cell if _instrument.is_recurrent(layer) else layer


def _lstm_bias_initializer(cell: keras.layers.LSTMCell, bias_initializer: Any) -> Any:
    if not cell.unit_forget_bias:
        return bias_initializer

    def initializer(shape: tuple[int, ...], dtype: Any = None) -> Any:
        units = cell.units
        return keras.ops.concatenate(
            [
                bias_initializer((units,), dtype=dtype),
                keras.ops.ones((units,), dtype=dtype),
                bias_initializer((units * 2,), dtype=dtype),
            ]
        )

    return initializer


def _units_of(layer: keras.layers.Layer) -> int:
    if _instrument.is_recurrent(layer):
        return _instrument.hidden_units(layer)
    return int(layer.units)


def incoming_weights(layer: keras.layers.Layer) -> tuple[list[UnitWeight], list[str | None]]:
    """The per-unit incoming weights of a layer and, for each, its attribute prefix (``kernel``,
    ``recurrent``, ``bias``: where its ``*_initializer`` / ``*_constraint`` live) or None.

    Raises:
        TypeError: the layer follows neither Keras's conventions nor the protocol.
    """
    owner = weight_owner(layer)
    if hasattr(owner, "adaptgrad_unit_weights"):
        weights = [tuple(weight) for weight in owner.adaptgrad_unit_weights()]
        return weights, [None] * len(weights)  # type: ignore[return-value]
    if not (isinstance(layer, keras.layers.Dense) or _instrument.is_recurrent(layer)) or not isinstance(
        getattr(owner, "kernel", None), keras.Variable
    ):
        raise TypeError(
            f"adaptgrad cannot edit units of layer {layer.name!r} ({type(owner).__name__}); supported: Dense, "
            f"SimpleRNN, GRU, LSTM, RNN over a cell with weights kernel / recurrent_kernel / bias whose last axis "
            f"is k*units (SimpleRNNCell, GRUCell, LSTMCell, MinimalRNNCell, your own), or any layer or cell that "
            f"defines adaptgrad_unit_weights()"
        )
    units = _units_of(layer)
    weights, prefixes = [], []
    for name, prefix in _CONVENTION.items():
        variable = getattr(owner, name, None)
        if not isinstance(variable, keras.Variable):
            continue
        if variable.shape[-1] % units:
            raise TypeError(
                f"weight {name!r} of layer {layer.name!r} has a last axis of {variable.shape[-1]}, not a multiple of "
                f"its {units} units; define adaptgrad_unit_weights() on {type(owner).__name__}"
            )
        initializer = unwrap(getattr(owner, f"{prefix}_initializer", None))
        if name == "bias" and initializer is not None and isinstance(owner, keras.layers.LSTMCell):
            initializer = _lstm_bias_initializer(owner, initializer)
        weights.append((variable, variable.shape[-1] // units, initializer))
        prefixes.append(prefix)
    return weights, prefixes
