"""Capture the loss gradient with respect to any layer's output, inside ``model.fit``.

Example:
    >>> import adaptgrad
    >>> from adaptgrad.question import question_model, toy_data
    >>> model = question_model()
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = toy_data()
    >>> with adaptgrad.watch(model, "minimalrnn") as w:
    ...     _ = model.fit(x, y, epochs=1, batch_size=1, verbose=0)
    ...     w.stats().batches
    2

The watched layer's output passes through an identity whose gradient function adds the
requested per-unit reductions of ``G = dL/dH`` (and of ``H*G``) into non-trainable variables.
It runs inside the graph Keras compiles, so there is no per-batch Python callback; validation
and prediction never compute a gradient, so they are never counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from adaptgrad import _instrument, slots
from adaptgrad.layers import find_layer
from adaptgrad.stats import ACTIVATION_FIELDS, SUM_FIELDS, WEIGHT_FIELDS, OutputGradientStats, requested_fields
from adaptgrad.units import incoming_weights, weight_owner

__all__ = ["GradientWatch", "watch"]


class _Accumulators:
    """Per-unit float64 sums, one variable per captured field, summed across replicas on read."""

    def __init__(self, units: int, name: str, fields: frozenset[str], strategy: tf.distribute.Strategy) -> None:
        def variable(shape: tuple[int, ...], field: str) -> tf.Variable:
            return tf.Variable(
                tf.zeros(shape, tf.float64),
                trainable=False,
                name=f"adaptgrad_{name}_{field}",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM,
            )

        with tf.init_scope(), strategy.scope():
            self.sums = {field: variable((units,), field) for field in SUM_FIELDS if field in fields}
            self.batches = variable((), "batches")
            self.count = variable((), "count")
            self.weight_steps = variable((), "weight_steps") if fields & WEIGHT_FIELDS else None
        self.units = units

    def update(
        self,
        g: tf.Tensor,
        loss_scale: tf.Tensor | None,
        h: tf.Tensor | None = None,
        kept: tf.Tensor | None = None,
        example_axis: int = 0,
    ) -> tf.Operation:
        """Add one batch's reductions of G and H (same shape, units on the last axis; H only
        when an activation field is captured); ``kept`` (0/1, G's shape without the units)
        leaves out the positions that are 0 there; ``example_axis`` is the axis of the examples
        (1 for time-major sequences)."""
        g = tf.cast(g, tf.float32)
        if loss_scale is not None:
            g = g / tf.cast(loss_scale, tf.float32)
        if h is not None:
            h = tf.cast(h, tf.float32)
        axes = list(range(len(g.shape) - 1))
        positions = tf.cast(tf.reduce_prod(tf.shape(g)[:-1]), tf.float64)
        if kept is not None:
            kept = tf.cast(kept, tf.float32)
            g = g * kept[..., None]
            h = None if h is None else h * kept[..., None]
            positions = tf.reduce_sum(tf.cast(kept, tf.float64))
        replica = tf.distribute.get_replica_context()
        replicas = replica.num_replicas_in_sync if replica is not None else 1
        values = {name: compute(g, h, axes) for name, compute in _REDUCTIONS.items() if name in self.sums}
        if "act_grad_batch_sq_sum" in self.sums:
            batch_hg = values["act_grad_sum"] if "act_grad_sum" in values else _REDUCTIONS["act_grad_sum"](g, h, axes)
            if replicas > 1:  # the per-batch Taylor term squares the *global* batch sum
                batch_hg = replica.all_reduce(tf.distribute.ReduceOp.SUM, batch_hg)
            values["act_grad_batch_sq_sum"] = tf.square(batch_hg) / replicas
        if self.sums.keys() & {*_EXAMPLE_REDUCTIONS, "act_grad_fisher_sum"}:  # each example's Taylor term, over its steps
            steps = [axis for axis in axes if axis != example_axis]
            per_example = tf.reduce_sum(h * g, axis=steps) if steps else h * g
            for name, compute in _EXAMPLE_REDUCTIONS.items():
                if name in self.sums:
                    values[name] = tf.reduce_sum(compute(per_example), axis=0)
            if "act_grad_fisher_sum" in self.sums:  # the global batch size: G is of the global batch's mean loss
                examples = tf.cast(tf.shape(per_example)[0] * replicas, tf.float32)
                values["act_grad_fisher_sum"] = examples * tf.reduce_sum(tf.square(per_example), axis=0)
        values = {k: tf.cast(v, tf.float64) for k, v in values.items()}
        batch_share = tf.constant(1.0 / replicas, tf.float64)
        if loss_scale is not None:  # a step with an overflowed gradient is skipped by Keras too
            finite = tf.reduce_all(tf.math.is_finite(g))
            values = {k: tf.where(finite, v, tf.zeros_like(v)) for k, v in values.items()}
            batch_share = tf.where(finite, batch_share, tf.zeros_like(batch_share))
            positions = tf.where(finite, positions, tf.zeros_like(positions))
        ops = [self.sums[k].assign_add(v) for k, v in values.items()]
        ops.append(self.batches.assign_add(batch_share))
        ops.append(self.count.assign_add(positions))
        return tf.group(*ops)

    def update_weight_grads(self, grads: list[tuple[tf.Tensor, int]]) -> tf.Operation:
        """Add one step's ``||dL/dW_j||**2`` per unit j, from the gradients of the layer's incoming
        weights, each with its number of gate blocks. Across replicas the gradient is the sum of
        theirs (as the optimizer's), so it is all-reduced before it is squared."""
        tensors = [tf.convert_to_tensor(g) for g, _ in grads]
        replica = tf.distribute.get_replica_context()
        replicas = replica.num_replicas_in_sync if replica is not None else 1
        if replicas > 1:
            tensors = replica.all_reduce(tf.distribute.ReduceOp.SUM, tensors)
        squares = [
            tf.reduce_sum(tf.reshape(tf.square(tf.cast(g, tf.float64)), [-1, blocks, self.units]), axis=[0, 1])
            for g, (_, blocks) in zip(tensors, grads)
        ]
        share = tf.constant(1.0 / replicas, tf.float64)  # each replica adds the same global value
        assert self.weight_steps is not None
        return tf.group(
            self.sums["weight_grad_sq_sum"].assign_add(tf.math.add_n(squares) * share), self.weight_steps.assign_add(share)
        )

    def snapshot(self) -> OutputGradientStats:
        sums = {k: v.read_value().numpy() for k, v in self.sums.items()}
        if self.weight_steps is not None and float(self.weight_steps.read_value().numpy()) == 0.0:
            for field in WEIGHT_FIELDS:  # no optimizer step passed through the hook: not captured, not zeros
                sums.pop(field)
        return OutputGradientStats(
            **sums,
            units=self.units,
            batches=int(round(float(self.batches.read_value().numpy()))),
            count=int(round(float(self.count.read_value().numpy()))),
        )

    def reset(self) -> None:
        for variable in (*self.sums.values(), self.batches, self.count, self.weight_steps):
            if variable is not None:
                variable.assign(np.zeros(variable.shape, np.float64))


_REDUCTIONS: dict[str, Callable[[tf.Tensor, tf.Tensor | None, list[int]], tf.Tensor]] = {
    "grad_sum": lambda g, h, axes: tf.reduce_sum(g, axis=axes),
    "grad_abs_sum": lambda g, h, axes: tf.reduce_sum(tf.abs(g), axis=axes),
    "grad_sq_sum": lambda g, h, axes: tf.reduce_sum(tf.square(g), axis=axes),  # XLA on CPU has no EuclideanNorm
    "act_grad_sum": lambda g, h, axes: tf.reduce_sum(h * g, axis=axes),
    "act_abs_sum": lambda g, h, axes: tf.reduce_sum(tf.abs(h), axis=axes),
}
"""The per-unit reductions of one batch (``act_grad_batch_sq_sum`` squares the batch's H*G sum)."""

_EXAMPLE_REDUCTIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "act_grad_example_sq_sum": tf.square,
    "act_grad_example_abs_sum": tf.abs,
}
"""What is summed over the examples of a batch of their own H*G sums (shape ``(examples, units)``)."""


class GradientWatch:
    """Accumulates per-unit statistics of ``dL/d(output)`` of one layer; see :func:`watch`.

    Example:
        >>> import adaptgrad, keras, numpy as np
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
        ...                           keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> w = adaptgrad.watch(model, "hidden", stats=["grad_sum", "act_grad_sum"])
        >>> _ = model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, verbose=0)
        >>> w.stats().grad_sum.shape, w.stats().batches, sorted(w.fields)
        ((4,), 2, ['act_grad_sum', 'grad_sum'])
        >>> w.remove()
    """

    def __init__(self, model: keras.Model, layer: keras.layers.Layer, through_time: bool, fields: frozenset[str]) -> None:
        self.model = model
        self.layer = layer
        self.through_time = through_time
        self.fields = fields
        """The sums this watch captures (:data:`~adaptgrad.stats.SUM_FIELDS` names)."""
        self._strategy = tf.distribute.get_strategy()
        self._accumulators: _Accumulators | None = None
        self._optimizers: dict[int, _instrument.ApplyHooks] = {}  # hooked for the weight-gradient sum
        self._removed = False
        width = _known_width(layer)
        if width is not None:  # made now: a variable made while fit traces its step makes TensorFlow trace it twice
            self._accumulators = _Accumulators(width, layer.name, fields, self._strategy)
        hooks = _instrument.hooks_of(layer)
        if hooks.output_probe is not None or hooks.time_probe is not None:
            raise ValueError(
                f"layer {layer.name!r} is already watched; call .remove() on the existing "
                f"GradientWatch first (one watch per layer)"
            )
        if through_time:
            hooks.time_probe = _TimeProbe(self)
        else:
            hooks.output_probe = self._output_probe
        _instrument.invalidate_compiled(model)

    # -- in the graph ---------------------------------------------------------------------------

    def _accumulators_for(self, units: int) -> _Accumulators:
        """The accumulators (made on first use), and the hook on the model's optimizer that
        captures the weight-gradient sum; both run when the layer is called in a traced (or
        eager) step, before the optimizer applies that step's gradients."""
        if self._accumulators is None:
            self._accumulators = _Accumulators(units, self.layer.name, self.fields, self._strategy)
        elif self._accumulators.units != units:
            raise ValueError(
                f"layer {self.layer.name!r} outputs {units} units, but its watch was made for {self._accumulators.units}"
            )
        if self.fields & WEIGHT_FIELDS:
            self._hook_optimizer()
        return self._accumulators

    def _hook_optimizer(self) -> None:
        """Listen to the gradients of ``model.optimizer`` (the one a LossScaleOptimizer wraps: it
        gets them with the loss scale divided out, and only on the steps that are applied)."""
        optimizer = slots.inner_optimizer(getattr(self.model, "optimizer", None))
        if optimizer is None or id(optimizer) in self._optimizers:
            return
        hooks = _instrument.apply_hooks_of(optimizer)
        hooks.listeners[id(self)] = self._weight_gradients
        self._optimizers[id(optimizer)] = hooks

    def _weight_gradients(self, grads: list[Any], variables: list[Any]) -> None:
        """The optimizer's listener: add the per-unit squared norm of this step's gradient of the
        layer's incoming weights (nothing if the step holds none of them)."""
        if self._accumulators is None:
            return
        by_variable = {id(v): g for g, v in zip(grads, variables) if g is not None}
        found = [(by_variable[id(v)], blocks) for v, blocks, _ in incoming_weights(self.layer)[0] if id(v) in by_variable]
        if found:
            self._accumulators.update_weight_grads(found)

    def _loss_scale(self) -> tf.Tensor | None:
        optimizer = getattr(self.model, "optimizer", None)
        if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return None
        return optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale

    def _output_probe(self, h: tf.Tensor) -> tf.Tensor:
        accumulators = self._accumulators_for(int(h.shape[-1]))

        @tf.custom_gradient
        def identity(x: tf.Tensor) -> Any:
            def grad(g: tf.Tensor) -> tf.Tensor:
                # no control dependency: the update runs beside the rest of backpropagation, not
                # in its way (tf.function runs every stateful op it traced; eager runs it now)
                accumulators.update(g, self._loss_scale(), x if self.fields & ACTIVATION_FIELDS else None)
                return g

            return tf.identity(x), grad

        return identity(h)

    # -- in Python ------------------------------------------------------------------------------

    def stats(self) -> OutputGradientStats:
        """A snapshot of the statistics accumulated since the last :meth:`reset`.

        Raises:
            RuntimeError: if no gradient has reached the layer since the last reset — its output
                does not reach the loss, nothing trainable lies upstream of it, or no training
                batch has run yet. adaptgrad never returns silent zeros.
        """
        self._check_attached()
        snapshot = self._accumulators.snapshot() if self._accumulators is not None else None
        if snapshot is None or snapshot.batches == 0:
            raise RuntimeError(
                f"no gradient has reached layer {self.layer.name!r} since the watch was attached "
                f"or last reset. Either no training batch has run yet, or no gradient can flow "
                f"to this layer's output: it does not reach the loss, or nothing trainable lies "
                f"upstream of it (a frozen layer directly after the input)."
            )
        return snapshot

    def reset(self) -> None:
        """Zero the accumulators (the :class:`Adapt` callback does this after every epoch)."""
        self._check_attached()
        if self._accumulators is not None:
            self._accumulators.reset()

    def remove(self) -> None:
        """Detach: the model then runs and trains exactly as it did before :func:`watch`."""
        if self._removed:
            return
        hooks = _instrument.hooks_of(self.layer)
        hooks.output_probe = None
        hooks.time_probe = None
        _instrument.release(self.layer)
        for optimizer_hooks in self._optimizers.values():
            optimizer_hooks.listeners.pop(id(self), None)
            optimizer_hooks.release()
        self._optimizers.clear()
        _instrument.invalidate_compiled(self.model)
        self._removed = True

    @property
    def units(self) -> int | None:
        """Number of units: known when the watch is made on a ``Dense`` or recurrent layer, else
        once the layer has run with the watch attached."""
        return None if self._accumulators is None else self._accumulators.units

    def _check_attached(self) -> None:
        if self._removed:
            raise RuntimeError(f"this watch on layer {self.layer.name!r} was removed")

    def __enter__(self) -> GradientWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        mode = "through_time" if self.through_time else "output"
        state = "removed" if self._removed else "attached"
        return f"<GradientWatch layer={self.layer.name!r} mode={mode} {state}>"


def _known_width(layer: keras.layers.Layer) -> int | None:
    """The width of the layer's output (its last axis) when its kind says it before it runs: a
    ``Dense`` layer's ``units``, a recurrent layer's hidden state; None otherwise."""
    if isinstance(layer, keras.layers.Dense):
        return int(layer.units)
    if _instrument.is_recurrent(layer):
        try:
            return _instrument.hidden_units(layer)
        except ValueError:  # a cell whose output is not its state: known when the layer runs
            return None
    return None


def _has_unit_weights(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is of a kind whose units have incoming weights (checked before it is built)."""
    return (
        isinstance(layer, keras.layers.Dense)
        or _instrument.is_recurrent(layer)
        or hasattr(weight_owner(layer), "adaptgrad_unit_weights")
    )


class _TimeProbe:
    """The through-time probe of a watch (see :func:`adaptgrad._instrument.through_time_loop`)."""

    def __init__(self, watch: GradientWatch) -> None:
        self.watch = watch
        self.needs_hidden = bool(watch.fields & ACTIVATION_FIELDS)

    def __call__(self, z: tf.Tensor, hidden: Callable[[], tuple[tf.Tensor | None, tf.Tensor | None]]) -> tf.Tensor:
        accumulators = self.watch._accumulators_for(int(z.shape[-1]))

        @tf.custom_gradient
        def identity(x: tf.Tensor) -> Any:
            def grad(g: tf.Tensor) -> None:
                h, kept = hidden()
                accumulators.update(g, self.watch._loss_scale(), h, kept, example_axis=1)  # time-major
                return None  # z is a stand-in: no gradient flows on to the weight it is tied to

            return tf.identity(x), grad

        return identity(z)


def watch(
    model: keras.Model, layer: str | keras.layers.Layer, *, through_time: bool = False, stats: Iterable[str] | None = None
) -> GradientWatch:
    """Start accumulating per-unit statistics of ``dL/d(layer output)`` for every trained batch.

    Example:
        >>> import adaptgrad
        >>> from adaptgrad.question import question_model, toy_data
        >>> model = question_model()                      # a subclassed model, never called
        >>> model.compile(optimizer="adam", loss="mse")
        >>> w = adaptgrad.watch(model, "minimalrnn", through_time=True)
        >>> x, y = toy_data()
        >>> _ = model.fit(x, y, epochs=2, batch_size=1, verbose=0)
        >>> s = w.stats()
        >>> s.batches, s.count                             # 2 epochs x 2 batches, x 5 steps
        (4, 20)

    Args:
        model: any Keras 3 model — Sequential, functional or subclassed; built or not, compiled
            or not. Works in ``model.fit`` (``jit_compile`` on or off, ``steps_per_execution``,
            ``run_eagerly``) and in a hand-written ``GradientTape`` loop, eager or in a
            ``tf.function`` (trace it after calling ``watch``).
        layer: a layer name (layers nested in sub-models included) or the layer object.
        through_time: for a recurrent layer (``keras.layers.RNN`` with any cell whose output is
            its first state: ``SimpleRNN``, ``GRU``, ``LSTM``, ``MinimalRNNCell``...), capture the
            hidden state at every step and the *total* gradient there, including the path
            through later steps, whatever ``return_sequences`` is.
        stats: the sums to capture, names from :data:`~adaptgrad.stats.SUM_FIELDS` (None: all).
            Only these are computed in the graph; the others are absent from ``.stats()``.
            Without an activation sum (``act_grad_sum``, ``act_grad_batch_sq_sum``,
            ``act_abs_sum``) through-time capture never collects the hidden states, and
            ``stats=()`` counts batches and positions only. ``weight_grad_sq_sum`` (the
            per-unit norm of the incoming weights' gradient, for LARS) is captured where
            ``model.optimizer`` applies each step's gradients, before clipping or weight decay:
            in ``fit``, or in a loop that calls ``model.optimizer``. Under a
            ``LossScaleOptimizer`` it sees the gradients with the loss scale divided out and
            only on applied steps; under ``MirroredStrategy`` the layer's weight gradients are
            all-reduced once more for it. ``stats=None`` leaves it out for a layer without
            per-unit weights; a snapshot leaves it out when no step passed through
            ``model.optimizer`` (reading it then says why).

    Returns:
        A :class:`GradientWatch`; use ``.stats()``, ``.reset()``, ``.remove()``, or ``with``.

    Raises:
        ValueError: unknown layer name (the message lists the model's layers), ``through_time``
            on a non-recurrent layer, an unknown ``stats`` name (the message lists the valid
            ones), or a layer that is already watched.
    """
    fields = requested_fields(stats)
    target = find_layer(model, layer)
    if fields & WEIGHT_FIELDS and not _has_unit_weights(target):
        if stats is not None:
            raise ValueError(
                f"stats={sorted(fields & WEIGHT_FIELDS)} needs per-unit incoming weights, and layer {target.name!r} "
                f"({type(target).__name__}) has none adaptgrad knows: valid for Dense, SimpleRNN, GRU, LSTM, RNN over a "
                f"Keras-style cell, or a layer or cell defining adaptgrad_unit_weights()"
            )
        fields -= WEIGHT_FIELDS  # stats=None: every sum this layer has
    if through_time:
        if not _instrument.is_recurrent(target):
            raise ValueError(
                f"through_time=True needs a recurrent layer (keras.layers.RNN, SimpleRNN, GRU, "
                f"LSTM); layer {target.name!r} is a {type(target).__name__}. Use "
                f"through_time=False to capture its output."
            )
        _instrument.hidden_units(target)
    return GradientWatch(model, target, through_time, fields)
