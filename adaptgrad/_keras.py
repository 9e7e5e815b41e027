"""Every use adaptgrad makes of Keras and TensorFlow internals, one function each.

Example:
    >>> import keras
    >>> from adaptgrad import _keras
    >>> rnn = keras.layers.SimpleRNN(3, name="rnn")
    >>> model = keras.Sequential([keras.Input((5, 2)), rnn, keras.layers.Dense(1, name="head")])
    >>> [type(layer).__name__ for layer in _keras.all_layers(model) if layer.weights]
    ['SimpleRNN', 'SimpleRNNCell', 'Dense']
    >>> [layer.name for layer in _keras.consumers(rnn)], _keras.call_takes_training(rnn.cell)
    (['head'], True)

Nothing else in adaptgrad touches ``keras.src`` or a private attribute of Keras or TensorFlow:
when Keras changes one of these, this module is the one place to adapt, and the tests fail on
the ``DeprecationWarning`` Keras raises from adaptgrad's calls (pyproject.toml, filterwarnings).
``pyproject.toml`` bounds ``keras`` to the minor versions these were checked against. Each
function says why adaptgrad needs the internal and what public API would replace it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

RNN_INNER_LOOP = "inner_loop"
"""The method of ``keras.layers.RNN`` that runs the time loop (``inner_loop(sequences,
initial_state, mask, training=False)``); adaptgrad shadows it on a watched layer instance to run
its own loop for through-time capture. Why: the only place where the loop over time can be
replaced without reimplementing ``RNN.call`` (masks, ``go_backwards``, ``unroll``, states).
Public API needed: a documented hook for the time loop, or for adding a sequence to the state
at every step."""
if not callable(getattr(keras.layers.RNN, RNN_INNER_LOOP, None)):  # pragma: no cover - a Keras we do not support
    raise ImportError(
        f"keras {keras.__version__}: keras.layers.RNN has no {RNN_INNER_LOOP}(); adaptgrad needs keras 3.x (see pyproject.toml)"
    )


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model`` at any depth (nested models, an RNN's cell, the attributes of a
    subclassed model), each once, the model itself excluded.

    Why private (``Layer._flatten_layers``): ``model.layers`` lists the top level only, and a
    layer that holds sub-layers (an RNN its cell) has no public list of them. Public API needed:
    a recursive ``model.layers`` (for instance ``model.flatten_layers()``)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def consumers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The operations that take ``layer``'s output as input in the Sequential or functional
    graphs the layer was called in (one entry per call), in call order.

    Why private (``Operation._outbound_nodes``): the unit view needs the layer fed by a unit's
    output to zero its outgoing weights, and Keras keeps the graph's edges private. Public API
    needed: the graph's consumers of a layer (e.g. ``model.get_consumers(layer)``)."""
    return [node.operation for node in getattr(layer, "_outbound_nodes", [])]


def is_graph_model(model: keras.Model) -> bool:
    """True for a Sequential or functional model (one whose layers form a graph Keras can clone),
    False for a subclassed one.

    Why private (``keras.src.models.functional.Functional``): Keras exports no name for the
    functional model class. Public API needed: ``keras.Functional`` or ``model.is_functional``."""
    from keras.src.models.functional import Functional

    return isinstance(model, (keras.Sequential, Functional))


def call_takes_training(layer: keras.layers.Layer) -> bool:
    """Whether ``layer.call`` takes a ``training`` argument (as Keras decides when it calls the
    layer itself).

    Why: adaptgrad calls an RNN's cell itself in the through-time loop and must pass
    ``training`` exactly when Keras would. Keras keeps this in the private
    ``Layer._call_has_training_arg``; this reads the class's ``call`` signature, which is what
    Keras computes it from (the instance's ``call`` may be adaptgrad's wrapper). Public API
    needed: none beyond ``inspect``, as long as Keras keeps deciding by the signature."""
    return "training" in inspect.signature(type(layer).call).parameters


def optimizer_variables(optimizer: keras.optimizers.Optimizer) -> list[keras.Variable]:
    """The model variables ``optimizer`` was built for, in the order of its per-variable slots
    (momentum, Adam moments...); empty before it is built.

    Why private (``Optimizer._trainable_variables``): to zero or reset a unit's optimizer state
    the unit view must find the slots of one variable, and the optimizer exposes its slots
    (``optimizer.variables``) without saying which variable each belongs to. Public API needed:
    ``optimizer.slots_for(variable)`` or a documented variable -> index map."""
    return list(getattr(optimizer, "_trainable_variables", None) or [])


def rnn(step: Callable[..., Any], inputs: Any, initial_states: list[Any], **options: Any) -> tuple[Any, Any, list[Any]]:
    """The backend's RNN loop (``keras.src.backend.rnn``): ``(last_output, outputs, new_states)``.

    Why private: the through-time loop must run a step function over time with every option
    Keras's own RNN layers honour (masks, ``go_backwards``, ``unroll``, ``time_major``,
    ``zero_output_for_mask``), exactly as ``RNN.inner_loop`` does; ``keras.ops.scan`` has none of
    these. Public API needed: ``keras.ops.rnn``.

    ``inputs`` may be any nest: it goes to Keras flat, and ``step`` gets it packed again
    (Keras's unrolled loop takes one level of nesting only)."""
    from keras.src import backend

    flat = tuple(tf.nest.flatten(inputs))

    def packed_step(x: Any, states: Any) -> Any:
        return step(tf.nest.pack_sequence_as(inputs, tf.nest.flatten(x)), states)

    return backend.rnn(packed_step, flat if len(flat) > 1 else flat[0], initial_states, **options)


def set_op_determinism(enabled: bool) -> None:
    """Turn TensorFlow's op determinism on or off for this process.

    Why private (``tensorflow.python.framework.config``): ``tf.config.experimental`` can only
    enable it, and a process that runs several jobs (a joblib worker, a test session) must also
    turn it off for a job with ``trainer.jit_compile=true``, since Keras silently drops XLA while
    it is on. Public API needed: ``tf.config.experimental.disable_op_determinism``."""
    from tensorflow.python.framework import config

    if enabled:
        config.enable_op_determinism()
    else:
        config.disable_op_determinism()


def op_determinism_enabled() -> bool:
    """Whether TensorFlow's op determinism is on (private API for the same reason as
    :func:`set_op_determinism`; public API needed: ``tf.config.experimental.is_op_determinism_enabled``)."""
    from tensorflow.python.framework import config

    return bool(config.is_op_determinism_enabled())


def build_for_fit(model: keras.Model, batch: Any) -> None:
    """Make every variable ``fit``'s train step needs (the optimizer's, the compiled metrics' and
    loss's) from one batch ``(x, y)``, before ``fit`` traces the step.

    Why private (``Trainer._symbolic_build``): without a distribution strategy Keras leaves these
    variables to the first trace of the train step, and a ``tf.function`` that makes variables
    on its first trace is traced a second time (a second or so per job, measured). Keras builds
    them up front only under a strategy, with this method. Public API needed: a ``model.build_for_fit``
    (or ``fit`` building them up front under any strategy)."""
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)
