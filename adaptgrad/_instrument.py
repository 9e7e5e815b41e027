"""The one place where adaptgrad hooks into a Keras layer instance.

A layer gets at most one :class:`Hooks` object. It replaces, on that instance only, the methods
through which Keras runs the layer, and reads its slots *when the train step is traced*:

* ``layer.call``: the output passes through ``output_probe`` (output-mode capture) after
  ``output_mask`` (unit gating of non-recurrent layers) has been multiplied in;
* ``cell.call`` of a recurrent layer: ``cell_mask`` is multiplied into the output and every
  per-unit state, so a gated unit is exactly 0 inside the recurrence;
* ``layer.inner_loop`` of a recurrent layer: runs the time loop itself when ``time_probe`` is set
  (through-time capture, see :func:`through_time_loop`).

Because the slots are read at trace time, every change of a slot invalidates the model's
compiled train/test/predict functions so that the next ``fit`` retraces them. Values that change
between epochs (mask entries) live in variables the graph reads, so they need no retrace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from adaptgrad import _keras

Probe = Callable[[tf.Tensor], tf.Tensor]
TimeProbe = Callable[[tf.Tensor, Callable[[], tuple[tf.Tensor, tf.Tensor | None]]], tf.Tensor]
"""``time_probe(z, hidden)``: ``hidden()`` gives the hidden states ``(steps, batch, units)`` and
the 0/1 weights ``(steps, batch)`` of the steps the mask keeps (None: no mask)."""

_ATTR = "_adaptgrad_hooks"
_UNSET = object()


def is_recurrent(layer: keras.layers.Layer) -> bool:
    """True for ``keras.layers.RNN`` and its subclasses (SimpleRNN, GRU, LSTM)."""
    return isinstance(layer, keras.layers.RNN)


class Hooks:
    """The slots adaptgrad fills on one layer; see the module docstring."""

    def __init__(self, layer: keras.layers.Layer) -> None:
        self.layer = layer
        self.output_probe: Probe | None = None
        self.time_probe: TimeProbe | None = None
        self.output_mask: keras.Variable | None = None
        self.cell_mask: keras.Variable | None = None
        self._replaced: list[tuple[Any, str, Any]] = []
        self._original_call = self._replace(layer, "call", self._call)
        if is_recurrent(layer):
            self._original_cell_call = self._replace(layer.cell, "call", self._cell_call)
            self._original_inner_loop = self._replace(layer, _keras.RNN_INNER_LOOP, self._inner_loop)

    def _replace(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> Callable[..., Any]:
        """Shadow ``owner.name`` by ``wrapper`` on the instance; return the original method."""
        original = getattr(owner, name)
        self._replaced.append((owner, name, owner.__dict__.get(name, _UNSET)))
        object.__setattr__(owner, name, wrapper)
        return original

    @property
    def in_use(self) -> bool:
        return any(
            slot is not None
            for slot in (self.output_probe, self.time_probe, self.output_mask, self.cell_mask)
        )

    def uninstall(self) -> None:
        """Restore the layer's own methods (only once no slot is in use)."""
        for owner, name, saved in reversed(self._replaced):
            if saved is _UNSET:
                object.__delattr__(owner, name)
            else:
                object.__setattr__(owner, name, saved)
        object.__delattr__(self.layer, _ATTR)

    # -- the wrappers -------------------------------------------------------------------------

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self._original_call(*args, **kwargs)
        if self.output_mask is None and self.output_probe is None:
            return outputs
        rest: list[Any] = []
        if isinstance(outputs, (list, tuple)):  # RNN with return_state=True
            outputs, *rest = outputs
        if self.output_mask is not None:
            outputs = outputs * tf.cast(self.output_mask, outputs.dtype)
        if self.output_probe is not None:
            outputs = self.output_probe(outputs)
        return [outputs, *rest] if rest else outputs

    def _cell_call(self, inputs: Any, states: Any, **kwargs: Any) -> Any:
        output, new_states = self._original_cell_call(inputs, states, **kwargs)
        if self.cell_mask is None:
            return output, new_states
        mask = tf.cast(self.cell_mask, output.dtype)
        units = mask.shape[0]

        def gate(state: Any) -> Any:
            return state * mask if state.shape[-1] == units else state

        if isinstance(new_states, (list, tuple)):
            return output * mask, [gate(s) for s in new_states]
        return output * mask, gate(new_states)

    def _inner_loop(self, sequences: Any, initial_state: Any, mask: Any, training: bool = False) -> Any:
        if self.time_probe is None:
            return self._original_inner_loop(sequences, initial_state, mask, training=training)
        return through_time_loop(self.layer, self.time_probe, sequences, initial_state, mask, training)


def hooks_of(layer: keras.layers.Layer) -> Hooks:
    """The layer's :class:`Hooks`, installed on first use."""
    hooks = layer.__dict__.get(_ATTR)
    if hooks is None:
        hooks = Hooks(layer)
        object.__setattr__(layer, _ATTR, hooks)
    return hooks


def release(layer: keras.layers.Layer) -> None:
    """Uninstall the layer's hooks if no slot is in use any more."""
    hooks = layer.__dict__.get(_ATTR)
    if hooks is not None and not hooks.in_use:
        hooks.uninstall()


