"""The models the runner trains: the built-in recurrent models, or the user's own by ``_target_``.

Example:
    >>> from adaptgrad.models import build_model
    >>> model = build_model("gru", units=8, input_shape=(5, 2), outputs=3, task="classification")
    >>> [layer.name for layer in model.layers]
    ['inputs', 'gru', 'head']
    >>> tuple(model.output.shape)
    (None, 3)
    >>> [layer.name for layer in build_model("lstm", units=4, depth=2, input_shape=(5, 2), outputs=1, task="regression").layers]
    ['inputs', 'lstm_1', 'lstm_2', 'head']

Keras is imported when a model is built, so the app can check model configs without TensorFlow.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from adaptgrad.checks import integer
from adaptgrad.targets import bind

if TYPE_CHECKING:
    import keras

ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""Terminal colour codes (Keras colours some of its error messages)."""

CELLS = ("minimal_rnn", "simple_rnn", "gru", "lstm")
LAYER_NAMES = {"minimal_rnn": "minimalrnn", "simple_rnn": "simple_rnn", "gru": "gru", "lstm": "lstm"}
"""The recurrent layer's name per cell; ``minimalrnn`` is the question's own name."""
MODEL_KEYS = ("_target_", "cell", "units", "depth", "return_sequences", "head_units")
"""The keys of a built-in model's config."""


def recurrent_layer(cell: str, units: int, return_sequences: bool, **options: object) -> keras.layers.Layer:
    """The recurrent layer for ``cell`` (one of :data:`CELLS`), named by :data:`LAYER_NAMES`;
    ``options`` are more arguments of the layer (``unroll=True``, another ``name``...)."""
    import keras

    from adaptgrad.cells import MinimalRNNCell

    kwargs = {"return_sequences": return_sequences, "name": LAYER_NAMES[cell], **options}
    if cell == "minimal_rnn":
        return keras.layers.RNN(MinimalRNNCell(units), **kwargs)
    return {"simple_rnn": keras.layers.SimpleRNN, "gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[cell](units, **kwargs)


def build_model(
    cell: str,
    *,
    units: int,
    input_shape: tuple[int, int],
    outputs: int,
    task: str,
    depth: int = 1,
    return_sequences: bool = False,
    head_units: int | None = None,
) -> keras.Model:
    """``Input -> depth recurrent layers -> [mean over time] -> [Dense(head_units, relu)] -> Dense(outputs)``.

    At depth 1 the recurrent layer is named by :data:`LAYER_NAMES` (``gru``); stacked, the layers
    are ``gru_1``, ``gru_2``..., every one but the last returning sequences. With
    ``return_sequences`` the last layer's hidden states of every step are averaged over time before
    the head (so a watch in output mode sees every step). The last layer is named ``head`` and is
    linear: regression targets directly, classification as logits.

    Raises:
        ValueError: unknown cell, task, or non-positive sizes; the message lists valid values.
    """
    import keras

    if cell not in CELLS:
        raise ValueError(f"unknown model cell {cell!r}; valid: {', '.join(CELLS)}")
    if task not in ("regression", "classification"):
        raise ValueError(f"unknown task {task!r}; valid: regression, classification")
    for name, value in (("units", units), ("depth", depth), ("outputs", outputs)):
        integer(f"model.{name}", value)
    integer("model.head_units", head_units, optional=True)
    inputs = keras.Input(tuple(input_shape), name="inputs")
    hidden = inputs
    for i in range(1, int(depth) + 1):
        name = LAYER_NAMES[cell] if depth == 1 else f"{LAYER_NAMES[cell]}_{i}"
        hidden = recurrent_layer(cell, int(units), return_sequences or i < depth, name=name)(hidden)
    if return_sequences:
        hidden = keras.layers.GlobalAveragePooling1D(name="mean_over_time")(hidden)
    if head_units:
        hidden = keras.layers.Dense(int(head_units), activation="relu", name="head_hidden")(hidden)
    return keras.Model(inputs, keras.layers.Dense(int(outputs), name="head")(hidden), name=f"{cell}_model")


def make_model(config: dict[str, Any], *, input_shape: tuple[int, ...], outputs: int, task: str) -> keras.Model:
    """The model a job's ``model`` config names, built for the data.

    A built-in model has ``cell`` (see :func:`build_model`). A config with ``_target_`` names a
    function ``module.fn`` that is called with the data's ``input_shape``, ``outputs`` and
    ``task`` plus the config's other keys and returns any Keras model (Sequential, functional or
    subclassed); it is built on the input shape if the function did not build it.

    Raises:
        ValueError: the function cannot be imported, fails, or returns no Keras model.
    """
    import keras
    import numpy as np

    sizes = {"input_shape": tuple(input_shape), "outputs": int(outputs), "task": task}
    if config.get("_target_") is None:
        return build_model(config["cell"], **sizes, **{k: v for k, v in config.items() if k not in ("_target_", "cell")})
    target = str(config["_target_"])
    keys = {k: v for k, v in config.items() if k != "_target_"}
    model = bind("model", target, keys, foreign=MODEL_KEYS)(**sizes)  # keys of model=<built-in> it does not take: dropped
    if not isinstance(model, keras.Model):
        raise ValueError(f"model._target_={target!r} returned {type(model).__name__}, not a keras.Model")
    try:  # builds a model the function did not build
        output = model(np.zeros((1, *input_shape), np.float32))
    except Exception as error:  # noqa: BLE001 - Keras's and TensorFlow's many kinds, each many lines long
        first = ANSI.sub("", str(error)).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"model._target_={target!r} cannot take the data's sequences of shape {tuple(input_shape)} (steps, features): "
            f"{type(error).__name__}: {first}; build its input from the input_shape argument"
        ) from error
    shape = tuple(getattr(output, "shape", ()))
    if shape != (1, int(outputs)):
        raise ValueError(
            f"model._target_={target!r} gives outputs of shape {shape[1:]} per example; the data needs ({outputs},) "
            f"({task}): end the model with a layer of the outputs argument's width"
        )
    return model


def recurrent_layers(model: keras.Model) -> list[str]:
    """Names of the model's recurrent layers (``keras.layers.RNN`` and its subclasses), in order."""
    import keras

    from adaptgrad._keras import all_layers

    return [layer.name for layer in all_layers(model) if isinstance(layer, keras.layers.RNN)]
