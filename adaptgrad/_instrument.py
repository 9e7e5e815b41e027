"""The one place where adaptgrad hooks into a Keras layer (or optimizer) instance.

A layer gets at most one :class:`Hooks` object. It replaces, on that instance only, the methods
through which Keras runs the layer, and reads its slots *when the train step is traced*:

* ``layer.call``: the output passes through ``output_probe`` (output-mode capture);
* ``layer.inner_loop`` of a recurrent layer: runs the time loop itself when ``time_probe`` is set
  (through-time capture, see :func:`through_time_loop`); otherwise the layer's own loop runs,
  with its own kernel choice (cuDNN for GRU/LSTM where available);
* ``call_wrappers`` and ``loop_wrappers``: functions ``wrapper(run, *args, **kwargs)`` placed
  around the layer's call and its time loop (the growth statistic, :mod:`adaptgrad.growth`),
  the first one innermost. With a loop wrapper the loop is :func:`through_time_loop` or
  :func:`generic_loop`, which carry every state the wrapper adds (GRU's and LSTM's own loops
  keep only theirs); a wrapper may give each step a second input (``paired``: a nest of
  time-major sequences, step i of the loop gets ``paired[T−1−i]``, the order in which the lean
  loop pops them, so that neither they nor their gradients are reversed or transposed).

and on an optimizer instance, :class:`ApplyHooks` replaces ``optimizer.apply`` so that listeners
see each step's gradients before the optimizer uses them (the per-unit weight-gradient statistic).

Because the slots are read at trace time, every change of a slot invalidates the model's
compiled train/test/predict functions so that the next ``fit`` retraces them. (Unit gating needs
no hook: it lives in the layer's weights and constraints, see :mod:`adaptgrad.units`.)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import keras
import tensorflow as tf

from adaptgrad import _keras

Probe = Callable[[tf.Tensor], tf.Tensor]
GradientListener = Callable[[list[Any], list[Any]], None]
"""``listener(grads, variables)``: called with one step's gradients (None where a variable has
none) and the variables they belong to, when the step is traced (or run, eagerly)."""

Wrapper = Callable[..., Any]
"""``wrapper(run, *args, **kwargs)``: calls ``run(*args, **kwargs)`` (possibly with other arguments) and returns its result."""


class TimeProbe(Protocol):
    """``time_probe(z, hidden)``: ``hidden()`` gives the hidden states ``(steps, batch, units)``
    (None unless ``needs_hidden``) and the 0/1 weights ``(steps, batch)`` of the steps the mask
    keeps (None: no mask)."""

    needs_hidden: bool

    def __call__(self, z: tf.Tensor, hidden: Callable[[], tuple[tf.Tensor | None, tf.Tensor | None]]) -> tf.Tensor: ...


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
        self.call_wrappers: list[Wrapper] = []
        self.loop_wrappers: list[Wrapper] = []
        self._replaced: list[tuple[Any, str, Any]] = []
        self._original_call = self._replace(layer, "call", self._call)
        if is_recurrent(layer):
            self._original_inner_loop = self._replace(layer, _keras.RNN_INNER_LOOP, self._inner_loop)

    def _replace(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> Callable[..., Any]:
        """Shadow ``owner.name`` by ``wrapper`` on the instance; return the original method."""
        original = getattr(owner, name)
        self._replaced.append((owner, name, owner.__dict__.get(name, _UNSET)))
        object.__setattr__(owner, name, wrapper)
        return original

    @property
    def in_use(self) -> bool:
        return self.output_probe is not None or self.time_probe is not None or bool(self.call_wrappers or self.loop_wrappers)

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
        outputs = _wrapped(self._original_call, self.call_wrappers)(*args, **kwargs)
        if self.output_probe is None:
            return outputs
        rest: list[Any] = []
        if isinstance(outputs, (list, tuple)):  # RNN with return_state=True
            outputs, *rest = outputs
        outputs = self.output_probe(outputs)
        return [outputs, *rest] if rest else outputs

    def _inner_loop(self, sequences: Any, initial_state: Any, mask: Any, training: bool = False) -> Any:
        if self.time_probe is None and not self.loop_wrappers:
            return self._original_inner_loop(sequences, initial_state, mask, training=training)

        def loop(sequences: Any, initial_state: Any, mask: Any, training: bool = False, paired: Any = None) -> Any:
            if self.time_probe is None:
                return generic_loop(self.layer, sequences, initial_state, mask, training, paired)
            return through_time_loop(self.layer, self.time_probe, sequences, initial_state, mask, training, paired)

        return _wrapped(loop, self.loop_wrappers)(sequences, initial_state, mask, training=training)


def _wrapped(run: Callable[..., Any], wrappers: list[Wrapper]) -> Callable[..., Any]:
    """``run`` inside every wrapper, the first innermost."""
    for wrapper in wrappers:
        run = functools.partial(wrapper, run)
    return run


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


class ApplyHooks:
    """The listeners to one optimizer instance's gradients: shadows ``optimizer.apply`` on the
    instance (``apply_gradients`` calls it) by a function that shows the gradients to every
    listener, then applies them as before."""

    def __init__(self, optimizer: keras.optimizers.Optimizer) -> None:
        self.optimizer = optimizer
        self.listeners: dict[int, GradientListener] = {}
        self._saved = optimizer.__dict__.get("apply", _UNSET)
        original = optimizer.apply

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            grads = list(grads)
            variables = list(trainable_variables) if trainable_variables is not None else _keras.optimizer_variables(optimizer)
            for listener in list(self.listeners.values()):
                listener(grads, variables)
            return original(grads, trainable_variables)

        object.__setattr__(optimizer, "apply", apply)
        object.__setattr__(optimizer, _ATTR, self)

    def release(self) -> None:
        """Restore the optimizer's own ``apply`` once no listener is left."""
        if self.listeners:
            return
        if self._saved is _UNSET:
            object.__delattr__(self.optimizer, "apply")
        else:
            object.__setattr__(self.optimizer, "apply", self._saved)
        object.__delattr__(self.optimizer, _ATTR)


