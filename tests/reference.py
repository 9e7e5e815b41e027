"""Independent references for the captured statistics, and the small models the tests train.

The references never touch adaptgrad: they differentiate the real intermediate tensor of a split
forward pass under ``tf.GradientTape`` (output mode), or of a manual Python unroll of the cell
(through time), and accumulate the DESIGN.md sums in float64 numpy.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from adaptgrad.cells import MinimalRNNCell
from adaptgrad.stats import SUM_FIELDS

STEPS, FEATURES, HEAD = 6, 3, 2

CELLS: dict[str, Callable[[int], keras.layers.Layer]] = {
    "minimal": lambda units: MinimalRNNCell(units),
    "simple": lambda units: keras.layers.SimpleRNNCell(units),
    "gru": lambda units: keras.layers.GRUCell(units),
    "lstm": lambda units: keras.layers.LSTMCell(units),
}


def rnn_layer(cell: str, units: int, return_sequences: bool) -> keras.layers.Layer:
    """A recurrent layer named 'rnn': the built-in layer class, or RNN over MinimalRNNCell."""
    kwargs = dict(return_sequences=return_sequences, name="rnn")
    if cell == "simple":
        return keras.layers.SimpleRNN(units, **kwargs)
    if cell == "gru":
        return keras.layers.GRU(units, **kwargs)
    if cell == "lstm":
        return keras.layers.LSTM(units, **kwargs)
    return keras.layers.RNN(CELLS[cell](units), **kwargs)


class Subclassed(keras.Model):
    def __init__(self, rnn: keras.layers.Layer, head: keras.layers.Layer) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = head

    def call(self, inputs):
        return self.head(self.rnn(inputs))


def build(kind: str, cell: str = "minimal", units: int = 4, return_sequences: bool = False):
    """A model 'rnn -> Dense head' of the given kind; returns (model, rnn_layer, head_layer)."""
    rnn = rnn_layer(cell, units, return_sequences)
    head = keras.layers.Dense(HEAD, name="head")
    if kind == "sequential":
        model = keras.Sequential([keras.Input((STEPS, FEATURES)), rnn, head])
    elif kind == "functional":
        inputs = keras.Input((STEPS, FEATURES))
        model = keras.Model(inputs, head(rnn(inputs)))
    else:
        model = Subclassed(rnn, head)
        model(np.zeros((1, STEPS, FEATURES), np.float32))
    return model, rnn, head


def data(n: int, return_sequences: bool = False, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, STEPS, FEATURES)).astype(np.float32)
    y_shape = (n, STEPS, HEAD) if return_sequences else (n, HEAD)
    return x, rng.normal(size=y_shape).astype(np.float32)


def accumulate(totals: dict[str, np.ndarray], h: np.ndarray, g: np.ndarray) -> None:
    """Add one batch's H and G (units on the last axis) to the float64 reference sums."""
    h = h.astype(np.float64).reshape(-1, h.shape[-1])
    g = g.astype(np.float64).reshape(-1, g.shape[-1])
    batch = {
        "grad_sum": g.sum(0),
        "grad_abs_sum": np.abs(g).sum(0),
        "grad_sq_sum": (g**2).sum(0),
        "act_grad_sum": (h * g).sum(0),
        "act_grad_batch_sq_sum": (h * g).sum(0) ** 2,
        "act_abs_sum": np.abs(h).sum(0),
    }
    for key, value in batch.items():
        totals[key] = totals.get(key, 0.0) + value
    totals["batches"] = totals.get("batches", 0) + 1
    totals["count"] = totals.get("count", 0) + h.shape[0]


def unroll(rnn: keras.layers.Layer, x: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Manual Python unroll of ``rnn``'s cell; returns the hidden state of every step and the
    layer output (last state, or the stacked sequence)."""
    cell = rnn.cell
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    states = [tf.zeros((x.shape[0], size)) for size in sizes]
    hidden = []
    for t in range(x.shape[1]):
        output, states = cell(x[:, t], states)
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        hidden.append(output)
    out = tf.stack(hidden, axis=1) if rnn.return_sequences else hidden[-1]
    return hidden, out


def reference_fit(model, rnn, head, x, y, *, batch_size, epochs, optimizer, through_time=False):
    """Train ``model`` batch by batch in order (as ``fit(shuffle=False)``) and return the
    reference statistics of ``rnn``'s output gradient."""
    loss_fn = keras.losses.MeanSquaredError()
    totals: dict[str, np.ndarray] = {}
    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            xb, yb = tf.constant(x[start : start + batch_size]), tf.constant(y[start : start + batch_size])
            with tf.GradientTape() as tape:
                if through_time:
                    hidden, h = unroll(rnn, xb)
                else:
                    h = rnn(xb)
                    hidden = [h]
                loss = loss_fn(yb, head(h))
            grads = tape.gradient(loss, hidden + model.trainable_variables)
            g, weight_grads = grads[: len(hidden)], grads[len(hidden) :]
            if through_time:
                accumulate(totals, np.stack([t.numpy() for t in hidden], 1), np.stack([t.numpy() for t in g], 1))
            else:
                accumulate(totals, h.numpy(), g[0].numpy())
            optimizer.apply_gradients(zip(weight_grads, model.trainable_variables))
    return totals


def assert_stats_equal(stats, totals, rtol: float = 1e-5) -> None:
    """Every sum of ``stats`` equals the reference within ``rtol`` (relative to the field's scale)."""
    assert stats.batches == totals["batches"]
    assert stats.count == totals["count"]
    for name in SUM_FIELDS:
        got, want = getattr(stats, name), totals[name]
        scale = np.max(np.abs(want)) + 1e-30
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=name)
