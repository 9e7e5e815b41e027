"""Fresh incoming weights for re-initialised units, seeded so that a resumed run draws the same.

Example:
    >>> import keras, numpy as np
    >>> from adaptgrad.units.draws import Draws
    >>> layer = keras.layers.Dense(3, kernel_initializer="glorot_uniform")
    >>> layer.build((None, 2))
    >>> weights = [(layer.kernel, 1, layer.kernel_initializer)]
    >>> first, second = Draws(seed=0).draw(weights, "h"), Draws(seed=0).draw(weights, "h")
    >>> bool(np.array_equal(first[0], second[0])), Draws(seed=0).count
    (True, 0)

Every :meth:`Draws.draw` call draws whole arrays from the layer's initializers with its own seed,
derived from the view's ``seed`` and the number of calls before it (:attr:`Draws.count`, part
of the view's state), so a resumed run repeats the draws of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from adaptgrad.units.incoming import UnitWeight

__all__ = ["Draws"]


def _seeded(initializer: Any, seed: int) -> Any:
    """A copy of a Keras initializer with a fixed seed (others, e.g. LSTM's bias, as they are)."""
    config = initializer.get_config() if hasattr(initializer, "get_config") else None
    if isinstance(config, dict) and "seed" in config:
        return type(initializer).from_config({**config, "seed": seed})
    return initializer


class Draws:
    """The seeded draws of one view: ``seed`` and the :attr:`count` of draws so far."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.count = 0

    def draw(self, weights: list[UnitWeight], layer_name: str) -> list[np.ndarray]:
        """Fresh values for every incoming weight (whole arrays), one seed per call.

        Raises:
            ValueError: a weight has no known initializer (a cell without ``*_initializer``).
        """
        missing = [variable.path for variable, _, initializer in weights if initializer is None]
        if missing:
            raise ValueError(
                f"cannot draw fresh weights for layer {layer_name!r}: no initializer known for {missing}; give "
                f"its cell kernel_initializer / recurrent_initializer / bias_initializer attributes, or define "
                f"adaptgrad_unit_weights()"
            )
        seeds = np.random.SeedSequence([self.seed, self.count]).generate_state(len(weights))
        self.count += 1
        return [
            keras.ops.convert_to_numpy(_seeded(initializer, int(seed) % 2**31)(tuple(variable.shape), dtype=variable.dtype))
            for (variable, _, initializer), seed in zip(weights, seeds)
        ]