def apply_hooks_of(optimizer: keras.optimizers.Optimizer) -> ApplyHooks:
    """The optimizer's :class:`ApplyHooks`, installed on first use."""
    hooks = optimizer.__dict__.get(_ATTR)
    return hooks if hooks is not None else ApplyHooks(optimizer)


def invalidate_compiled(model: keras.Model) -> None:
    """Drop the model's traced train/test/predict functions so the next call retraces them."""
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def generic_loop(
    layer: keras.layers.RNN,
    sequences: Any,
    initial_state: Any,
    mask: Any,
    training: bool,
    paired: Any = None,
) -> Any:
    """``keras.layers.RNN``'s time loop (no cuDNN), for ``sequences`` that may be a nest of
    tensors (the cell then gets the nest at each step): what a loop wrapper runs when no time
    probe is set. ``paired``: a nest of time-major sequences; the cell then gets ``(x_t,
    paired[T−1−i])`` at step i (see the module docstring). Without a mask, for a cell whose output
    is its first state, the loop is :func:`_popping_loop` (no output list unless the layer returns
    every step's output); otherwise Keras's own."""
    cell_kwargs = {"training": training} if _keras.call_takes_training(layer.cell) else {}
    initial_state = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]

    def cell_step(x: Any, states: list[tf.Tensor], z_t: None = None) -> tuple[tf.Tensor, list[tf.Tensor]]:
        output, new_states = layer.cell(x, states, **cell_kwargs)
        return output, list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]

    if mask is None and not layer.unroll:
        time_major = tf.nest.map_structure(lambda s: tf.transpose(s, [1, 0, *range(2, len(s.shape))]), sequences)
        # trace the step once on time 0, as Keras does, to see whether the output is state 0
        output, first_states = cell_step(_first_inputs(time_major, paired), list(initial_state))
        if output is first_states[0]:
            return _popping_loop(cell_step, time_major, initial_state, None, None, layer, False, paired)
    if paired is not None:
        batch_major = tf.nest.map_structure(lambda p: tf.transpose(p, [1, 0, *range(2, len(p.shape))]), paired)
        sequences = (sequences, _in_step_order(batch_major, layer.go_backwards, axis=1))
    return _keras.rnn(
        cell_step,
        sequences,
        initial_state,
        go_backwards=layer.go_backwards,
        mask=mask,
        unroll=layer.unroll,
        input_length=tf.nest.flatten(sequences)[0].shape[1],
        zero_output_for_mask=layer.zero_output_for_mask,
        return_all_outputs=layer.return_sequences,
    )


