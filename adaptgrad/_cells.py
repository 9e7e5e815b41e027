"""Keras's GRU, LSTM and SimpleRNN steps (and the MinimalRNN's) written out, the input projection outside the time loop.

Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> from adaptgrad._cells import open_cell
    >>> cell = keras.layers.GRUCell(4)
    >>> cell.build((None, 3))
    >>> opened = open_cell(cell, "float32")
    >>> x, h = tf.ones((2, 3)), tf.fill((2, 4), 0.5)
    >>> output, _ = opened.step(opened.project(x), [h], tf.identity)
    >>> bool(np.allclose(output, cell(x, [h])[0], rtol=1e-6))
    True

Why: the growth statistic (:mod:`adaptgrad.growth`) needs the loss gradient at a recurrent
layer's recurrent pre-activation, at every step, for every example. Through the cell's own
``call`` the only place to catch it is the bias, which for a GRU means a (2, batch, 3n) bias at
every step and an input matmul no longer fused with its bias. Written out, the step passes its
recurrent product h U through the caller's ``probe`` (the GRU's ``h U`` before its recurrent
bias and reset gate, the LSTM's and SimpleRNN's ``h U`` beside ``x W + b``: the same gradient
as the pre-activation's), and the input projection x_t W plus the bias, which does not depend
on the state, is one matmul over all steps before the loop instead of one per step.

Each step is Keras 3.15's ``call`` (``implementation=2``, no dropout; GRU ``reset_after=True``)
with the projection precomputed, so its values agree with Keras's to rounding (the LSTM adds its
bias before h U); ``tests/test_growth.py`` compares each with Keras's cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import tensorflow as tf

from adaptgrad.cells import MinimalRNNCell

__all__ = ["OpenCell", "open_cell"]

Probe = Callable[[tf.Tensor], tf.Tensor]
Step = Callable[[tf.Tensor, list[tf.Tensor], Probe], tuple[tf.Tensor, list[tf.Tensor]]]


@dataclasses.dataclass(frozen=True)
class OpenCell:
    """A cell's step taken apart; see the module docstring."""

    project: Callable[[tf.Tensor], tf.Tensor]
    """x (..., inputs) → x W plus the bias (GRU: its input bias), (..., k·n), any leading axes."""
    step: Step
    """``(projection_t, states, probe) -> (output, new_states)``; ``probe`` (an identity for the
    values) is applied to the recurrent product h U, whose gradient is the loss gradient at the
    recurrent pre-activation."""


def open_cell(cell: keras.layers.Layer, dtype: str) -> OpenCell | None:
    """The step of a built ``GRUCell`` (``reset_after``, ``use_bias``), ``LSTMCell``,
    ``SimpleRNNCell`` (``implementation=2`` where it applies, no dropout) or
    :class:`~adaptgrad.cells.MinimalRNNCell` with its weights read now in ``dtype``; None for any
    other cell (a subclass of these included)."""
    kind = type(cell)  # exactly these classes: a subclass may compute something else
    known = (kind is keras.layers.GRUCell and cell.reset_after and cell.use_bias) or kind in (
        keras.layers.LSTMCell,
        keras.layers.SimpleRNNCell,
        MinimalRNNCell,
    )
    dropout = float(getattr(cell, "dropout", 0.0) or 0.0) or float(getattr(cell, "recurrent_dropout", 0.0) or 0.0)
    if not known or dropout or getattr(cell, "implementation", 2) != 2:
        return None
    kernel, recurrent = tf.cast(cell.kernel, dtype), tf.cast(cell.recurrent_kernel, dtype)
    columns = int(kernel.shape[-1])
    bias = tf.cast(cell.bias, dtype) if isinstance(getattr(cell, "bias", None), keras.Variable) else None

    def projection(x: tf.Tensor, input_bias: tf.Tensor | None) -> tf.Tensor:
        flat = tf.matmul(tf.reshape(x, [-1, int(x.shape[-1])]), kernel)
        flat = flat if input_bias is None else flat + input_bias
        return tf.reshape(flat, tf.concat([tf.shape(x)[:-1], [columns]], 0))

    if kind is keras.layers.GRUCell:
        units = columns // 3

        def gru(projected: tf.Tensor, states: list[tf.Tensor], probe: Probe) -> tuple[tf.Tensor, list[tf.Tensor]]:
            h_tm1 = states[0]
            x_z, x_r, x_h = tf.split(projected, 3, axis=-1)
            inner = probe(tf.matmul(h_tm1, recurrent)) + bias[1]
            z = cell.recurrent_activation(x_z + inner[:, :units])
            r = cell.recurrent_activation(x_r + inner[:, units : 2 * units])
            hh = cell.activation(x_h + r * inner[:, 2 * units :])
            h = z * h_tm1 + (1 - z) * hh
            return h, [h]

        return OpenCell(lambda x: projection(x, bias[0]), gru)
    if kind is keras.layers.LSTMCell:

        def lstm(projected: tf.Tensor, states: list[tf.Tensor], probe: Probe) -> tuple[tf.Tensor, list[tf.Tensor]]:
            h_tm1, c_tm1 = states[0], states[1]
            i, f, c, o = tf.split(projected + probe(tf.matmul(h_tm1, recurrent)), 4, axis=-1)
            c = cell.recurrent_activation(f) * c_tm1 + cell.recurrent_activation(i) * cell.activation(c)
            h = cell.recurrent_activation(o) * cell.activation(c)
            return h, [h, c]

        return OpenCell(lambda x: projection(x, bias), lstm)
    activation = getattr(cell, "activation", None)  # SimpleRNN, MinimalRNN (none)

    def simple(projected: tf.Tensor, states: list[tf.Tensor], probe: Probe) -> tuple[tf.Tensor, list[tf.Tensor]]:
        output = projected + probe(tf.matmul(states[0], recurrent))
        output = output if activation is None else activation(output)
        return output, [output]

    return OpenCell(lambda x: projection(x, bias), simple)
