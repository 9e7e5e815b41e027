"""Every supported optimizer leaves gated units exactly as gating left them; edited slices get fresh slots."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from cases import representative

import adaptgrad
from adaptgrad.slots import slots_of

from reference import data

OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.02),
    "adam_ema": lambda: keras.optimizers.Adam(0.02, use_ema=True),
    "adamw": lambda: keras.optimizers.AdamW(0.02, weight_decay=0.05),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.5),
    "adagrad": lambda: keras.optimizers.Adagrad(0.1),
    "lion": lambda: keras.optimizers.Lion(0.005),
    "adafactor": lambda: keras.optimizers.Adafactor(0.05),
    "loss_scale_adam": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.02)),
}


def fresh_by_hand(slot: str, weights: np.ndarray) -> np.ndarray:
    """The value a new slot starts from (Keras's optimizers' build methods), not adaptgrad's own function:
    the weight itself for use_ema's average, Adagrad's default initial_accumulator_value 0.1, else 0."""
    if slot == "average":
        return weights
    return np.full_like(weights, 0.1 if slot == "accumulator" else 0.0)


def model_with(optimizer: keras.optimizers.Optimizer) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.GRU(4, return_sequences=True, name="gru"), keras.layers.Dense(2, name="head")]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def unit_slices(model: keras.Model, unit: int) -> list[np.ndarray]:
    cell, head = model.get_layer("gru").cell, model.get_layer("head")
    columns = unit + 4 * np.arange(3)
    return [
        cell.kernel.numpy()[:, columns],
        cell.recurrent_kernel.numpy()[:, columns],
        cell.recurrent_kernel.numpy()[unit],
        cell.bias.numpy()[..., columns],
        head.kernel.numpy()[unit],
    ]


@pytest.mark.parametrize("name", representative(sorted(OPTIMIZERS), "adam", "adafactor"))
def test_gated_weights_are_bit_identical_over_two_epochs_and_new_slices_get_fresh_slots(name):
    model = model_with(OPTIMIZERS[name]())
    x, y = data(32, return_sequences=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # slots exist and are non-zero
    units = adaptgrad.unit_view(model, "gru")
    units.gate([1])
    frozen = unit_slices(model, 1)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)  # EMA, if any, is written back at the end
    for before, after in zip(frozen, unit_slices(model, 1), strict=True):
        np.testing.assert_array_equal(after, before)
    outputs = keras.ops.convert_to_numpy(model.get_layer("gru")(x))
    assert np.all(outputs[..., 1] == 0.0) and np.all(np.abs(outputs[..., [0, 2, 3]]).max(axis=(0, 1)) > 0)

    optimizer = model.optimizer
    units.ungate([1])
    units.reinit([2])
    kernel = model.get_layer("gru").cell.kernel
    found = slots_of(optimizer, kernel)
    assert found, "the optimizer's per-weight slots are found"
    for unit in (1, 2):
        columns = unit + 4 * np.arange(3)
        for slot_name, slot, _ in found:
            expected = fresh_by_hand(slot_name, kernel.numpy()[:, columns])
            np.testing.assert_array_equal(slot.numpy()[:, columns], expected, err_msg=slot_name)
    others = [0, 3, 4, 7]
    assert any(np.any(slot.numpy()[:, others] != fresh_by_hand(name, kernel.numpy()[:, others])) for name, slot, _ in found)


def test_expected_slots_per_optimizer():
    names = {}
    for name, make in OPTIMIZERS.items():
        model = model_with(make())
        model.optimizer.build(model.trainable_variables)
        names[name] = sorted(slot for slot, _, _ in slots_of(model.optimizer, model.get_layer("gru").cell.kernel))
    assert names == {
        "sgd_momentum": ["momentum"],
        "adam": ["momentum", "velocity"],
        "adam_ema": ["average", "momentum", "velocity"],
        "adamw": ["momentum", "velocity"],
        "rmsprop": ["momentum", "velocity"],
        "adagrad": ["accumulator"],
        "lion": ["momentum"],
        "adafactor": ["velocity"],
        "loss_scale_adam": ["momentum", "velocity"],
    }


def test_an_optimizer_adaptgrad_does_not_know_is_refused_when_the_view_is_made():
    class MyAdam(keras.optimizers.Adam):
        pass

    model = model_with(MyAdam())
    with pytest.raises(ValueError, match="optimizer 'MyAdam'.*supported: Adadelta, Adafactor, Adagrad, Adam"):
        adaptgrad.unit_view(model, "gru")


def test_weight_average_without_a_known_next_layer_is_refused_at_gate_time():
    from reference import Subclassed

    model = Subclassed(keras.layers.GRU(4, return_sequences=True, name="gru"), keras.layers.Dense(2, name="head"))
    x, _ = data(4, return_sequences=True)
    model(x)
    model.compile(optimizer=keras.optimizers.Adam(use_ema=True), loss="mse")
    units = adaptgrad.unit_view(model, "gru")
    with pytest.raises(ValueError, match=r"use_ema=True.*pass next_layer"):
        units.gate([0])
