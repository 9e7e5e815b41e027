"""The question's recurrent cell, ported to Keras 3.

Example:
    >>> import keras
    >>> from adaptgrad.cells import MinimalRNNCell
    >>> layer = keras.layers.RNN(MinimalRNNCell(2), name="minimalrnn")
    >>> tuple(layer(keras.ops.ones((1, 5, 1))).shape)
    (1, 2)

Keras 3 has no ``AbstractRNNCell`` and no ``keras.backend.dot``: a cell is a plain ``Layer``
with ``state_size`` and ``call(inputs, states) -> (output, new_states)``.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="adaptgrad")
class MinimalRNNCell(keras.layers.Layer):
    """h_t = x_t @ kernel + h_{t-1} @ recurrent_kernel, no bias, no activation.

    Example:
        >>> import keras
        >>> from adaptgrad.cells import MinimalRNNCell
        >>> rnn = keras.layers.RNN(MinimalRNNCell(4), return_sequences=True)
        >>> tuple(rnn(keras.ops.zeros((2, 3, 1))).shape)
        (2, 3, 4)

    Both weights use the ``'uniform'`` initialiser by default, as in the question. The cell
    declares its per-unit weights through :meth:`adaptgrad_unit_weights`, the protocol
    :func:`adaptgrad.unit_view` reads to rescale, gate and re-initialise single units.
    """

    def __init__(
        self,
        units: int,
        kernel_initializer: Any = "uniform",
        recurrent_initializer: Any = "uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"MinimalRNNCell needs units >= 1, got units={units!r}")
        self.units = int(units)
        self.state_size = self.units
        self.output_size = self.units
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer=self.kernel_initializer, name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units),
            initializer=self.recurrent_initializer,
            name="recurrent_kernel",
        )

    def call(self, inputs: Any, states: Any) -> tuple[Any, list[Any]]:
        prev_output = states[0] if isinstance(states, (list, tuple)) else states
        h = keras.ops.matmul(inputs, self.kernel) + keras.ops.matmul(prev_output, self.recurrent_kernel)
        return h, [h]

    def adaptgrad_unit_weights(self) -> list[tuple[Any, int, Any]]:
        """Per-unit incoming weights: ``(variable, gate_blocks, initializer)`` triples.

        Unit j owns column ``j`` of the last axis of every listed variable (``j + k*units`` for
        each of ``gate_blocks`` blocks).
        """
        return [
            (self.kernel, 1, self.kernel_initializer),
            (self.recurrent_kernel, 1, self.recurrent_initializer),
        ]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
        }
