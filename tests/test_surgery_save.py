"""Gating is part of the model: it survives save/load, config round trips and weight files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from cases import representative

import adaptgrad
from adaptgrad.cells import MinimalRNNCell

from reference import data

LAYERS = {
    "dense": lambda: keras.layers.Dense(5, activation="relu", name="layer"),
    "simple_rnn": lambda: keras.layers.SimpleRNN(5, return_sequences=True, name="layer"),
    "gru": lambda: keras.layers.GRU(5, return_sequences=True, name="layer"),
    "gru_reset_before": lambda: keras.layers.GRU(5, return_sequences=True, reset_after=False, name="layer"),
    "lstm": lambda: keras.layers.LSTM(5, return_sequences=True, name="layer"),
    "minimal": lambda: keras.layers.RNN(MinimalRNNCell(5), return_sequences=True, name="layer"),
}
GATED = [1, 3]


def gated_model(kind: str) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 3)), LAYERS[kind](), keras.layers.Dense(2, name="head")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, y = data(16, return_sequences=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    units = adaptgrad.unit_view(model, "layer")
    assert units.gate(GATED) == GATED
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, x, y


def layer_output(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model.get_layer("layer")(x))


def assert_gated(model: keras.Model, x: np.ndarray) -> None:
    outputs = layer_output(model, x)
    assert np.all(outputs[..., GATED] == 0.0) and np.all(np.abs(outputs[..., [0, 2, 4]]).max(axis=(0, 1)) > 0)


@pytest.mark.parametrize("kind", representative(sorted(LAYERS), "minimal"))
def test_saved_and_loaded_model_predicts_the_same_and_keeps_its_units_gated(kind, tmp_path):
    model, x, y = gated_model(kind)
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")

    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)
    assert_gated(loaded, x)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the gate came back with the config
    assert_gated(loaded, x)
    units = adaptgrad.unit_view(loaded, "layer")
    assert units.active.tolist() == [True, False, True, False, True]
    assert units.ungate([1]) == [1]  # nothing saved in this process: a fresh draw, outgoing 0
    assert np.abs(layer_output(loaded, x)[..., 1]).max() > 0
    np.testing.assert_array_equal(loaded.get_layer("head").kernel.numpy()[1], 0.0)


@pytest.mark.parametrize("kind", representative(["dense", "lstm", "minimal"], "lstm"))
def test_config_round_trip_and_weight_files_keep_units_gated(kind, tmp_path):
    model, x, _ = gated_model(kind)
    rebuilt = keras.Sequential.from_config(model.get_config())  # fresh weights, same gates
    assert_gated(rebuilt, x)

    model.save_weights(tmp_path / "m.weights.h5")
    plain = keras.Sequential([keras.Input((6, 3)), LAYERS[kind](), keras.layers.Dense(2, name="head")])
    plain.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(plain.predict(x, verbose=0), model.predict(x, verbose=0))
    assert_gated(plain, x)
    assert adaptgrad.unit_view(plain, "layer").active.tolist() == [True, False, True, False, True]


def test_subclassed_question_model_reloads_gated(tmp_path):
    from adaptgrad.question import question_model, toy_data

    x, y = toy_data()
    model = question_model(4)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, batch_size=1, verbose=0)
    adaptgrad.unit_view(model, "minimalrnn", next_layer="out").gate([2])
    model.save(tmp_path / "q.keras")
    loaded = keras.models.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded.fit(x, y, epochs=2, batch_size=1, verbose=0)  # zero in- and outgoing weights: no gradient reaches them
    assert np.all(keras.ops.convert_to_numpy(loaded.minimalrnn(x))[:, 2] == 0.0)
    assert adaptgrad.unit_view(loaded, "minimalrnn", next_layer="out").active.tolist() == [True, True, False, True]


def test_gated_unit_of_a_layer_whose_activation_is_not_zero_at_zero_is_refused():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="sigmoid", name="h"), keras.layers.Dense(1)])
    units = adaptgrad.unit_view(model, "h")
    with pytest.raises(ValueError, match="'h'.*activation 'sigmoid' maps 0 to a non-zero value"):
        units.gate([0])
    units.scale([0], 2.0)  # everything else still works
    assert units.active.all()


@pytest.mark.slow
def test_load_model_in_a_fresh_process_needs_only_import_adaptgrad(tmp_path):
    model, x, _ = gated_model("gru")
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    script = textwrap.dedent(
        f"""
        import adaptgrad
        import keras, numpy as np
        model = keras.models.load_model({str(tmp_path / "m.keras")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.testing.assert_array_equal(model.predict(x, verbose=0), np.load({str(tmp_path / "expected.npy")!r}))
        assert np.all(keras.ops.convert_to_numpy(model.get_layer("layer")(x))[..., [1, 3]] == 0)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]
