"""The oracle: the true change of the loss when one unit alone is edited, for every unit.

Example:
    >>> import keras, numpy as np, adaptgrad
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(4, name="gru"), keras.layers.Dense(1)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> x, y = np.random.default_rng(0).normal(size=(32, 5, 2)), np.ones((32, 1))
    >>> delta = adaptgrad.oracle(model, "gru", (x, y))
    >>> delta.shape, bool(np.all(np.isfinite(delta)))
    ((4,), True)

A criterion (a rule's :meth:`~adaptgrad.AdaptationRule.score`) is only as good as its power to
predict what its edit does to the loss (Molchanov et al. 2017, 2019 judge theirs by their rank
correlation with this oracle); :func:`adaptgrad.criteria.evaluate` measures that power.

Edits (``edit=``):

- ``"gate"``: the unit outputs exactly 0 — at every time step and in the recurrence of a
  recurrent layer — which is what :meth:`~adaptgrad.UnitView.gate` does (its incoming and
  outgoing weights 0). Through-time statistics describe this edit.
- ``"zero_output"``: only the layer's output as the next layer reads it is 0 for the unit (for
  a recurrent layer with ``return_sequences=False``, its last hidden state); the recurrence runs
  as before. Output-mode statistics describe this edit. For a ``Dense`` layer both edits are
  the same.

How it is computed, and what it costs: instead of editing weights unit by unit, the data are
replicated once per unit (plus once unedited) and each copy runs with a 0/1 mask on the unit's
output — inside the cell for ``"gate"``, where a unit whose state is held at 0 is exactly a
unit with zero incoming and outgoing weights — in one traced forward pass per chunk of examples.
That is ``units + 1`` forward passes' worth of arithmetic, the same as the plain loop (gate,
evaluate, restore, for every unit), but in large batches with no per-unit Python, weight writes
or retracing: ``scripts/bench_oracle.py`` measures it beside that loop. The model's weights are
never written, so they are bit-identical afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from adaptgrad import _instrument
from adaptgrad.layers import find_layer

__all__ = ["EDITS", "oracle"]

EDITS = ("gate", "zero_output")
"""The edits :func:`oracle` measures."""


def oracle(
    model: keras.Model,
    layer: str | keras.layers.Layer,
    data: tuple[Any, Any],
    *,
    edit: str = "gate",
    loss: Callable[[Any, Any], Any] | None = None,
    chunk: int = 16384,
) -> np.ndarray:
    """Per unit j, the exact change of the mean loss over ``data`` when ``edit`` is applied to unit j alone.

    Example:
        >>> import adaptgrad
        >>> from adaptgrad.question import question_model, toy_data
        >>> model = question_model()
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x, y = toy_data()
        >>> adaptgrad.oracle(model, "minimalrnn", (x, y), edit="zero_output").shape
        (2,)

    Args:
        model: a Keras 3 model (Sequential, functional or subclassed), built.
        layer: the layer (name or object) whose units are edited: any layer
            :func:`~adaptgrad.unit_view` supports (Dense, SimpleRNN, GRU, LSTM, RNN over a cell
            whose output is its first state).
        data: ``(x, y)`` arrays; the loss is the mean over the examples of the per-example
            loss, in inference mode (dropout off).
        edit: one of :data:`EDITS`.
        loss: ``loss(y_true, y_pred)`` giving per-example (or per-example-and-step) values;
            default: the model's compiled loss.
        chunk: the most sequences evaluated in one pass (examples x (units + 1)); memory grows with it.

    Returns:
        float64 array ``(units,)``: loss with unit j edited minus the loss of the model as it is.
        A unit that is already gated has 0 for ``"gate"``.

    Raises:
        ValueError: an unknown ``edit`` (lists the valid ones), a layer whose units cannot be
            masked, no loss (the model is not compiled and ``loss`` is None), or a loss for
            several outputs.
    """
    if edit not in EDITS:
        raise ValueError(f"unknown edit {edit!r}; valid: {', '.join(map(repr, EDITS))}")
    target = find_layer(model, layer)
    per_example = _per_example_loss(model, loss)
    x, y = (np.asarray(part) for part in data)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"data must be (x, y) with the same, non-zero number of examples; got {len(x)} and {len(y)}")
    inside = edit == "gate" and _instrument.is_recurrent(target)
    with _instrument.unit_mask(target, inside_recurrence=inside) as slot:
        units = slot.units
        copies = units + 1  # copy 0 unedited, copy j + 1 with unit j masked
        masks = tf.constant(np.concatenate([np.ones((1, units)), 1.0 - np.eye(units)]), tf.float32)
        per_chunk = max(1, min(chunk // copies, len(x)))  # no padding beyond the data

        @tf.function(reduce_retracing=True)
        def summed_losses(xb: tf.Tensor, yb: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
            batch = tf.shape(xb)[0]
            slot.mask = tf.repeat(masks, batch, axis=0)  # (copies * batch, units), copy-major
            tiled = tf.tile(xb, tf.concat([[copies], tf.ones(tf.rank(xb) - 1, tf.int32)], axis=0))
            predictions = model(tiled, training=False)
            targets = tf.tile(yb, tf.concat([[copies], tf.ones(tf.rank(yb) - 1, tf.int32)], axis=0))
            values = tf.cast(per_example(targets, predictions), tf.float64)
            values = tf.reshape(values, [copies, batch, -1])
            return tf.reduce_sum(tf.reduce_mean(values, axis=2) * valid[None, :], axis=1)

        totals = np.zeros(copies)
        for start in range(0, len(x), per_chunk):
            xb, yb = x[start : start + per_chunk], y[start : start + per_chunk]
            valid = np.ones(per_chunk)
            if len(xb) < per_chunk:  # pad the last chunk: one trace for every chunk
                valid[len(xb) :] = 0.0
                xb, yb = _pad(xb, per_chunk), _pad(yb, per_chunk)
            totals += summed_losses(tf.constant(xb), tf.constant(yb), tf.constant(valid)).numpy()
    means = totals / len(x)
    return means[1:] - means[0]


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])


def _per_example_loss(model: keras.Model, loss: Callable[[Any, Any], Any] | None) -> Callable[[Any, Any], Any]:
    chosen = loss if loss is not None else getattr(model, "loss", None)
    if chosen is None:
        raise ValueError("oracle needs a loss: compile the model, or pass loss=<per-example loss function>")
    if isinstance(chosen, (list, tuple, dict)):
        raise ValueError(f"oracle measures one loss; the model has one per output ({chosen!r}): pass loss=")
    if isinstance(chosen, str):
        chosen = keras.losses.get(chosen)
    if isinstance(chosen, keras.losses.Loss):
        return chosen.call  # unreduced: one value per example (and step)
    return chosen