def _first_inputs(time_major: Any, paired: Any) -> Any:
    """What the cell gets at the loop's first step (traced once before the loop, as Keras does)."""
    first = tf.nest.map_structure(lambda t: t[0], time_major)
    return first if paired is None else (first, tf.nest.map_structure(lambda p: p[-1], paired))


def _in_step_order(paired: Any, go_backwards: bool, axis: int) -> Any:
    """``paired`` (popping order) arranged for Keras's loop, which reads step i at time i (T−1−i going backwards)."""
    return paired if go_backwards else tf.nest.map_structure(lambda p: tf.reverse(p, [axis]), paired)


def through_time_loop(
    layer: keras.layers.RNN,
    time_probe: TimeProbe,
    sequences: tf.Tensor,
    initial_state: list[tf.Tensor],
    mask: Any,
    training: bool,
    paired: Any = None,
) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
    """The RNN time loop with an all-zero sequence ``z`` added to the hidden state at every step.

    ``z`` passes through ``time_probe`` outside the loop, so the probe's upstream gradient is
    ``dL/dh_t`` at every step t, including the path through later steps. ``z`` is filled with
    the cell's first trainable weight times zero so that the tape records it at all. When the
    probe ``needs_hidden`` (activation terms), the hidden states of every step are collected for
    it; otherwise the loop keeps only what the layer returns. The probe gets the mask too: a
    masked step has no hidden state of its own (Keras carries the previous one), so it counts
    for nothing. ``paired`` as in :func:`generic_loop`.

    How ``z`` enters the loop decides what the capture costs, because every op of a while loop
    costs several µs per step. Without a mask, for a cell whose output is its first state (all of
    Keras's cells and the MinimalRNN), :func:`_popping_loop` runs a loop of its own, as lean as
    Keras's: it pops ``x_t`` and ``z_t`` from lists (the backward loop pushes each step's
    gradient, one op), carries no time index and keeps no output list unless something needs it.
    Otherwise ``z`` is a second input sequence of Keras's loop: Keras masks every state (a list
    cannot be masked), and an unrolled loop slices its inputs cheaply. ``add_n`` adds ``z_t``
    once to the state that is also the output.
    """
    cell = layer.cell
    units = hidden_units(layer)
    first = tf.nest.flatten(sequences)[0]  # sequences may be a nest of tensors (a loop wrapper's)
    anchor = next((w for w in cell.trainable_weights), None)
    if anchor is None:
        raise ValueError(f"through-time capture on layer {layer.name!r} needs a trainable weight in its cell")
    time_major = tf.nest.map_structure(lambda s: tf.transpose(s, [1, 0, *range(2, len(s.shape))]), sequences)
    kept = None
    if mask is not None:
        mask = tf.transpose(mask, [1, 0, *range(2, len(mask.shape))])
        kept = tf.reshape(tf.cast(mask, first.dtype), tf.shape(mask)[:2])
    zero = tf.cast(tf.reshape(anchor, [-1])[0], first.dtype) * 0
    z = tf.fill(tf.concat([tf.shape(tf.nest.flatten(time_major)[0])[:2], [units]], axis=0), zero)
    hidden: dict[str, tf.Tensor] = {}
    z = time_probe(z, lambda: (hidden.get("h"), kept))
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
        input_length=first.shape[1],
        time_major=True,
        zero_output_for_mask=layer.zero_output_for_mask,
        return_all_outputs=layer.return_sequences or time_probe.needs_hidden,
    )
    if mask is None and not layer.unroll:
        # trace the step once on time 0, as Keras does, to see whether the output is state 0
        output, first_states = cell_step(_first_inputs(time_major, paired), list(initial_state), z[0])
        if output is first_states[0]:
            return _popping_loop(cell_step, time_major, initial_state, z, hidden, layer, time_probe.needs_hidden, paired)
    if paired is not None:
        time_major = (time_major, _in_step_order(paired, layer.go_backwards, axis=0))

    def step(inputs: tuple[tf.Tensor, tf.Tensor], states: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        return cell_step(inputs[0], list(states), inputs[1])

    last_output, outputs, new_states = _keras.rnn(step, (time_major, z), initial_state, **loop)
    if time_probe.needs_hidden:
        hidden["h"] = tf.reverse(outputs, axis=[0]) if layer.go_backwards else outputs
    return last_output, tf.transpose(outputs, [1, 0, 2]), new_states


def _popping_loop(
    cell_step: Callable[[Any, list[tf.Tensor], tf.Tensor | None], tuple[tf.Tensor, list[tf.Tensor]]],
    time_major: Any,
    initial_state: list[tf.Tensor],
    z: tf.Tensor | None,
    hidden: dict[str, tf.Tensor] | None,
    layer: keras.layers.RNN,
    collect: bool,
    paired: Any = None,
) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
    """The time loop of a cell whose output is its first state, without a mask, as lean as a
    while loop gets: the inputs, ``paired`` and ``z`` (if any; both time-major, popped as they
    are) are lists popped from the back (in the backward loop each costs one push, and only if it
    needs a gradient; the cell gets ``(x_t, paired_t)``), the last output is the
    final state, and the outputs are pushed onto a list only when the layer returns them or
    ``collect`` asks for them (then without a gradient unless the layer returns them; with
    ``hidden``, the hidden states are gathered there in ``z``'s order for the probe)."""
    inputs = (
        time_major if layer.go_backwards else tf.nest.map_structure(lambda t: tf.reverse(t, [0]), time_major)
    )  # popped from the back
    flat_inputs = tf.nest.flatten(inputs)
    flat_paired = [] if paired is None else tf.nest.flatten(paired)
    lists = [*flat_inputs, *flat_paired, *([] if z is None else [z])]

    def element_shape(tensor: tf.Tensor) -> tf.Tensor:
        return tf.constant([-1 if size is None else size for size in tensor.shape[1:]], tf.int32)

    def make_list(tensor: tf.Tensor) -> tf.Tensor:
        return tf.raw_ops.TensorListFromTensor(tensor=tensor, element_shape=element_shape(tensor))

    def pop(handle: tf.Tensor, like: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.raw_ops.TensorListPopBack(input_handle=handle, element_shape=element_shape(like), element_dtype=like.dtype)

    keep = collect or layer.return_sequences
    state = initial_state[0]
    output_shape = tf.constant([-1 if size is None else size for size in state.shape], tf.int32)
    steps = -1 if flat_inputs[0].shape[0] is None else flat_inputs[0].shape[0]  # XLA needs the list's size
    kept_lists = [tf.raw_ops.EmptyTensorList(element_shape=output_shape, max_num_elements=steps, element_dtype=state.dtype)]
    kept_lists = kept_lists if keep else []  # no output list in the loop unless it is filled (XLA rejects an empty one)

    def body(*loop_vars: tf.Tensor) -> tuple[tf.Tensor, ...]:
        handles, rest = loop_vars[: len(lists)], loop_vars[len(lists) :]
        out_lists, states = rest[: len(kept_lists)], rest[len(kept_lists) :]
        popped = [pop(handle, like) for handle, like in zip(handles, lists)]
        handles, values = [p[0] for p in popped], [p[1] for p in popped]
        x_t = tf.nest.pack_sequence_as(inputs, values[: len(flat_inputs)])
        if paired is not None:
            x_t = (x_t, tf.nest.pack_sequence_as(paired, values[len(flat_inputs) : len(flat_inputs) + len(flat_paired)]))
        output, new_states = cell_step(x_t, list(states), None if z is None else values[-1])
        if keep:  # no gradient flows back into the hidden states only collected
            pushed = output if layer.return_sequences else tf.stop_gradient(output)
            out_lists = (tf.raw_ops.TensorListPushBack(input_handle=out_lists[0], tensor=pushed),)
        return (*handles, *out_lists, *new_states)

    loop_vars = (*[make_list(t) for t in lists], *kept_lists, *initial_state)
    results = tf.while_loop(
        lambda *_: True,
        body,
        loop_vars,
        maximum_iterations=tf.shape(flat_inputs[0])[0],
        parallel_iterations=32,  # as Keras
    )
    rest = results[len(lists) :]
    out_lists, new_states = rest[: len(kept_lists)], rest[len(kept_lists) :]
    last_output = new_states[0]
    if not keep:
        return last_output, last_output[:, None], new_states
    out_list = out_lists[0]
    outputs = tf.raw_ops.TensorListStack(input_handle=out_list, element_shape=output_shape, element_dtype=state.dtype)
    if collect and hidden is not None and z is not None:  # step i popped z[T-1-i]: gather the states in reverse, one copy
        reverse = tf.range(tf.shape(z)[0] - 1, -1, -1)
        hidden["h"] = tf.raw_ops.TensorListGather(
            input_handle=out_list, indices=reverse, element_shape=output_shape, element_dtype=state.dtype
        )
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


class UnitMask:
    """The slot of :func:`unit_mask`: ``mask`` (``(batch, units)``, 1 keeps a unit, 0 zeroes it;
    None: no mask) is read when the layer is traced."""

    def __init__(self, units: int) -> None:
        self.units = units
        self.mask: tf.Tensor | None = None


@contextlib.contextmanager
def unit_mask(layer: keras.layers.Layer, *, inside_recurrence: bool) -> Iterator[UnitMask]:
    """Multiply the layer's unit outputs by ``slot.mask`` while the context is open.

    ``inside_recurrence`` (a recurrent layer): the mask applies to the cell's output and first
    state at every step, so a masked unit is 0 everywhere its state goes — exactly a unit with
    zero incoming and outgoing weights (a cell's output is its first state; an LSTM's cell state
    of a unit whose output is held at 0 reaches nothing). The layer's own fused kernels (cuDNN)
    are turned off meanwhile, since they would not call the cell. Otherwise the mask applies to
    the layer's output only. Nothing of the layer is changed once the context closes.
    """
    recurrent = is_recurrent(layer)
    if inside_recurrence and not recurrent:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no recurrence to mask")
    units = hidden_units(layer) if recurrent else getattr(layer, "units", None)
    if not isinstance(units, int):
        raise ValueError(
            f"cannot mask the units of layer {layer.name!r} ({type(layer).__name__}): it has no 'units'; "
            f"supported: Dense and recurrent layers"
        )
    slot = UnitMask(units)
    owner = layer.cell if inside_recurrence else layer
    saved = owner.__dict__.get("call", _UNSET)
    inner = owner.call

    def masked(*args: Any, **kwargs: Any) -> Any:
        outputs = inner(*args, **kwargs)
        if slot.mask is None:
            return outputs
        if inside_recurrence:
            output, states = outputs
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            shared = output is states[0]
            states[0] = states[0] * tf.cast(slot.mask, states[0].dtype)
            return (states[0] if shared else output * tf.cast(slot.mask, output.dtype)), states
        if isinstance(outputs, (list, tuple)):  # an RNN with return_state=True
            first, *rest = outputs
            return [first * tf.cast(slot.mask, first.dtype), *rest]
        return outputs * tf.cast(_over_steps(slot.mask, outputs), outputs.dtype)

    cudnn = layer.__dict__.get("use_cudnn", _UNSET) if inside_recurrence else _UNSET
    object.__setattr__(owner, "call", masked)
    if cudnn is not _UNSET:
        layer.use_cudnn = False
    try:
        yield slot
    finally:
        if saved is _UNSET:
            object.__delattr__(owner, "call")
        else:
            object.__setattr__(owner, "call", saved)
        if cudnn is not _UNSET:
            layer.use_cudnn = cudnn


def _over_steps(mask: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """``mask`` ``(batch, units)`` shaped to broadcast over ``outputs`` ``(batch, ..., units)``."""
    return tf.reshape(mask, tf.concat([tf.shape(mask)[:1], tf.ones(len(outputs.shape) - 2, tf.int32), [-1]], 0))
