"""The growth statistic: what a new unit's incoming weights would get as gradient, captured inside ``fit``.

Example:
    >>> import keras, numpy as np, adaptgrad
    >>> from adaptgrad.growth import watch_growth
    >>> model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(4, name="gru"),
    ...                           keras.layers.Dense(3, name="head")])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> growth = watch_growth(model, "gru")
    >>> _ = model.fit(np.ones((8, 5, 2)), np.ones((8, 3)), batch_size=4, verbose=0)
    >>> s = growth.statistic()
    >>> s.matrix.shape, s.batches, s.linearisation.kappa
    ((15, 8), 2, 0.5)

GradMax (Evci, van Merriënboer, Unterthiner, Vladymyrov, Pedregosa, ICLR 2022) adds a unit j
with incoming weights θ = 0, so that it outputs 0 and the network's function is unchanged, and
outgoing weights w chosen to maximise ‖∂L/∂θ‖. This module captures the matrix M for which,
exactly (not an approximation: the gradient is linear in w because the unit outputs 0)::

    ∂L/∂θ  =  κ · wᵀ M ,      M = Σ_batches Σ_s δ_s x̄_sᵀ

- **w** (the rows of M): the unit's outgoing weights, i.e. row j of the consumer's kernel (a
  ``Dense`` reading the layer's output: its ``C`` output features) and, in a recurrent layer,
  row j of the layer's own recurrent kernel (all ``k·n`` columns; those of unit j itself and of
  other gated units are incoming weights of those units and must stay 0).
- **δ_s**: the loss gradient at the consumers' pre-activations at step s: the consumer's
  ``x W + b`` at the step it reads, and the layer's recurrent pre-activation ``h_s U + b_rec`` at
  step s + 1 (for a GRU: inside its reset gate, ``r ⊙ (h U + b_rec)``).
- **θ** (the columns of M): the unit's incoming weights in its *candidate* gate block, in the
  order of x̃ = [x_t ; ρ·h_{t-1} ; bias entries] (kernel column, recurrent-kernel column, bias
  entries; a ``Dense`` layer: [x ; 1]). Its other gate blocks get exactly 0 gradient.
- **x̄_s** = Σ_{t≤s} λ^{s−t} x̃_t: what the unit reads, summed with its own decay.

The derivation. With θ = 0 the unit's state is 0 at every step, every gate of the unit sits at
its value at 0, and its first-order response to θ is linear: h_{j,s} = κ Σ_{t≤s} λ^{s−t} θ·x̃_t.
Its effect on the loss goes through w into the consumers' pre-activations, where the gradient
is δ_s, so ∂L/∂θ = Σ_s (wᵀ δ_s) κ x̄_s. The constants (:func:`linearisation`; σ is the
recurrent activation, f the activation):

=========================  ========================  =========  ==========  ===================
layer                      κ                         λ          ρ           bias entries
=========================  ========================  =========  ==========  ===================
Dense                      f'(0)                     –          –           1
SimpleRNN, MinimalRNN,     f'(0) (1 without          0          1           1 (none without
a user's one-block cell    an activation)                                   a bias)
GRU (reset_after)          (1 − σ(0)) f'(0) = 0.5    σ(0)=0.5   σ(0)=0.5    1 (input), ρ (recurrent)
LSTM                       σ(0)² f'(0)² = 0.25       σ(0)=0.5   1           1
=========================  ========================  =========  ==========  ===================

GRU: h = z h₋ + (1 − z) f(a_h) with z = σ(0) and the candidate a_h = x W_h + b_h + r ⊙ (h₋ U_h +
b_rh), r = σ(0): the z and r blocks get 0 (their derivative multiplies h₋ − f(a_h) = 0 and
h₋ U_h + b_rh = 0). LSTM: c = f c₋ + i f(a_c), h = o f(c), with i = f = o = σ(0) (the new unit's
forget bias is 0 too); the i, f, o blocks get 0 (they multiply f(a_c), c₋ and f(c), all 0).

How it is captured, inside the compiled train step (the pattern of :mod:`adaptgrad.capture`):

- the consumer: a zero matrix A (D × C) adds ``x̄ A`` to the consumer ``Dense``'s pre-activation
  (its activation's input) at the step it reads; the loss does not change (A = 0) and A's
  gradient function adds ∂L/∂A = Σ x̄ δᵀ into a float64 variable;
- the layer's own gates: x̄ runs through the time loop as one more state (without a gradient),
  and at every step the recurrent pre-activation passes through an identity whose gradient
  function gets δ_t and adds x̄_{t−1}ᵀ δ_t (float32) to the gradient of a zero matrix A′ (D × k·n)
  that the step reads but does not use. TensorFlow sums the gradient of a tensor a loop reads
  over the steps, so ∂L/∂A′ = Σ_t x̄_{t−1}ᵀ δ_t, M's recurrent rows, leaves the backward loop
  complete, and A′'s gradient function adds it into a second float64 variable. Where the identity
  sits: Keras's GRU, LSTM and SimpleRNN cells and the MinimalRNN run written out
  (:mod:`adaptgrad._cells`), the identity on h U, and their input projection x W (+ bias) is one
  matmul over all steps before the loop; a user's cell gets its bias through the identity (one
  row per example), or, without a bias, an input kernel extended by identity rows and a zero
  input through the identity;
- x̄ for the consumer: the loop's last x̄ state.

Under a loss scale the gradients are unscaled, and a step Keras skips (overflow) counts for
nothing. Cost per step: building x̃_t and x̄_t (a concatenation, a multiply-add), the identity,
and in the backward loop one (D × batch) · (batch × k·n) product, which does not lie on the
recurrence's chain, so a second thread runs it beside the chain. The loop is
:func:`adaptgrad._instrument.generic_loop`'s lean while loop (no cuDNN), as for through-time
capture. Measured by ``scripts/bench_growth.py`` (64 units, 20 steps, 8 features, batch 64, 15
interleaved rounds, a quiet 2-core VM), the wall time of ``fit`` with the statistic over plain
``fit``, one TensorFlow thread / two: GRU 1.10× / 1.10×, LSTM 1.15× / 1.05×, SimpleRNN 1.08× /
1.11×, MinimalRNN 1.05× / 1.22×, Dense (``--cell dense``) 1.06× / 1.02× (±0.05 between runs).
Earlier designs, measured the same way (one thread): a zero sequence Z (batch × T × k·n) as a second loop input added to the step's
bias, its gradient (every δ_t) multiplied by x̄ after the loop, with Keras's own loop 1.48×
(GRU), with the lean loop 1.33× (GRU) and 1.35× (LSTM): per batch, Z and its gradient were
transposed and reversed to and from the loop's order (about as much as the rest), the two
products after the loop took ~0.7 ms of a ~8 ms batch and a GRU's bias became a (2, batch, 3n)
stack every step, unfusing its input matmul; δ_t from the gradient at each step's state taken
back through the step re-run on all batch × T rows after the loop: 1.68×.

Limits (each a clear error, when attached; a mask when the step is traced): the consumer must be
a ``Dense`` that reads the layer's output directly (a subclassed model: pass ``next_layer``); a
recurrent layer must return its last step only and run without dropout and without a mask; a
GRU needs ``reset_after=True``, ``use_bias=True`` and ``implementation=2``, an LSTM
``implementation=2`` (Keras's defaults); a recurrent cell other than Keras's must have one gate
block. κ must not be 0 (ReLU: TensorFlow's ReLU'(0) is 0, so a unit
with zero incoming weights never gets a gradient).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from adaptgrad import _cells, _instrument
from adaptgrad.layers import find_layer
from adaptgrad.units import consumer_chain

__all__ = [
    "GrowthStatistic",
    "GrowthWatch",
    "Linearisation",
    "feedable",
    "incoming_slices",
    "linearisation",
    "revival_scores",
    "saved_incoming",
    "watch_growth",
]


@dataclasses.dataclass(frozen=True)
class Linearisation:
    """The first-order response of a unit with zero incoming weights (see the module docstring).

    Example:
        >>> import keras
        >>> from adaptgrad.growth import linearisation
        >>> lstm = keras.layers.LSTM(3)
        >>> lstm.build((None, 4, 2))
        >>> linearisation(lstm)
        Linearisation(block=2, blocks=4, kappa=0.25, decay=0.5, rho=1.0, bias=(1.0,))
    """

    block: int
    """The gate block whose incoming weights get first-order gradient (GRU: 2, LSTM: 2, else 0)."""
    blocks: int
    kappa: float
    decay: float
    rho: float
    bias: tuple[float, ...]
    """x̃'s bias entries: () without a bias, (1,), or (1, ρ) for a GRU's input and recurrent bias."""


def _at_zero(function: Callable[[tf.Tensor], tf.Tensor]) -> tuple[float, float]:
    """(f(0), f'(0))."""
    x = tf.constant(0.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = function(x)
    return float(y), float(tape.gradient(y, x))


def linearisation(layer: keras.layers.Layer) -> Linearisation:
    """The constants κ, λ, ρ and the bias entries of ``layer`` (a built Dense or recurrent layer).

    Raises:
        ValueError: the layer's new units would get no first-order gradient (κ = 0), or the layer
            is not one whose zero unit is linearised here (see the module docstring).
    """
    recurrent = _instrument.is_recurrent(layer)
    owner = layer.cell if recurrent else layer
    name = f"layer {layer.name!r}"
    if not isinstance(getattr(owner, "kernel", None), keras.Variable):
        raise ValueError(
            f"growth: {name} ({type(owner).__name__}) has no kernel; supported: Dense, SimpleRNN, GRU, LSTM, RNN cells"
        )
    activation = getattr(owner, "activation", None)
    f0, slope = _at_zero(activation) if activation is not None else (0.0, 1.0)
    bias = getattr(owner, "bias", None)
    has_bias = isinstance(bias, keras.Variable)
    if not recurrent:
        if not isinstance(layer, keras.layers.Dense):
            raise ValueError(f"growth: {name} is a {type(layer).__name__}; supported: Dense and recurrent layers")
        result = Linearisation(0, 1, slope, 0.0, 1.0, (1.0,) if has_bias else ())
    else:
        units = _instrument.hidden_units(layer)
        blocks = int(owner.kernel.shape[-1]) // units
        if float(getattr(owner, "dropout", 0.0) or 0.0) or float(getattr(owner, "recurrent_dropout", 0.0) or 0.0):
            raise ValueError(f"growth: {name} uses dropout; the growth statistic needs dropout=0 and recurrent_dropout=0")
        gate = getattr(owner, "recurrent_activation", None)
        g0 = _at_zero(gate)[0] if gate is not None else 0.0
        if isinstance(owner, keras.layers.GRUCell):
            if not (owner.reset_after and owner.use_bias and owner.implementation == 2):
                raise ValueError(
                    f"growth: GRU {name} needs reset_after=True, use_bias=True and implementation=2 (Keras's defaults), got "
                    f"reset_after={owner.reset_after}, use_bias={owner.use_bias}, implementation={owner.implementation}"
                )
            result = Linearisation(2, 3, (1.0 - g0) * slope, g0, g0, (1.0, g0))
        elif isinstance(owner, keras.layers.LSTMCell):
            if owner.implementation != 2:
                raise ValueError(f"growth: LSTM {name} needs implementation=2 (Keras's default), got {owner.implementation}")
            result = Linearisation(2, 4, g0 * slope * g0 * slope, g0, 1.0, (1.0,) if has_bias else ())
        elif blocks == 1:
            if has_bias and len(bias.shape) != 1:
                raise ValueError(f"growth: {name}'s bias has shape {tuple(bias.shape)}; a one-block cell needs a 1-D bias")
            result = Linearisation(0, 1, slope, 0.0, 1.0, (1.0,) if has_bias else ())
        else:
            raise ValueError(
                f"growth: {name}'s cell {type(owner).__name__} has {blocks} gate blocks; the growth statistic knows the "
                f"gates of GRUCell and LSTMCell, and cells of one block (x W + h U [+ b], then an activation)"
            )
    if f0 != 0.0 or result.kappa == 0.0:
        act = getattr(activation, "__name__", repr(activation))
        raise ValueError(
            f"growth: {name}'s activation {act!r} has f(0) = {f0:g}, f'(0) = {slope:g}; a new unit needs f(0) = 0 (to "
            f"leave the function unchanged) and f'(0) != 0 (to get a gradient): tanh, linear, ... (TensorFlow's "
            f"relu'(0) is 0)"
        )
    return result


def incoming_slices(layer: keras.layers.Layer, unit: int) -> list[tuple[Any, tuple[Any, ...]]]:
    """``(variable, index)`` of unit ``unit``'s candidate-block incoming weights, in the order of
    M's columns (x̃: kernel column, recurrent-kernel column, bias entries).

    Example:
        >>> import keras
        >>> from adaptgrad.growth import incoming_slices
        >>> gru = keras.layers.GRU(3)
        >>> gru.build((None, 4, 2))
        >>> [(v.name, i) for v, i in incoming_slices(gru, 1)]
        [('kernel', (slice(None, None, None), 7)), ('recurrent_kernel', (slice(None, None, None), 7)), ('bias', (0, 7)), ('bias', (1, 7))]
    """
    recurrent = _instrument.is_recurrent(layer)
    owner = layer.cell if recurrent else layer
    lin = linearisation(layer)
    units = int(owner.kernel.shape[-1]) // lin.blocks
    column = unit + lin.block * units
    slices: list[tuple[Any, tuple[Any, ...]]] = [(owner.kernel, (slice(None), column))]
    if recurrent:
        slices.append((owner.recurrent_kernel, (slice(None), column)))
    if len(lin.bias) == 2:
        slices += [(owner.bias, (0, column)), (owner.bias, (1, column))]
    elif lin.bias:
        slices.append((owner.bias, (column,)))
    return slices


@dataclasses.dataclass(frozen=True)
class GrowthStatistic:
    """M summed over ``batches`` training batches, with the layer's :class:`Linearisation`.

    ``matrix`` has one row per outgoing coordinate (the consumer's ``outputs`` output features,
    then the layer's own recurrent-kernel columns) and one column per entry of x̃.
    """

    matrix: np.ndarray
    outputs: int
    batches: int
    linearisation: Linearisation

    def gradient(self, outgoing: np.ndarray) -> np.ndarray:
        """∂L/∂θ (summed over the batches) of a new unit with outgoing weights ``outgoing`` (one per row of M).

        Example:
            >>> import numpy as np
            >>> from adaptgrad.growth import GrowthStatistic, Linearisation
            >>> s = GrowthStatistic(np.eye(2), 2, 1, Linearisation(0, 1, 0.5, 0.0, 1.0, ()))
            >>> s.gradient(np.array([2.0, 0.0])).tolist()
            [1.0, 0.0]
        """
        return self.linearisation.kappa * np.asarray(outgoing, dtype=np.float64) @ self.matrix


def feedable(statistic: GrowthStatistic, active: np.ndarray) -> np.ndarray:
    """The rows of M (outgoing coordinates) a unit grown or revived now may feed, as a mask: the
    consumer's outputs and the recurrent-kernel columns of the active units (a gated unit's
    columns are its incoming weights, which stay 0).

    Example:
        >>> import numpy as np
        >>> from adaptgrad.growth import GrowthStatistic, Linearisation, feedable
        >>> s = GrowthStatistic(np.zeros((2 + 3 * 2, 5)), 2, 1, Linearisation(2, 3, 0.5, 0.5, 0.5, (1.0, 0.5)))
        >>> feedable(s, np.array([True, False])).astype(int).tolist()
        [1, 1, 1, 0, 1, 0, 1, 0]
    """
    own = statistic.matrix.shape[0] - statistic.outputs
    columns = np.tile(np.asarray(active, dtype=bool), statistic.linearisation.blocks) if own else np.zeros(0, dtype=bool)
    return np.concatenate([np.ones(statistic.outputs, dtype=bool), columns])


def revival_scores(statistic: GrowthStatistic, incoming: dict[int, np.ndarray], active: np.ndarray) -> np.ndarray:
    """κ‖P M θ_j‖ per unit: the norm of the gradient of the loss w.r.t. the outgoing weights of
    unit j revived with candidate-block incoming weights θ_j (``incoming[j]``, in M's column
    order) and outgoing weights 0, to first order in θ_j (P: the :func:`feedable` rows); 0 for
    units not in ``incoming``.

    A revived unit with outgoing weights 0 changes nothing at first, so only its outgoing weights
    get a gradient: Σ_s δ_s h_{j,s}, and h_{j,s} = κ θ_j·x̄_s to first order.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.growth import GrowthStatistic, Linearisation, revival_scores
        >>> s = GrowthStatistic(np.array([[1.0, 0.0], [0.0, 2.0]]), 2, 1, Linearisation(0, 1, 0.5, 0.0, 1.0, ()))
        >>> revival_scores(s, {1: np.array([0.0, 3.0])}, np.array([True, False])).tolist()
        [0.0, 3.0]
    """
    rows = statistic.matrix[feedable(statistic, active)]
    scores = np.zeros(np.asarray(active).size)
    for unit, theta in incoming.items():
        scores[unit] = abs(statistic.linearisation.kappa) * float(np.linalg.norm(rows @ np.asarray(theta, dtype=np.float64)))
    return scores


def saved_incoming(units: Any, unit: int) -> np.ndarray | None:
    """The candidate-block incoming weights a gated unit of ``units`` (a
    :class:`~adaptgrad.UnitView`) would be revived with, in M's column order; None if unknown."""
    saved = units.saved(unit)
    if saved is None:
        return None
    block = linearisation(units.layer).block
    return np.concatenate([np.ravel(saved[i][..., block]) for i in range(len(units.weights))]).astype(np.float64)


class GrowthWatch:
    """Accumulates the growth statistic M of one layer during training; see :func:`watch_growth`."""

    def __init__(self, model: keras.Model, layer: keras.layers.Layer, consumer: keras.layers.Layer) -> None:
        self.model, self.layer, self.consumer = model, layer, consumer
        self.linearisation = linearisation(layer)
        self.recurrent = _instrument.is_recurrent(layer)
        owner = layer.cell if self.recurrent else layer
        self._owner = owner
        units = int(owner.kernel.shape[-1]) // self.linearisation.blocks
        inputs = int(owner.kernel.shape[0])
        self.width = inputs + (units if self.recurrent else 0) + len(self.linearisation.bias)
        """D: the number of entries of x̃ (M's columns)."""
        self.outputs = int(consumer.kernel.shape[-1])
        self.recurrent_columns = int(owner.recurrent_kernel.shape[-1]) if self.recurrent else 0
        with tf.init_scope(), tf.distribute.get_strategy().scope():
            self._next = _sum_variable((self.width, self.outputs), f"adaptgrad_{layer.name}_growth_next")
            self._own = _sum_variable((self.width, max(self.recurrent_columns, 1)), f"adaptgrad_{layer.name}_growth_own")
            self._batches = _sum_variable((), f"adaptgrad_{layer.name}_growth_batches")
        self._pending: tf.Tensor | None = None  # x̄ at the step the consumer reads, between the two calls
        self._removed = False
        hooks = _instrument.hooks_of(layer)
        if self.recurrent:
            hooks.loop_wrappers.append(self._loop)
        else:
            hooks.call_wrappers.append(self._layer_call)
        _instrument.hooks_of(consumer).call_wrappers.append(self._consumer_call)
        _instrument.invalidate_compiled(model)

    # -- in the graph ---------------------------------------------------------------------------

    def _probe(self, shape: Any, anchor: Any, add: Callable[[tf.Tensor, tf.Tensor], Any], dtype: Any = None) -> tf.Tensor:
        """A zero tensor (``dtype``, default the layer's compute dtype) whose gradient (one
        batch's, unscaled, float32) goes to ``add(g, finite)`` inside the train step; under a loss
        scale, a batch whose gradient overflowed (Keras skips its step) gives zeros and ``finite``
        False."""
        zero = tf.cast(tf.reshape(anchor, [-1])[0], dtype or self.layer.compute_dtype) * 0

        @tf.custom_gradient
        def identity(a: tf.Tensor) -> Any:
            def grad(g: tf.Tensor) -> None:
                g = tf.cast(g, tf.float32)
                finite = tf.constant(True)
                scale = _loss_scale(self.model)
                if scale is not None:
                    finite = tf.reduce_all(tf.math.is_finite(g))
                    g = tf.where(finite, g / tf.cast(scale, tf.float32), tf.zeros_like(g))
                add(g, finite)
                return None

            return tf.identity(a), grad

        return identity(tf.fill(shape, zero))

    def _layer_call(self, call: Callable[..., Any], inputs: Any, *args: Any, **kwargs: Any) -> Any:
        x = tf.stop_gradient(tf.convert_to_tensor(inputs))
        ones = [tf.ones_like(x[..., :1])] if self.linearisation.bias else []
        self._pending = tf.concat([x, *ones], axis=-1)
        return call(inputs, *args, **kwargs)

    def _consumer_call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        xbar, self._pending = self._pending, None
        if xbar is None:  # the consumer called without the layer before it (not a training step of the pair)
            return call(*args, **kwargs)

        def add_rows(g: tf.Tensor, finite: tf.Tensor) -> tf.Operation:  # ∂L/∂A = Σ x̄ δᵀ of one batch
            return tf.group(self._next.assign_add(tf.cast(g, tf.float64)), self._batches.assign_add(tf.cast(finite, tf.float64)))

        a = self._probe((self.width, self.outputs), self.consumer.kernel, add_rows)
        delta = tf.tensordot(tf.cast(xbar, a.dtype), a, axes=[[len(xbar.shape) - 1], [0]])
        activation = self.consumer.activation or _identity
        with _shadowed(self.consumer, activation=lambda pre: activation(pre + tf.cast(delta, pre.dtype))):
            return call(*args, **kwargs)

    def _loop(self, loop: Callable[..., Any], sequences: Any, initial_state: Any, mask: Any, training: bool = False) -> Any:
        """The layer's time loop, carrying x̄ as one more state, with the recurrent pre-activation
        passed through :meth:`_rows` at every step: M's recurrent rows accumulate inside the
        backward loop as the gradient of a zero matrix A′ (see the module docstring)."""
        if mask is not None:
            raise ValueError(f"growth statistic of layer {self.layer.name!r}: masked sequences are not supported")
        cell, layer, lin = self._owner, self.layer, self.linearisation
        dtype = layer.compute_dtype
        a = self._probe((self.width, self.recurrent_columns), cell.kernel, self._add_own, dtype=tf.float32)
        batch = tf.shape(sequences)[0]
        entries = [tf.fill([batch, 1], tf.constant(value, dtype)) for value in lin.bias]  # x̃'s bias entries
        initial = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        opened = _cells.open_cell(cell, dtype)
        original, bias, columns = cell.call, getattr(cell, "bias", None), self.recurrent_columns
        loop_swaps: dict[str, Any] = {}
        paired = None
        if opened is not None:  # Keras's cells: the input projection before the loop (in the order the loop pops it)
            paired = opened.project(tf.transpose(sequences if layer.go_backwards else tf.reverse(sequences, [1]), [1, 0, 2]))
        elif isinstance(bias, keras.Variable):  # a user's cell: its bias, one row per example, goes through _rows
            step_bias = tf.broadcast_to(tf.cast(bias, dtype), [batch, columns])
        else:  # a user's cell without a bias: the input kernel gets identity rows, the input a zero through _rows
            kernel = tf.cast(cell.kernel, dtype)  # a variable read outside the cell is not autocast
            loop_swaps["kernel"] = tf.concat([kernel, tf.eye(columns, dtype=kernel.dtype)], axis=0)
            zeros = tf.zeros([batch, columns], dtype)

        def call(inputs: Any, states: Any, **kwargs: Any) -> Any:
            *states, xbar = states  # x̄_{t−1}
            x_t, projected = inputs if opened is not None else (inputs, None)
            h_tm1 = states[0]
            x_tilde = tf.concat([x_t, h_tm1 if lin.rho == 1.0 else lin.rho * h_tm1, *entries], axis=-1)

            def rows(value: tf.Tensor) -> tf.Tensor:
                return self._rows(value, a, xbar)

            if opened is not None:
                output, new_states = opened.step(projected, states, rows)
            elif loop_swaps:
                output, new_states = original(tf.concat([x_t, rows(zeros)], axis=-1), states, **kwargs)
            else:
                with _shadowed(cell, bias=rows(step_bias)):
                    output, new_states = original(x_t, states, **kwargs)
            new_states = list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]
            new_xbar = x_tilde if lin.decay == 0.0 else lin.decay * xbar + x_tilde
            return output, [*new_states, tf.stop_gradient(new_xbar)]  # M is a statistic: no gradient through x̄

        xbar0 = tf.zeros([batch, self.width], dtype)
        with _shadowed(cell, call=call, **loop_swaps):
            last, outputs, new_states = loop(sequences, [*initial, xbar0], mask, training=training, paired=paired)
        self._pending = new_states[-1]  # x̄ at the last step, read by the consumer
        return last, outputs, new_states[:-1]

    @staticmethod
    def _rows(value: tf.Tensor, a: tf.Tensor, xbar: tf.Tensor) -> tf.Tensor:
        """``value`` (a recurrent pre-activation term, batch × k·n); its gradient δ_t adds
        x̄_{t−1}ᵀ δ_t (float32) to the gradient of ``a``."""

        @tf.custom_gradient
        def identity(v: tf.Tensor, _: tf.Tensor) -> Any:
            def grad(g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return g, tf.matmul(tf.cast(xbar, tf.float32), tf.cast(g, tf.float32), transpose_a=True)

            return tf.identity(v), grad

        return identity(value, a)

    def _add_own(self, g: tf.Tensor, finite: tf.Tensor) -> tf.Operation:
        return self._own.assign_add(tf.cast(g, tf.float64))

    # -- in Python ------------------------------------------------------------------------------

    @property
    def batches(self) -> int:
        """Training batches accumulated since the last :meth:`reset` (a step Keras skipped for an
        overflowed loss-scaled gradient is not one)."""
        return int(round(float(self._batches.read_value().numpy())))

    def statistic(self) -> GrowthStatistic:
        """M over the training batches since the last :meth:`reset`.

        Raises:
            RuntimeError: no training batch has reached the layer since then.
        """
        self._check_attached()
        batches = self.batches
        if batches == 0:
            raise RuntimeError(
                f"no training batch has reached layer {self.layer.name!r} since the growth watch was attached or reset"
            )
        rows = [self._next.read_value().numpy().T]
        if self.recurrent:
            rows.append(self._own.read_value().numpy().T)
        return GrowthStatistic(np.concatenate(rows, axis=0), self.outputs, batches, self.linearisation)

    def reset(self) -> None:
        """Zero M and the batch count."""
        self._check_attached()
        for variable in (self._next, self._own, self._batches):
            variable.assign(np.zeros(variable.shape, np.float64))

    def get_state(self) -> dict[str, Any]:
        """The sums accumulated so far (see :meth:`set_state`)."""
        return {"next": self._next.numpy().copy(), "own": self._own.numpy().copy(), "batches": float(self._batches.numpy())}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""
        self._next.assign(state["next"])
        self._own.assign(state["own"])
        self._batches.assign(state["batches"])

    def remove(self) -> None:
        """Detach: the model then runs exactly as before :func:`watch_growth`."""
        if self._removed:
            return
        for layer, wrappers, wrapper in (
            (
                self.layer,
                "loop_wrappers" if self.recurrent else "call_wrappers",
                self._loop if self.recurrent else self._layer_call,
            ),
            (self.consumer, "call_wrappers", self._consumer_call),
        ):
            getattr(_instrument.hooks_of(layer), wrappers).remove(wrapper)
            _instrument.release(layer)
        _instrument.invalidate_compiled(self.model)
        self._removed = True

    def _check_attached(self) -> None:
        if self._removed:
            raise RuntimeError(f"this growth watch on layer {self.layer.name!r} was removed")

    def __repr__(self) -> str:
        return f"<GrowthWatch layer={self.layer.name!r} consumer={self.consumer.name!r}>"


def _identity(x: Any) -> Any:
    return x


_UNSET = object()


@contextlib.contextmanager
def _shadowed(owner: Any, **values: Any) -> Iterator[None]:
    """Set attributes on the instance ``owner`` for the block (while the step is traced), then put back what was there."""
    saved = {name: owner.__dict__.get(name, _UNSET) for name in values}
    for name, value in values.items():
        object.__setattr__(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _UNSET:
                object.__delattr__(owner, name)
            else:
                object.__setattr__(owner, name, value)


def _sum_variable(shape: tuple[int, ...], name: str) -> tf.Variable:
    return tf.Variable(
        tf.zeros(shape, tf.float64),
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.SUM,
    )


def _loss_scale(model: keras.Model) -> Any:
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return None
    return optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale


def watch_growth(
    model: keras.Model, layer: str | keras.layers.Layer, *, next_layer: str | keras.layers.Layer | None = None
) -> GrowthWatch:
    """Start accumulating the growth statistic M of ``layer`` in every training batch.

    Args:
        model: a built Keras 3 model (Sequential, functional or subclassed).
        layer: a Dense or recurrent layer (name or object); see the module docstring.
        next_layer: the ``Dense`` that reads ``layer``'s output; found in a Sequential or
            functional model, required in a subclassed one.

    Raises:
        ValueError: the layer or its consumer is not supported (the message says why).
    """
    target = find_layer(model, layer)
    if not target.built:
        raise ValueError(f"layer {target.name!r} is not built yet: call the model on a batch before watch_growth")
    if next_layer is not None:
        consumer = find_layer(model, next_layer)
    else:
        found = consumer_chain(target)
        if found is None:
            raise ValueError(
                f"growth: the layer that reads {target.name!r} is unknown (a subclassed model, or several consumers); "
                f"pass next_layer=<its name>"
            )
        chain, consumer = found
        if chain:
            raise ValueError(
                f"growth: {target.name!r} reaches {consumer.name!r} through {[step.name for step in chain]}; the growth "
                f"statistic needs a Dense that reads the layer's output directly"
            )
    if type(consumer) is not keras.layers.Dense:
        raise ValueError(
            f"growth: the consumer {consumer.name!r} of {target.name!r} is a {type(consumer).__name__}; it must be a Dense"
        )
    if _instrument.is_recurrent(target) and (target.return_sequences or target.return_state):
        raise ValueError(
            f"growth: recurrent layer {target.name!r} must return its last step only (return_sequences=False, "
            f"return_state=False) for the growth statistic"
        )
    if int(consumer.kernel.shape[0]) != _units(target):
        raise ValueError(
            f"growth: {consumer.name!r} reads {consumer.kernel.shape[0]} features, {target.name!r} has {_units(target)} units"
        )
    return GrowthWatch(model, target, consumer)


def _units(layer: keras.layers.Layer) -> int:
    return _instrument.hidden_units(layer) if _instrument.is_recurrent(layer) else int(layer.units)
