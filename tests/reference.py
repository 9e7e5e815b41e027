"""Independent references for the captured statistics, and the small models the tests train.

The references never touch adaptgrad: they differentiate the real intermediate tensor of a split
forward pass under ``tf.GradientTape`` (output mode), or of a manual Python unroll of the cell
(through time), and accumulate the DESIGN.md sums in float64 numpy; the weight-gradient sum comes
from the tape's gradient of the layer's own weights, columns grouped by unit (``unit_norms_sq``).
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


def rnn_layer(cell: str, units: int, return_sequences: bool, **options) -> keras.layers.Layer:
    """A recurrent layer named 'rnn': the built-in layer class, or RNN over MinimalRNNCell;
    ``options`` are more RNN arguments (``go_backwards``, ``unroll``)."""
    kwargs = dict(return_sequences=return_sequences, name="rnn", **options)
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


def build(kind: str, cell: str = "minimal", units: int = 4, return_sequences: bool = False, masked: bool = False, **options):
    """A model '[Masking(0) ->] rnn -> Dense head' of the given kind; returns (model, rnn_layer,
    head_layer). ``options`` go to the recurrent layer."""
    rnn = rnn_layer(cell, units, return_sequences, **options)
    head = keras.layers.Dense(HEAD, name="head")
    if kind == "sequential":
        model = keras.Sequential([keras.Input((STEPS, FEATURES)), rnn, head])
    elif kind == "functional":
        inputs = keras.Input((STEPS, FEATURES))
        sequences = keras.layers.Masking(0.0)(inputs) if masked else inputs
        model = keras.Model(inputs, head(rnn(sequences)))
    else:
        model = Subclassed(rnn, head)
        model(np.zeros((1, STEPS, FEATURES), np.float32))
    return model, rnn, head


def data(n: int, return_sequences: bool = False, seed: int = 1, padded: bool = False):
    """Random inputs and targets; ``padded``: example i's last ``i % STEPS`` steps are all 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, STEPS, FEATURES)).astype(np.float32)
    if padded:
        for i in range(n):
            x[i, STEPS - i % STEPS :] = 0.0
    y_shape = (n, STEPS, HEAD) if return_sequences else (n, HEAD)
    return x, rng.normal(size=y_shape).astype(np.float32)


def accumulate(totals: dict[str, np.ndarray], h: np.ndarray, g: np.ndarray, kept: np.ndarray | None = None) -> None:
    """Add one batch's H and G (units on the last axis) to the float64 reference sums, at the
    positions where ``kept`` (H's shape without the units) is True."""
    h, g = h.astype(np.float64), g.astype(np.float64)
    if kept is not None:
        h, g = h * kept[..., None], g * kept[..., None]
    per_example = (h * g).reshape(h.shape[0], -1, h.shape[-1]).sum(1)  # each example's own steps
    h = (h[kept] if kept is not None else h).reshape(-1, h.shape[-1])
    g = (g[kept] if kept is not None else g).reshape(-1, g.shape[-1])
    batch = {
        "grad_sum": g.sum(0),
        "grad_abs_sum": np.abs(g).sum(0),
        "grad_sq_sum": (g**2).sum(0),
        "act_grad_sum": (h * g).sum(0),
        "act_grad_batch_sq_sum": (h * g).sum(0) ** 2,
        "act_grad_example_sq_sum": (per_example**2).sum(0),
        "act_grad_example_abs_sum": np.abs(per_example).sum(0),
        "act_grad_fisher_sum": per_example.shape[0] * (per_example**2).sum(0),
        "act_abs_sum": np.abs(h).sum(0),
    }
    for key, value in batch.items():
        totals[key] = totals.get(key, 0.0) + value
    totals["batches"] = totals.get("batches", 0) + 1
    totals["count"] = totals.get("count", 0) + h.shape[0]


def unit_norms_sq(grads: list[np.ndarray], units: int) -> np.ndarray:
    """Per unit j, the squared norm of its columns ``j + k*units`` (every block k) over every
    array in ``grads``, whose last axes are multiples of ``units``."""
    total = np.zeros(units)
    for g in grads:
        squares = np.asarray(g, dtype=np.float64) ** 2
        total += squares.reshape(-1, squares.shape[-1]).sum(0).reshape(-1, units).sum(0)
    return total


