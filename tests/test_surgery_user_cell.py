"""The question's own cell, written the way the question wrote it, is adaptable unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import adaptgrad


class MinimalRNNCell(keras.layers.Layer):
    """The question's cell, ported to Keras 3 line by line: no protocol, no initializer attributes."""

    def __init__(self, units, **kwargs):
        self.units = units
        self.state_size = units
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units), initializer="uniform", name="recurrent_kernel")
        self.built = True

    def call(self, inputs, states):
        prev_output = states[0]
        h = keras.ops.matmul(inputs, self.kernel)
        output = h + keras.ops.matmul(prev_output, self.recurrent_kernel)
        return output, [output]


class MyModel(keras.Model):
    def __init__(self, size):
        super().__init__()
        self.minimalrnn = keras.layers.RNN(MinimalRNNCell(size), name="minimalrnn")
        self.out = keras.layers.Dense(4)

    def call(self, inputs):
        return self.out(self.minimalrnn(inputs))


def toy() -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[[3], [0], [1], [2], [3]]] * 2, dtype=np.float32)
    return x, np.array([[0, 1, 2, 3]] * 2, dtype=np.float32)


def question_model(size: int = 3) -> MyModel:
    keras.utils.set_random_seed(3)
    model = MyModel(size)
    model.compile(optimizer="sgd", loss="mse")
    model(toy()[0])
    return model


def test_gating_the_questions_own_cell_is_exact_under_training():
    model = question_model()
    x, y = toy()
    units = adaptgrad.unit_view(model, "minimalrnn", next_layer=model.out)
    assert units.size == 3 and len(units.weights) == 2
    assert units.gate([1]) == [1]
    model.fit(x, y, epochs=3, batch_size=1, verbose=0)
    hidden = keras.ops.convert_to_numpy(model.minimalrnn(x))
    assert np.all(hidden[:, 1] == 0.0) and np.all(hidden[:, [0, 2]] != 0.0)
    np.testing.assert_array_equal(model.minimalrnn.cell.kernel.numpy()[:, 1], 0.0)
    np.testing.assert_array_equal(model.minimalrnn.cell.recurrent_kernel.numpy()[:, 1], 0.0)


def test_scaling_the_questions_own_cell_multiplies_exactly_the_units_columns():
    model = question_model()
    cell = model.minimalrnn.cell
    kernel, recurrent = cell.kernel.numpy().copy(), cell.recurrent_kernel.numpy().copy()
    units = adaptgrad.unit_view(model, "minimalrnn")
    units.scale([2], 0.5)
    kernel[:, 2] *= 0.5
    recurrent[:, 2] *= 0.5
    np.testing.assert_array_equal(cell.kernel.numpy(), kernel)
    np.testing.assert_array_equal(cell.recurrent_kernel.numpy(), recurrent)


def test_reinit_without_known_initializers_is_a_clear_error_and_attributes_fix_it():
    model = question_model()
    units = adaptgrad.unit_view(model, "minimalrnn")
    with pytest.raises(ValueError, match=r"no initializer known for .*kernel.*kernel_initializer"):
        units.reinit([0])
    assert units.edits == []
    units.remove()
    cell = model.minimalrnn.cell
    cell.kernel_initializer = keras.initializers.RandomUniform(seed=1)
    cell.recurrent_initializer = keras.initializers.RandomUniform(seed=2)
    units = adaptgrad.unit_view(model, "minimalrnn")
    before = cell.kernel.numpy().copy()
    units.reinit([0])
    assert np.all(cell.kernel.numpy()[:, 0] != before[:, 0])
    np.testing.assert_array_equal(cell.kernel.numpy()[:, 1:], before[:, 1:])
