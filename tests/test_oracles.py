"""adaptgrad.oracle against an independent computation: the unit's weights zeroed by hand (gate)
or the layer's output column zeroed in a split forward pass (zero_output), the loss in numpy
float64; every layer type and model kind, the model's weights bit-identical afterwards."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from cases import representative

import adaptgrad

from reference import FEATURES, STEPS, build, data

LAYERS = ("dense", "minimal", "simple", "gru", "lstm")
KINDS = ("sequential", "functional", "subclassed")


@pytest.fixture
def float64():
    """Layers built in float64 (the session fixture's float32 policy would override floatx)."""
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    yield
    keras.config.set_floatx(previous)


def dense_model(kind: str, units: int):
    hidden = keras.layers.Dense(units, activation="tanh", name="rnn")
    head = keras.layers.Dense(2, name="head")
    flat = keras.layers.Flatten()
    if kind == "sequential":
        return keras.Sequential([keras.Input((STEPS, FEATURES)), flat, hidden, head]), hidden, head
    inputs = keras.Input((STEPS, FEATURES))
    return keras.Model(inputs, head(hidden(flat(inputs)))), hidden, head


def model_for(layer: str, kind: str, units: int = 5):
    if layer == "dense":
        if kind == "subclassed":
            pytest.skip("a Dense layer is covered in Sequential and functional models")
        return dense_model(kind, units)
    return build(kind, layer, units)


def per_example_mse(model, x, y) -> np.ndarray:
    return np.mean((np.asarray(model(x), np.float64) - y) ** 2, axis=-1)


def gated_by_hand(layer, head, unit: int):
    """Zero unit ``unit``'s incoming columns in every gate block, its recurrent-kernel row and its
    head row, in numpy; return the saved values to restore."""
    owner = getattr(layer, "cell", layer)
    units = int(getattr(owner, "units", None) or layer.units)
    saved = [(w, w.numpy().copy()) for w in [*owner.weights, *head.weights]]
    for weight in owner.weights:
        values = weight.numpy()
        values[..., unit::units] = 0.0
        if weight.name == "recurrent_kernel":
            values[unit] = 0.0
        weight.assign(values)
    kernel = head.kernel.numpy()
    kernel[unit] = 0.0
    head.kernel.assign(kernel)
    return saved


@pytest.mark.parametrize(
    "layer, kind",
    representative(
        [(layer, kind) for layer in LAYERS for kind in KINDS],
        ("gru", "subclassed"),
        ("lstm", "functional"),
        ("minimal", "sequential"),
        ("simple", "functional"),
        ("dense", "sequential"),
    ),
)
def test_gate_oracle_equals_gating_by_hand(float64, layer, kind):
    keras.utils.set_random_seed(3)
    model, rnn, head = model_for(layer, kind)
    model.compile(optimizer="sgd", loss="mse")
    x, y = (part.astype(np.float64) for part in data(23))
    before = [w.numpy().copy() for w in model.weights]
    assert {w.dtype for w in model.weights} == {"float64"}

    got = adaptgrad.oracle(model, "rnn", (x, y), edit="gate", chunk=40)  # several chunks, the last padded

    assert [np.array_equal(w.numpy(), b) for w, b in zip(model.weights, before)] == [True] * len(before)
    base = per_example_mse(model, x, y).mean()
    want = []
    for unit in range(got.size):
        saved = gated_by_hand(rnn, head, unit)
        want.append(per_example_mse(model, x, y).mean() - base)
        for weight, values in saved:
            weight.assign(values)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert np.abs(got).max() > 1e-4  # the edits change the loss: the comparison is not of zeros


@pytest.mark.parametrize("layer", representative(["minimal", "gru", "lstm", "simple"], "lstm"))
def test_zero_output_oracle_equals_split_forward_pass(float64, layer):
    keras.utils.set_random_seed(4)
    model, rnn, head = build("functional", layer, 4)
    model.compile(optimizer="sgd", loss="mse")
    x, y = (part.astype(np.float64) for part in data(9))
    got = adaptgrad.oracle(model, rnn, (x, y), edit="zero_output")
    h = np.asarray(rnn(x))
    base = np.mean((np.asarray(head(h)) - y) ** 2)
    want = []
    for unit in range(4):
        zeroed = h.copy()
        zeroed[:, unit] = 0.0
        want.append(np.mean((np.asarray(head(zeroed)) - y) ** 2) - base)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    gate = adaptgrad.oracle(model, rnn, (x, y), edit="gate")
    assert not np.allclose(gate, got)  # through the recurrence, another edit


def test_a_gated_unit_costs_nothing_and_the_compiled_loss_is_used(float64):
    keras.utils.set_random_seed(5)
    model, rnn, _ = build("sequential", "gru", 4)
    model.compile(optimizer="sgd", loss=keras.losses.MeanAbsoluteError())
    x, y = (part.astype(np.float64) for part in data(8))
    view = adaptgrad.unit_view(model, "rnn")
    view.gate([2])
    got = adaptgrad.oracle(model, "rnn", (x, y))
    assert got[2] == 0.0
    base = np.mean(np.abs(np.asarray(model(x)) - y))
    view.gate([0])
    want = np.mean(np.abs(np.asarray(model(x)) - y)) - base
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


def test_bad_input_is_refused_with_the_valid_values():
    model, _, _ = build("sequential", "gru", 3)
    x, y = data(4)
    with pytest.raises(ValueError, match="unknown edit 'prune'; valid: 'gate', 'zero_output'"):
        adaptgrad.oracle(model, "rnn", (x, y), edit="prune")
    with pytest.raises(ValueError, match="needs a loss: compile the model"):
        adaptgrad.oracle(model, "rnn", (x, y))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="same, non-zero number of examples"):
        adaptgrad.oracle(model, "rnn", (x, y[:2]))