def unroll(rnn: keras.layers.Layer, x: tf.Tensor, mask: np.ndarray | None = None) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Manual Python unroll of ``rnn``'s cell, in its time order; returns the cell output of every
    step and the layer output (last output, or the sequence). Where ``mask[:, t]`` is False the
    step keeps the previous output and states."""
    cell = rnn.cell
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    states = [tf.zeros((x.shape[0], size)) for size in sizes]
    output = tf.zeros((x.shape[0], sizes[0]))
    hidden, outputs = [], []
    order = range(x.shape[1] - 1, -1, -1) if rnn.go_backwards else range(x.shape[1])
    for t in order:
        new_output, new_states = cell(x[:, t], states)
        new_states = list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]
        hidden.append(new_output)
        if mask is None:
            output, states = new_output, new_states
        else:
            keep = mask[:, t : t + 1]
            output = tf.where(keep, new_output, output)
            states = [tf.where(keep, new, old) for new, old in zip(new_states, states)]
        outputs.append(output)
    out = tf.stack(outputs, axis=1) if rnn.return_sequences else outputs[-1]
    return hidden, out


def reference_fit(model, rnn, head, x, y, *, batch_size, epochs, optimizer, through_time=False, masked=False, per_batch=False):
    """Train ``model`` batch by batch in order (as ``fit(shuffle=False)``) and return the
    reference statistics of ``rnn``'s output gradient; ``masked``: steps whose features are all
    0 are masked (as ``keras.layers.Masking(0.0)`` does) and count for nothing; ``per_batch``: a
    list of each batch's statistics instead of their sum (add them up with :func:`add_up`)."""
    loss_fn = keras.losses.MeanSquaredError()
    totals: dict[str, np.ndarray] = {}
    each: list[dict[str, np.ndarray]] = []
    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            xb, yb = tf.constant(x[start : start + batch_size]), tf.constant(y[start : start + batch_size])
            mask = np.any(x[start : start + batch_size] != 0, axis=-1) if masked else None
            with tf.GradientTape() as tape:
                if through_time:
                    hidden, h = unroll(rnn, xb, mask)
                else:
                    h = rnn(xb)
                    hidden = [h]
                if mask is not None and rnn.return_sequences:  # Keras masks the loss too
                    per_step = tf.reduce_mean(tf.square(yb - head(h)), axis=-1)
                    loss = tf.reduce_sum(per_step * mask) / np.sum(mask)
                else:
                    loss = loss_fn(yb, head(h))
            grads = tape.gradient(loss, hidden + model.trainable_variables)
            g, weight_grads = grads[: len(hidden)], grads[len(hidden) :]
            if per_batch:
                totals = {}
                each.append(totals)
            own = [grad.numpy() for grad, v in zip(weight_grads, model.trainable_variables) if any(v is w for w in rnn.weights)]
            totals["weight_grad_sq_sum"] = totals.get("weight_grad_sq_sum", 0.0) + unit_norms_sq(own, int(hidden[0].shape[-1]))
            if through_time:
                kept = None
                if mask is not None:
                    kept = mask[:, ::-1] if rnn.go_backwards else mask
                accumulate(totals, np.stack([t.numpy() for t in hidden], 1), np.stack([t.numpy() for t in g], 1), kept)
            else:
                accumulate(totals, h.numpy(), g[0].numpy())
            optimizer.apply_gradients(zip(weight_grads, model.trainable_variables))
    return each if per_batch else totals


