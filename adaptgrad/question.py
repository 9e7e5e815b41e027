"""The original question's model and toy data, in Keras 3.

Example:
    >>> from adaptgrad.question import question_model, toy_data
    >>> model = question_model()
    >>> x, y = toy_data()
    >>> tuple(model(x).shape)
    (2, 4)

The question: a subclassed ``MyModel(size)`` with ``self.minimalrnn = RNN(MinimalRNNCell(size),
name='minimalrnn')`` and ``self.out = Dense(4)``, trained with SGD/MSE (or Adam(0.01) in a
hand-written ``GradientTape`` loop) on two identical sequences 3, 0, 1, 2, 3 with targets 0..3.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from adaptgrad.cells import MinimalRNNCell


@keras.saving.register_keras_serializable(package="adaptgrad")
class MyModel(keras.Model):
    """The question's subclassed model: ``Dense(4)(RNN(MinimalRNNCell(size))(inputs))``."""

    def __init__(self, size: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.minimalrnn = keras.layers.RNN(MinimalRNNCell(self.size), name="minimalrnn")
        self.out = keras.layers.Dense(4, name="out")

    def call(self, inputs: Any) -> Any:
        return self.out(self.minimalrnn(inputs))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}

    def adaptgrad_compact(self, units: dict[str, int]) -> MyModel:
        """A new built model with ``units["minimalrnn"]`` units (for :func:`adaptgrad.compact`)."""
        model = MyModel(units.get("minimalrnn", self.size))
        model(keras.ops.zeros((1, 1, int(self.minimalrnn.cell.kernel.shape[0]))))
        return model


def question_model(size: int = 2) -> MyModel:
    """A fresh, unbuilt instance of the question's ``MyModel``."""
    return MyModel(size)


def toy_data() -> tuple[np.ndarray, np.ndarray]:
    """The question's data: inputs (2, 5, 1) = 3, 0, 1, 2, 3 twice; targets (2, 4) = 0..3 twice."""
    x = np.array([[[3], [0], [1], [2], [3]]] * 2, dtype=np.float32)
    y = np.array([[0, 1, 2, 3]] * 2, dtype=np.float32)
    return x, y
