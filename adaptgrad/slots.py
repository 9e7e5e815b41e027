"""An optimizer's per-weight state (momentum, Adam moments, weight averages), found by Keras's API.

Example:
    >>> import keras, numpy as np
    >>> from adaptgrad.slots import slots_of
    >>> layer = keras.layers.Dense(2)
    >>> layer.build((None, 3))
    >>> optimizer = keras.optimizers.Adam()
    >>> optimizer.build(layer.trainable_variables)
    >>> sorted(name for name, _, _ in slots_of(optimizer, layer.kernel))
    ['momentum', 'velocity']

Keras creates every slot with ``optimizer.add_variable_from_reference(variable, name)``, which names
it ``{variable.path with '/' replaced by '_'}_{name}``; the slot names of each built-in optimizer
class are listed here, and a slot is found among ``optimizer.variables`` by that name. An
optimizer class not listed is refused (:func:`check_supported`): its state could hold per-weight
values adaptgrad would not reset. Adafactor's factored second moments (a row and a column
statistic shared by many weights) are not per-weight state and are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = ["check_supported", "inner_optimizer", "slots_of"]

_SLOT_NAMES: dict[type, tuple[str, ...]] = {
    keras.optimizers.SGD: ("momentum",),
    keras.optimizers.Adam: ("momentum", "velocity", "velocity_hat"),
    keras.optimizers.AdamW: ("momentum", "velocity", "velocity_hat"),
    keras.optimizers.Nadam: ("momentum", "velocity"),
    keras.optimizers.Adamax: ("momentum", "norm"),
    keras.optimizers.RMSprop: ("velocity", "momentum", "average_gradient"),
    keras.optimizers.Adagrad: ("accumulator",),
    keras.optimizers.Adadelta: ("accumulated_grad", "accumulated_delta_var"),
    keras.optimizers.Ftrl: ("accumulator", "linear"),
    keras.optimizers.Lion: ("momentum",),
    keras.optimizers.Adafactor: ("velocity",),
}
_COMMON = ("average", "gradient_accumulator")  # use_ema=True, gradient_accumulation_steps


def inner_optimizer(optimizer: Any) -> Any:
    """The optimizer that holds the slots: ``optimizer`` itself, or the one a LossScaleOptimizer wraps."""
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def check_supported(optimizer: Any) -> None:
    """Raise ValueError unless adaptgrad knows every per-weight slot of ``optimizer`` (None passes).

    Example:
        >>> import keras
        >>> from adaptgrad.slots import check_supported
        >>> check_supported(keras.optimizers.LossScaleOptimizer(keras.optimizers.Lion()))
    """
    if optimizer is None:
        return
    inner = inner_optimizer(optimizer)
    if type(inner) not in _SLOT_NAMES:
        supported = ", ".join(sorted(cls.__name__ for cls in _SLOT_NAMES))
        raise ValueError(
            f"adaptgrad cannot reset the per-weight state of optimizer {type(inner).__name__!r}, so it cannot keep "
            f"edited units exact under it; supported: {supported} (each also inside LossScaleOptimizer)"
        )


def slots_of(optimizer: Any, variable: Any) -> list[tuple[str, Any, Callable[[np.ndarray], np.ndarray]]]:
    """``(slot name, slot variable, fresh)`` for each slot of ``variable`` the optimizer has built.

    ``fresh(new_weight_values)`` gives the values a new slot starts from: 0, Adagrad's and Ftrl's
    ``initial_accumulator_value``, or, for the weight average of ``use_ema=True``, the weight itself.
    """
    if optimizer is None:
        return []
    check_supported(optimizer)
    inner = inner_optimizer(optimizer)
    prefix = variable.path.replace("/", "_") + "_"
    wanted = set(_SLOT_NAMES[type(inner)] + _COMMON)
    found = []
    for slot in inner.variables:
        name = slot.name[len(prefix) :] if slot.name.startswith(prefix) else None
        if name in wanted and tuple(slot.shape) == tuple(variable.shape):
            found.append((name, slot, _fresh(inner, name)))
    return found


def _fresh(optimizer: Any, name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name == "average":
        return lambda weights: weights
    start = float(getattr(optimizer, "initial_accumulator_value", 0.0)) if name == "accumulator" else 0.0
    return lambda weights: np.full_like(weights, start)
