"""compact (adaptgrad/compaction.py): the gated units physically removed, predictions unchanged."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from cases import representative

import adaptgrad
from adaptgrad.cells import MinimalRNNCell
from adaptgrad.question import question_model, toy_data

from reference import Subclassed, data

LAYERS = {
    "dense": lambda name: keras.layers.Dense(6, activation="relu", name=name),
    "simple_rnn": lambda name: keras.layers.SimpleRNN(6, return_sequences=True, name=name),
    "gru": lambda name: keras.layers.GRU(6, return_sequences=True, name=name),
    "lstm": lambda name: keras.layers.LSTM(6, return_sequences=True, name=name),
    "minimal": lambda name: keras.layers.RNN(MinimalRNNCell(6), return_sequences=True, name=name),
}


def trained(model: keras.Model, x: np.ndarray, y: np.ndarray) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def assert_compact_matches(model: keras.Model, x: np.ndarray, removed: int) -> keras.Model:
    small = adaptgrad.compact(model)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    assert small.count_params() < model.count_params()
    assert "Gate" not in json.dumps(small.get_config()), "no gates left in the compact model"
    assert sum(w.size for w in small.get_weights()) == model.count_params() - removed
    return small


@pytest.mark.parametrize("kind", representative(sorted(LAYERS), "lstm"))
def test_compact_removes_gated_units_of_each_layer_type(kind):
    keras.utils.set_random_seed(4)
    x, y = data(16, return_sequences=False)
    inputs = keras.Input((6, 3))
    hidden = LAYERS[kind]("layer")(inputs)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(hidden))
    model = trained(keras.Model(inputs, outputs), x, y)
    units = adaptgrad.unit_view(model, "layer")
    units.gate([0, 4])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    layer = model.get_layer("layer")
    per_unit = sum(int(np.prod(w.shape)) // 6 for w in layer.weights if w.shape[0] != 6 or len(w.shape) == 1)
    recurrent = getattr(getattr(layer, "cell", None), "recurrent_kernel", None)
    if recurrent is not None:  # its own rows and columns go: 6*k*6 -> 4*k*4
        per_unit = sum(int(np.prod(w.shape)) // 6 for w in layer.weights if w is not recurrent)
        removed_recurrent = int(np.prod(recurrent.shape)) - 4 * int(recurrent.shape[1]) * 4 // 6
    else:
        removed_recurrent = 0
    head_rows = 6 * 2 * 2  # Flatten over 6 steps: 2 units x 6 steps rows of a 2-wide head
    small = assert_compact_matches(model, x, 2 * per_unit + removed_recurrent + head_rows)
    assert small.get_layer("layer").get_config().get("units", 4) == 4


def test_compact_stacked_gated_layers():
    keras.utils.set_random_seed(5)
    x, y = data(16, return_sequences=False)
    model = keras.Sequential(
        [
            keras.Input((6, 3)),
            keras.layers.GRU(5, return_sequences=True, name="a"),
            keras.layers.LSTM(4, name="b"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    trained(model, x, y)
    adaptgrad.unit_view(model, "a").gate([1, 2])
    adaptgrad.unit_view(model, "b").gate([3])
    small = adaptgrad.compact(model)
    assert (small.get_layer("a").units, small.get_layer("b").units) == (3, 3)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)


def test_compact_the_subclassed_question_model():
    x, y = toy_data()
    model = question_model(4)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=2, batch_size=1, verbose=0)
    adaptgrad.unit_view(model, "minimalrnn", next_layer="out").gate([0, 3])
    with pytest.raises(ValueError, match=r"consuming 'minimalrnn'.*next_layers=\{'minimalrnn'"):
        adaptgrad.compact(model)
    small = adaptgrad.compact(model, next_layers={"minimalrnn": "out"})
    assert type(small).__name__ == "MyModel" and small.size == 2
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    assert small.count_params() == model.count_params() - 2 * (1 + 4 + 4) + 2 * 2 - 2 * 4


def test_what_compact_cannot_rebuild_is_named():
    keras.utils.set_random_seed(6)
    x, _ = data(4, return_sequences=True)
    model = Subclassed(keras.layers.GRU(4, return_sequences=True, name="rnn"), keras.layers.Dense(2, name="head"))
    model(x)
    adaptgrad.unit_view(model, "rnn", next_layer="head").gate([1])
    with pytest.raises(ValueError, match=r"Subclassed.*is subclassed: define adaptgrad_compact"):
        adaptgrad.compact(model, next_layers={"rnn": "head"})

    fixed = keras.Sequential(
        [
            keras.Input((6, 3)),
            keras.layers.GRU(4, return_sequences=True, name="rnn"),
            keras.layers.Reshape((24,)),
            keras.layers.Dense(2),
        ]
    )
    adaptgrad.unit_view(fixed, "rnn").gate([1])
    with pytest.raises(ValueError, match="compact cannot rebuild model"):
        adaptgrad.compact(fixed)


def test_compact_finds_the_gates_of_a_reloaded_subclassed_model(tmp_path):
    """A subclassed model rebuilds its layers from code on load: the cell's gate constraint is gone,
    but the gated units' incoming weights are still exactly 0, and compact removes them without a
    unit view being made first (issue 21, silent case 14)."""
    x, y = toy_data()
    model = question_model(6)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, batch_size=1, verbose=0)
    adaptgrad.unit_view(model, "minimalrnn", next_layer="out").gate([0, 2, 5])
    model.save(tmp_path / "q.keras")
    loaded = keras.models.load_model(tmp_path / "q.keras")
    small = adaptgrad.compact(loaded, next_layers={"minimalrnn": "out"})
    assert small.size == 3
    fresh = question_model(3)
    fresh(x)
    assert small.count_params() == fresh.count_params()
    np.testing.assert_allclose(small.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-5, rtol=0)
    kept = keras.ops.convert_to_numpy(loaded.minimalrnn.cell.kernel)[:, [1, 3, 4]]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(small.minimalrnn.cell.kernel), kept)