def invalidate_compiled(model: keras.Model) -> None:
    """Drop the model's traced train/test/predict functions so the next call retraces them."""
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def through_time_loop(
    layer: keras.layers.RNN,
    time_probe: TimeProbe,
    sequences: tf.Tensor,
    initial_state: list[tf.Tensor],
    mask: Any,
    training: bool,
) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
    """The RNN time loop with an all-zero sequence ``z`` added to the hidden state at every step.

    ``z`` passes through ``time_probe`` outside the loop, so the probe's upstream gradient is
    ``dL/dh_t`` at every step t, including the path through later steps. ``z`` is filled with
    the cell's first trainable weight times zero so that the tape records it at all. The hidden
    states of every step are handed to the probe for the activation terms, with the mask: a
    masked step has no hidden state of its own (Keras carries the previous one), so it counts
    for nothing.

    How ``z`` enters the loop decides what the capture costs, because every op of a while loop
    costs ~10 µs per step. In a while loop without a mask, ``z`` is a TensorList carried as one
    more state and popped once per step: the backward loop then pushes each step's gradient, one
    op. Otherwise ``z`` is a second input sequence: Keras masks every state (a list cannot be
    masked), and an unrolled loop slices its inputs cheaply, whereas a while loop's per-step
    reads cost about six more ops in its backward loop. The loop runs time-major, and ``add_n``
    adds ``z_t`` once to the state that is also the output.
    """
    cell = layer.cell
    units = hidden_units(layer)
    anchor = next((w for w in cell.trainable_weights), None)
    if anchor is None:
        raise ValueError(
            f"through-time capture on layer {layer.name!r} needs a trainable weight in its cell"
        )
    time_major = tf.transpose(sequences, [1, 0, *range(2, len(sequences.shape))])
    kept = None
    if mask is not None:
        mask = tf.transpose(mask, [1, 0, *range(2, len(mask.shape))])
        kept = tf.reshape(tf.cast(mask, sequences.dtype), tf.shape(mask)[:2])
    zero = tf.cast(tf.reshape(anchor, [-1])[0], sequences.dtype) * 0
    z = tf.fill(tf.concat([tf.shape(time_major)[:2], [units]], axis=0), zero)
    hidden: dict[str, tf.Tensor] = {}
    z = time_probe(z, lambda: (hidden["h"], kept))
    cell_kwargs = {"training": training} if _keras.call_takes_training(cell) else {}
    shared: list[bool] = []  # is the cell's output its first state? (seen when the step is traced)

    def cell_step(x: tf.Tensor, states: list[tf.Tensor], z_t: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        output, new_states = cell(x, states, **cell_kwargs)
        new_states = list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]
        shared[:] = [output is new_states[0]]
        new_states[0] = tf.math.add_n([new_states[0], z_t])
        return (new_states[0] if shared[0] else tf.math.add_n([output, z_t])), new_states

    loop = dict(
        go_backwards=layer.go_backwards,
        mask=mask,
        unroll=layer.unroll,
        input_length=sequences.shape[1],
        time_major=True,
        zero_output_for_mask=layer.zero_output_for_mask,
        return_all_outputs=True,
    )
    if mask is None and not layer.unroll:
        element_shape = tf.constant([-1, units])
        z_list = tf.raw_ops.TensorListFromTensor(tensor=z, element_shape=element_shape)

        def step(x: tf.Tensor, states: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
            *states, rest = states
            rest, z_t = tf.raw_ops.TensorListPopBack(input_handle=rest, element_shape=element_shape, element_dtype=z.dtype)
            output, new_states = cell_step(x, states, z_t)
            return output, [*new_states, rest]

        last_output, outputs, new_states = _keras.rnn(step, time_major, [*initial_state, z_list], **loop)
        new_states = list(new_states)[:-1]
        hidden["h"] = tf.reverse(outputs, axis=[0])  # step i popped z[T-1-i]
        if shared[0]:  # the same value; this way no gradient flows into the collected outputs
            last_output = new_states[0]
    else:

        def step(inputs: tuple[tf.Tensor, tf.Tensor], states: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
            return cell_step(inputs[0], list(states), inputs[1])

        last_output, outputs, new_states = _keras.rnn(step, (time_major, z), initial_state, **loop)
        hidden["h"] = tf.reverse(outputs, axis=[0]) if layer.go_backwards else outputs
    return last_output, tf.transpose(outputs, [1, 0, 2]), new_states


def hidden_units(layer: keras.layers.RNN) -> int:
    """Width of the hidden state that is also the cell's output (state 0)."""
    cell = layer.cell
    state_size = cell.state_size
    first = state_size[0] if isinstance(state_size, (list, tuple)) else state_size
    output_size = getattr(cell, "output_size", first)
    if not isinstance(first, int) or first != output_size:
        raise ValueError(
            f"through-time capture needs a cell whose output is its first state; "
            f"{type(cell).__name__} of layer {layer.name!r} has state_size={state_size!r} "
            f"and output_size={output_size!r}"
        )
    return first
