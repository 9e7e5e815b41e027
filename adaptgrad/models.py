"""The recurrent models the runner trains: an RNN layer followed by a small head.

Example:
    >>> from adaptgrad.models import build_model
    >>> model = build_model("gru", units=8, input_shape=(5, 2), outputs=3, task="classification")
    >>> [layer.name for layer in model.layers]
    ['inputs', 'gru', 'head']
    >>> tuple(model.output.shape)
    (None, 3)
"""

from __future__ import annotations

import keras

from adaptgrad.cells import MinimalRNNCell

CELLS = ("minimal_rnn", "simple_rnn", "gru", "lstm")
LAYER_NAMES = {"minimal_rnn": "minimalrnn", "simple_rnn": "simple_rnn", "gru": "gru", "lstm": "lstm"}
"""The recurrent layer's name per cell; ``minimalrnn`` is the question's own name."""


def recurrent_layer(cell: str, units: int, return_sequences: bool, **options: object) -> keras.layers.Layer:
    """The recurrent layer for ``cell`` (one of :data:`CELLS`), named by :data:`LAYER_NAMES`;
    ``options`` are more arguments of the layer (``unroll=True``, another ``name``...)."""
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
    return_sequences: bool = False,
    head_units: int | None = None,
) -> keras.Model:
    """``Input -> recurrent layer -> [mean over time] -> [Dense(head_units, relu)] -> Dense(outputs)``.

    With ``return_sequences`` the hidden states of every step are averaged over time before the
    head (so a watch in output mode sees every step). The last layer is named ``head`` and is
    linear: regression targets directly, classification as logits.

    Raises:
        ValueError: unknown cell, task, or non-positive sizes; the message lists valid values.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown model cell {cell!r}; valid: {', '.join(CELLS)}")
    if task not in ("regression", "classification"):
        raise ValueError(f"unknown task {task!r}; valid: regression, classification")
    for name, value in (("units", units), ("outputs", outputs), ("head_units", head_units or 1)):
        if int(value) < 1:
            raise ValueError(f"model {name}={value!r} must be >= 1")
    inputs = keras.Input(tuple(input_shape), name="inputs")
    hidden = recurrent_layer(cell, int(units), return_sequences)(inputs)
    if return_sequences:
        hidden = keras.layers.GlobalAveragePooling1D(name="mean_over_time")(hidden)
    if head_units:
        hidden = keras.layers.Dense(int(head_units), activation="relu", name="head_hidden")(hidden)
    return keras.Model(inputs, keras.layers.Dense(int(outputs), name="head")(hidden), name=f"{cell}_model")
