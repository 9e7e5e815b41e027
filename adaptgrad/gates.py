"""Gated units as part of a Keras model: a weight constraint and an initializer that Keras saves.

Example:
    >>> import keras, numpy as np
    >>> from adaptgrad.gates import UnitGate
    >>> gate = UnitGate(units=3, gated=[1])
    >>> layer = keras.layers.Dense(3, kernel_constraint=gate, bias_initializer="ones")
    >>> keras.ops.convert_to_numpy(gate(keras.ops.ones((2, 3)))).tolist()
    [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
    >>> keras.constraints.deserialize(keras.constraints.serialize(gate)).gated
    [1]

A unit of a layer is gated when all its incoming weights (its column ``j + k*units`` of the last
axis of every weight that feeds it, in each of the ``k`` gate blocks) are exactly 0.
:class:`UnitGate` is the constraint that keeps them 0: Keras's optimizers apply a weight's
constraint inside the compiled train step after every update, and the 0/1 mask lives in a
variable that the traced step reads, so gating and ungating after the trace reach it.
:class:`GatedInitializer` draws a gated unit's columns as 0, so that a model rebuilt from its
config (``from_config``, ``load_model``) has the same units gated before any weight is loaded.
Both wrap the constraint or initializer the layer had (``inner``) and are serialised with the
model; ``import adaptgrad`` makes them known to Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = ["GatedInitializer", "UnitGate", "unwrap", "zero_units"]


def _mask_variable(units: int, gated: Sequence[int]) -> tf.Variable:
    mask = np.ones(units, dtype=np.float32)
    mask[list(gated)] = 0.0
    with tf.init_scope(), tf.distribute.get_strategy().scope():
        return tf.Variable(mask, trainable=False, name="adaptgrad_unit_gate")


def _check(units: int, gated: Sequence[int]) -> tuple[int, list[int]]:
    units, gated = int(units), sorted(int(unit) for unit in gated)
    bad = [unit for unit in gated if not 0 <= unit < units]
    if units < 1 or bad:
        raise ValueError(f"UnitGate needs units >= 1 and gated units in [0, units), got units={units}, gated={gated}")
    return units, gated


def _columns(mask: Any, last_axis: int, dtype: Any) -> Any:
    """The unit mask repeated over the gate blocks of a weight whose last axis has ``last_axis`` entries."""
    units = int(mask.shape[0])
    if last_axis % units:
        raise ValueError(f"a weight gated per unit needs a last axis that is a multiple of {units}, got {last_axis}")
    return tf.tile(tf.cast(mask, dtype), [last_axis // units])


@keras.saving.register_keras_serializable(package="adaptgrad")
class UnitGate(keras.constraints.Constraint):
    """Keep the columns of gated units exactly 0 (after the ``inner`` constraint, if any).

    Example:
        >>> import keras
        >>> from adaptgrad.gates import UnitGate
        >>> gate = UnitGate(units=2, gated=[0])
        >>> gate.set_gated([1])
        >>> keras.ops.convert_to_numpy(gate(keras.ops.ones((1, 4)))).tolist()  # two gate blocks of 2 units
        [[1.0, 0.0, 1.0, 0.0]]

    One gate may be shared by every weight of a layer: all read the same mask variable.
    """

    def __init__(self, units: int, gated: Sequence[int] = (), inner: Any = None) -> None:
        units, gated = _check(units, gated)
        self.units = units
        self.inner = keras.constraints.get(inner)
        self.mask = _mask_variable(units, gated)

    @property
    def gated(self) -> list[int]:
        """The gated units, ascending."""
        return np.flatnonzero(self.mask.numpy() < 0.5).tolist()

    def set_gated(self, gated: Sequence[int]) -> None:
        """Gate exactly these units (the compiled step sees the change at its next run)."""
        _, gated = _check(self.units, gated)
        mask = np.ones(self.units, dtype=np.float32)
        mask[gated] = 0.0
        self.mask.assign(mask)

    def __call__(self, w: Any) -> Any:
        if self.inner is not None:
            w = self.inner(w)
        return w * _columns(self.mask, int(w.shape[-1]), w.dtype)

    def get_config(self) -> dict[str, Any]:
        return {"units": self.units, "gated": self.gated, "inner": keras.constraints.serialize(self.inner)}


@keras.saving.register_keras_serializable(package="adaptgrad")
class GatedInitializer(keras.initializers.Initializer):
    """Draw from ``inner``, then set the columns of the gate's gated units to 0.

    Example:
        >>> import keras
        >>> from adaptgrad.gates import GatedInitializer, UnitGate
        >>> init = GatedInitializer(UnitGate(units=2, gated=[1]), "ones")
        >>> keras.ops.convert_to_numpy(init((1, 4))).tolist()
        [[1.0, 0.0, 1.0, 0.0]]
    """

    def __init__(self, gate: UnitGate | dict[str, Any], inner: Any) -> None:
        self.gate = gate if isinstance(gate, UnitGate) else keras.constraints.deserialize(gate)
        self.inner = keras.initializers.get(inner)

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> Any:
        values = self.inner(shape, dtype=dtype)
        return values * _columns(self.gate.mask, int(shape[-1]), values.dtype)

    def get_config(self) -> dict[str, Any]:
        return {"gate": keras.constraints.serialize(self.gate), "inner": keras.initializers.serialize(self.inner)}


def unwrap(value: Any) -> Any:
    """An initializer or constraint without adaptgrad's gate wrapped around it (others as they are).

    Example:
        >>> from adaptgrad.gates import UnitGate, unwrap
        >>> type(unwrap(UnitGate(units=2, inner="non_neg"))).__name__, unwrap("ones")
        ('NonNeg', 'ones')
    """
    return value.inner if isinstance(value, (GatedInitializer, UnitGate)) else value


def zero_units(weights: Sequence[tuple[Any, int]], units: int) -> list[int]:
    """The units whose incoming weights (``(variable, gate blocks)`` pairs) are all exactly 0:
    the gated units of a layer that lost its gate (a subclassed model rebuilds its layers from
    code on load; the saved weights keep the zeros). Empty when every unit is 0 (nothing trained).

    Example:
        >>> import numpy as np
        >>> zero_units([(np.array([[1.0, 0.0, 2.0, 0.0]]), 2)], 2)  # two gate blocks of 2 units
        [1]
    """
    zero = np.ones(units, dtype=bool)
    for variable, blocks in weights:
        array = np.asarray(keras.ops.convert_to_numpy(variable))
        zero &= np.all(array.reshape(-1, blocks, units) == 0, axis=(0, 1))
    return np.flatnonzero(zero).tolist() if not zero.all() else []
