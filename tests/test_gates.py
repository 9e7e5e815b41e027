"""adaptgrad.gates: the mask reaches exactly the gated units' columns of every gate block, and a
gate saved with a model comes back with the constraint it wraps."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from adaptgrad.gates import GatedInitializer, UnitGate


def test_the_gate_zeroes_the_units_column_in_every_gate_block_and_nothing_else():
    gate = UnitGate(units=4, gated=[1, 2])
    w = keras.ops.convert_to_numpy(gate(keras.ops.ones((2, 12))))  # three gate blocks of 4 units (a GRU kernel)
    want = np.ones((2, 12), np.float32)
    want[:, [1, 2, 5, 6, 9, 10]] = 0.0  # column j + 4 * block
    np.testing.assert_array_equal(w, want)
    assert gate.gated == [1, 2]
    with pytest.raises(ValueError, match="multiple of 4"):
        gate(keras.ops.ones((2, 10)))


def test_a_saved_gate_keeps_its_units_and_the_constraint_it_wraps():
    gate = UnitGate(units=3, gated=[0], inner=keras.constraints.MaxNorm(1.0, axis=0))
    again = keras.constraints.deserialize(keras.constraints.serialize(gate))
    assert again.gated == [0] and isinstance(again.inner, keras.constraints.MaxNorm)
    w = keras.ops.convert_to_numpy(again(keras.ops.full((4, 3), 3.0)))  # every column of norm 6: clipped to 1
    np.testing.assert_allclose(w[:, 1:], 0.5, rtol=1e-6)
    np.testing.assert_array_equal(w[:, 0], 0.0)


def test_the_initializer_draws_gated_units_as_zero_in_every_block():
    init = GatedInitializer(UnitGate(units=2, gated=[1]), keras.initializers.RandomNormal(seed=1))
    values = keras.ops.convert_to_numpy(init((3, 8)))
    np.testing.assert_array_equal(values[:, 1::2], 0.0)
    assert np.all(values[:, 0::2] != 0.0)
    again = keras.initializers.deserialize(keras.initializers.serialize(init))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again((3, 8)))[:, 1::2], 0.0)


def test_gated_units_out_of_range_are_refused():
    for gated in ([3], [-1]):
        with pytest.raises(ValueError, match=r"gated units in \[0, units\)"):
            UnitGate(units=3, gated=gated)