def add_up(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The sum of per-batch reference statistics (``reference_fit(..., per_batch=True)``)."""
    return {key: sum(batch[key] for batch in batches) for key in batches[0]}


def assert_stats_equal(stats, totals, rtol: float = 1e-5, fields=SUM_FIELDS) -> None:
    """``stats`` has exactly the sums ``fields``, each equal to the reference within ``rtol``
    (relative to the field's scale), and the reference counts."""
    assert stats.batches == totals["batches"]
    assert stats.count == totals["count"]
    assert stats.fields == frozenset(fields)
    for name in fields:
        got, want = getattr(stats, name), totals[name]
        scale = np.max(np.abs(want)) + 1e-30
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=name)


def incoming_gradient(model, layer, x, y, batch_size: int) -> np.ndarray:
    """The loss gradient w.r.t. every incoming weight of every unit (its column in every gate
    block of the kernel, recurrent kernel and bias), summed over the batches of ``x`` in order, by
    a ``GradientTape`` on the model's MSE loss; float64, shape ``(units, blocks, entries)``."""
    owner = getattr(layer, "cell", layer)
    weights = [w for w in (owner.kernel, getattr(owner, "recurrent_kernel", None), getattr(owner, "bias", None)) if w is not None]
    units = int(owner.units)
    blocks = owner.kernel.shape[-1] // units
    total = 0.0
    for start in range(0, len(x), batch_size):
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(
                y[start : start + batch_size], model(x[start : start + batch_size], training=True)
            )
        grads = tape.gradient(loss, weights)
        columns = [
            np.asarray(g, np.float64).reshape(-1, blocks, units).transpose(2, 1, 0) for g in grads
        ]  # (units, blocks, rows)
        total = total + np.concatenate(columns, axis=2)
    return total


def set_outgoing(layer, head, unit: int, outgoing: np.ndarray) -> None:
    """Give ``unit`` the outgoing weights ``outgoing``: ``head``'s kernel row, then (recurrent) its
    own recurrent-kernel row."""
    kernel = head.kernel.numpy()
    kernel[unit] = outgoing[: kernel.shape[1]]
    head.kernel.assign(kernel)
    owner = getattr(layer, "cell", layer)
    if getattr(owner, "recurrent_kernel", None) is not None:
        recurrent = owner.recurrent_kernel.numpy()
        recurrent[unit] = outgoing[kernel.shape[1] :]
        owner.recurrent_kernel.assign(recurrent)


@keras.saving.register_keras_serializable(package="tests")
class TanhCell(keras.layers.Layer):
    """A user's cell following Keras's conventions: h = tanh(x W + h₋ U [+ b])."""

    def __init__(self, units, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units, self.use_bias = units, use_bias
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units), initializer="orthogonal", name="recurrent_kernel")
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.units,), initializer="random_normal", name="bias")

    def call(self, inputs, states):
        pre = inputs @ self.kernel + states[0] @ self.recurrent_kernel
        h = keras.ops.tanh(pre + self.bias if self.use_bias else pre)
        return h, [h]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias}


class DenseModel(keras.Model):
    def __init__(self, units):
        super().__init__()
        self.rnn = keras.layers.Dense(units, activation="tanh", name="rnn")
        self.head = keras.layers.Dense(HEAD, name="head")

    def call(self, inputs):
        return self.head(self.rnn(inputs))


def growth_model(cell: str, kind: str, units: int = 4):
    """(model, layer, head, x, y) of the growth tests: :func:`build`'s models, a Dense(tanh) layer
    (inputs: the last step's features), or the user's TanhCell (with or without a bias)."""
    x, y = data(8)
    if cell == "dense":
        x = x[:, -1]
        layer, head = keras.layers.Dense(units, activation="tanh", name="rnn"), keras.layers.Dense(HEAD, name="head")
        if kind == "subclassed":
            model = DenseModel(units)
            model(x[:1])
            layer, head = model.rnn, model.head
        elif kind == "sequential":
            model = keras.Sequential([keras.Input((FEATURES,)), layer, head])
        else:
            inputs = keras.Input((FEATURES,))
            model = keras.Model(inputs, head(layer(inputs)))
        return model, layer, head, x, y
    if cell in ("user", "user-no-bias"):
        user = TanhCell(units, use_bias=cell == "user")
        layer, head = keras.layers.RNN(user, name="rnn"), keras.layers.Dense(HEAD, name="head")
        inputs = keras.Input((STEPS, FEATURES))
        return keras.Model(inputs, head(layer(inputs))), layer, head, x, y
    model, layer, head = build(kind, cell, units=units)
    return model, layer, head, x, y


def twin(kind, cell="minimal", units=4, return_sequences=False, **options):
    """Two models with identical weights: one to watch, one for the reference."""
    watched, *_ = build(kind, cell, units, return_sequences, **options)
    ref = build(kind, cell, units, return_sequences, **options)
    ref[0].set_weights(watched.get_weights())
    return watched, ref


def sgd_reference(ref, x, y, *, batch_size, epochs, **options):
    """The independent reference statistics of the twin ``ref`` (model, rnn, head), trained as the
    watched models here are: SGD(0.1), batches in input order."""
    return reference_fit(*ref, x, y, batch_size=batch_size, epochs=epochs, optimizer=keras.optimizers.SGD(0.1), **options)


def weights(model) -> dict[str, np.ndarray]:
    """Weights by path without the model prefix: 'rnn/gru_cell/kernel', ..., 'head/kernel'."""
    return {v.path.split("/", 1)[1]: np.array(v.numpy()) for v in model.weights}


def small_model():
    """A GRU of 6 units named ``rnn`` before a Dense head, compiled with Adam, and its data."""
    x, y = data(16)
    model = keras.Sequential(
        [keras.Input(x.shape[1:]), keras.layers.GRU(6, name="rnn"), keras.layers.Dense(y.shape[-1], name="head")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model, x, y
