"""adaptgrad.slots: every per-weight slot of every supported optimizer variant gets the value a
new slot starts from, written here by hand (0; the ``initial_accumulator_value`` the test
chose; the weight itself for the ``use_ema`` average), in every edited slice and nowhere else
(through :meth:`adaptgrad.UnitView.reinit`, which gives the slices it draws fresh slots)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from cases import representative

import adaptgrad
from adaptgrad.slots import slots_of

OPTIMIZERS = {  # variant -> (optimizer, the slot names Keras gives a kernel under it)
    "sgd_momentum": (lambda: keras.optimizers.SGD(0.1, momentum=0.9), {"momentum"}),
    "adam": (lambda: keras.optimizers.Adam(), {"momentum", "velocity"}),
    "adam_amsgrad": (lambda: keras.optimizers.Adam(amsgrad=True), {"momentum", "velocity", "velocity_hat"}),
    "adamw_amsgrad": (lambda: keras.optimizers.AdamW(amsgrad=True), {"momentum", "velocity", "velocity_hat"}),
    "adam_ema": (lambda: keras.optimizers.Adam(use_ema=True), {"momentum", "velocity", "average"}),
    "adam_accumulating": (
        lambda: keras.optimizers.Adam(gradient_accumulation_steps=2),
        {"momentum", "velocity", "gradient_accumulator"},
    ),
    "nadam": (lambda: keras.optimizers.Nadam(), {"momentum", "velocity"}),
    "adamax": (lambda: keras.optimizers.Adamax(), {"momentum", "norm"}),
    "rmsprop_centered": (
        lambda: keras.optimizers.RMSprop(momentum=0.5, centered=True),
        {"velocity", "momentum", "average_gradient"},
    ),
    "adagrad": (lambda: keras.optimizers.Adagrad(initial_accumulator_value=0.3), {"accumulator"}),
    "adadelta": (lambda: keras.optimizers.Adadelta(), {"accumulated_grad", "accumulated_delta_var"}),
    "ftrl": (lambda: keras.optimizers.Ftrl(initial_accumulator_value=0.2), {"accumulator", "linear"}),
    "lion": (lambda: keras.optimizers.Lion(), {"momentum"}),
    "loss_scale_amsgrad": (
        lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(amsgrad=True)),
        {"momentum", "velocity", "velocity_hat"},
    ),
}
INITIAL_ACCUMULATOR = {"adagrad": 0.3, "ftrl": 0.2}
STALE = 7.0


def expected_fresh(variant: str, slot: str, weights: np.ndarray) -> np.ndarray:
    """The value a new slot starts from, by hand (Keras's optimizers' build methods)."""
    if slot == "average":
        return weights
    if slot == "accumulator":
        return np.full_like(weights, INITIAL_ACCUMULATOR[variant])
    return np.zeros_like(weights)


@pytest.mark.parametrize(
    "variant",
    representative(
        sorted(OPTIMIZERS), "adam_amsgrad", "adam_ema", "adam_accumulating", "rmsprop_centered", "adagrad", "loss_scale_amsgrad"
    ),
)
def test_every_slot_of_an_edited_slice_starts_fresh_and_no_other_entry_changes(variant):
    make, names = OPTIMIZERS[variant]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="layer"), keras.layers.Dense(1, name="head")])
    model.compile(optimizer=make(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    kernel = model.get_layer("layer").kernel
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    prefix = kernel.path.replace("/", "_") + "_"
    kernel_slots = {v.name[len(prefix) :]: v for v in inner.variables if v.name.startswith(prefix)}
    assert set(kernel_slots) == names  # the reference list above is what Keras builds
    for slot in kernel_slots.values():
        slot.assign(np.full(slot.shape, STALE, np.float32))

    adaptgrad.unit_view(model, "layer").reinit([1, 3])  # two units' columns drawn anew

    weights = kernel.numpy()
    for name, slot in kernel_slots.items():
        values = slot.numpy()
        np.testing.assert_array_equal(values[:, [1, 3]], expected_fresh(variant, name, weights[:, [1, 3]]), err_msg=name)
        np.testing.assert_array_equal(values[:, [0, 2]], STALE, err_msg=f"{name}: an entry not edited changed")
    assert {name for name, _, _ in slots_of(model.optimizer, kernel)} == names
