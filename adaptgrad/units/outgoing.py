"""Where a unit's output goes: the next layer's input rows it feeds, and its recurrent-kernel row.

Example:
    >>> import keras
    >>> from adaptgrad.units.outgoing import consumer_chain, unit_rows
    >>> model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(3, return_sequences=True, name="gru"),
    ...                           keras.layers.Flatten(), keras.layers.Dense(1, name="out")])
    >>> chain, consumer = consumer_chain(model.get_layer("gru"))
    >>> [layer.name for layer in chain], consumer.name
    (['flatten'], 'out')
    >>> [rows.tolist()[:3] for rows in unit_rows(model.get_layer("gru"), 3, consumer, explicit=False)]
    [[0, 3, 6], [1, 4, 7], [2, 5, 8]]

A unit's *outgoing* weights are the next layer's input rows it feeds (found through Flatten,
Reshape, Permute, pooling, dropout, TimeDistributed...: every unit's code is traced through the
weightless layers in between) and, in a recurrent layer, row j of its own recurrent kernel except
the unit's own columns (those are incoming).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from adaptgrad import _keras
from adaptgrad.units.incoming import UnitWeight, weight_owner

__all__ = ["Index", "Outgoing", "consumer_chain", "input_kernels", "outgoing_weights", "unit_rows"]

Index = tuple[Any, ...]
"""An index into a weight selecting one unit's slice."""


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A weight holding outgoing slices: ``index(unit)`` selects them."""

    variable: Any
    index: Callable[[int], Index]


def input_kernels(consumer: keras.layers.Layer) -> list[Any]:
    """The weights whose axis ``ndim - 2`` indexes ``consumer``'s input features (last input axis)."""
    if isinstance(consumer, keras.layers.TimeDistributed):
        return input_kernels(consumer.layer)
    if isinstance(consumer, keras.layers.Bidirectional):
        return input_kernels(consumer.forward_layer) + input_kernels(consumer.backward_layer)
    owner = weight_owner(consumer)
    kernel = getattr(owner, "kernel", None)
    if isinstance(consumer, (keras.layers.Dense, keras.layers.RNN)) or (
        isinstance(consumer, keras.layers.Layer) and type(consumer).__name__.startswith("Conv") and kernel is not None
    ):
        if getattr(consumer, "data_format", "channels_last") != "channels_last":
            return []
        return [kernel] if isinstance(kernel, keras.Variable) else []
    return []


def _row_index(kernel: Any, rows: np.ndarray) -> Index:
    return (slice(None),) * (len(kernel.shape) - 2) + (rows,)


def consumer_chain(layer: keras.layers.Layer) -> tuple[list[keras.layers.Layer], keras.layers.Layer] | None:
    """The weightless layers between ``layer`` and the first layer with weights it feeds, following a
    single chain in a Sequential/functional graph; None where the consumer is not unique."""
    chain: list[keras.layers.Layer] = []
    current = layer
    while True:
        consumers = {id(operation): operation for operation in _keras.consumers(current)}
        found = [c for c in consumers.values() if isinstance(c, keras.layers.Layer)]
        if len(found) != 1:
            return None
        current = found[0]
        if current.weights or isinstance(current, keras.Model):
            return chain, current
        chain.append(current)


def _trace_rows(layer: keras.layers.Layer, chain: list[keras.layers.Layer], size: int, features: int) -> list[np.ndarray]:
    """For each unit, the positions of the consumer's last input axis that carry exactly that unit.

    Every unit gets a random integer code, broadcast over the layer's output and run through the
    weightless chain; a consumer input position must carry one unit's code (or 0) everywhere. Three
    independent codings rule out a mix of units passing for one unit by chance. Raises ValueError
    where the chain does not keep units apart.
    """
    shape = tuple(1 if i == 0 else (dim or 2) for i, dim in enumerate(layer.output.shape))
    rows: list[np.ndarray] | None = None
    for seed in range(3):
        codes = np.random.default_rng(seed).choice(np.arange(1, 2**16), size=size, replace=False).astype(np.float32)
        values = np.broadcast_to(codes, shape)
        for step in chain:
            values = keras.ops.convert_to_numpy(step(values))
        values = np.asarray(values).reshape(-1, values.shape[-1])
        if values.shape[-1] != features:
            raise ValueError(f"reaches the consumer with {values.shape[-1]} input features, its kernel has {features}")
        unit_of = {float(code): unit for unit, code in enumerate(codes)}
        owner = np.full(features, -1)
        for position in range(features):
            carried = {unit_of.get(float(v), -2) for v in np.unique(values[:, position]) if v != 0}
            if -2 in carried or len(carried) > 1:
                raise ValueError(f"consumer input feature {position} mixes units (or changes their values)")
            owner[position] = carried.pop() if carried else -1
        found = [np.flatnonzero(owner == unit) for unit in range(size)]
        if rows is not None and any(not np.array_equal(a, b) for a, b in zip(rows, found)):
            raise ValueError("the units' positions differ between codings")
        rows = found
    assert rows is not None
    return rows


def unit_rows(layer: keras.layers.Layer, size: int, next_layer: keras.layers.Layer, explicit: bool) -> list[np.ndarray]:
    """For each unit of ``layer``, the rows (axis ``ndim - 2``) of ``next_layer``'s input kernels it feeds.

    Raises:
        ValueError: the consumer, or the chain of layers to it, cannot be mapped exactly.
    """
    hint = "pass next_layer=<the layer whose kernel rows are these units' outgoing weights> to unit_view"
    kernels = input_kernels(next_layer)
    if not kernels:
        raise ValueError(
            f"unit_view cannot map the outgoing weights of layer {layer.name!r} onto {next_layer.name!r} "
            f"({type(next_layer).__name__}): supported consumers are Dense, recurrent layers, channels-last "
            f"convolutions, TimeDistributed and Bidirectional over them; {hint}"
        )
    features = int(kernels[0].shape[-2])
    if explicit:
        if features != size:
            raise ValueError(
                f"next_layer {next_layer.name!r} has {features} input features, layer {layer.name!r} has {size} "
                f"units; pass the layer that consumes {layer.name!r}'s output directly"
            )
        return [np.array([unit]) for unit in range(size)]
    chain, _ = consumer_chain(layer)  # type: ignore[misc]
    try:
        rows = _trace_rows(layer, chain, size, features)
    except Exception as error:  # noqa: BLE001 - any failure to trace means: not exactly mappable
        path = " -> ".join(step.name for step in [layer, *chain, next_layer])
        raise ValueError(
            f"unit_view cannot map the outgoing weights of layer {layer.name!r} exactly onto "
            f"{next_layer.name!r} ({type(next_layer).__name__}) through {path}: {error}; {hint}"
        ) from error
    _check_training_chain(layer, chain, rows, next_layer)
    return rows


def _check_training_chain(
    layer: keras.layers.Layer, chain: list[keras.layers.Layer], rows: list[np.ndarray], next_layer: keras.layers.Layer
) -> None:
    """Refuse a chain that, called in training mode, lets a unit reach consumer rows other than its
    own, or turns a zero output into a non-zero input of the consumer (``GaussianNoise``,
    ``AlphaDropout``): a gated unit's outgoing rows would then get gradient and drift from 0.
    Layers that only rescale or drop entries in training (``Dropout``, ``GaussianDropout``) pass.

    Each unit's code alone, and an all-zero input, run through the chain as one batch with
    ``training=True``."""
    size = len(rows)
    shape = tuple(dim or 2 for dim in layer.output.shape[1:])
    codes = np.random.default_rng(3).choice(np.arange(1, 2**16), size=size, replace=False).astype(np.float32)
    values = np.zeros((size + 1, *shape), np.float32)  # the last example: every unit outputs 0
    for unit, code in enumerate(codes):
        values[unit, ..., unit] = code
    advice = f"move it before {layer.name!r} or after {next_layer.name!r}, or leave it out"
    for step in chain:
        values = np.asarray(keras.ops.convert_to_numpy(step(values, training=True)))
        if np.any(values[-1] != 0):
            raise ValueError(
                f"layer {step.name!r} ({type(step).__name__}) between {layer.name!r} and its consumer "
                f"{next_layer.name!r} turns a zero input into a non-zero output in training, so a gated unit of "
                f"{layer.name!r} would still feed {next_layer.name!r}, whose rows for it would get gradient and "
                f"drift from 0; {advice}"
            )
    reached = values[:-1].reshape(size, -1, values.shape[-1]) != 0
    for unit in range(size):
        stray = np.setdiff1d(np.flatnonzero(reached[unit].any(axis=0)), rows[unit])
        if stray.size:
            training = [step.name for step in chain if _keras.call_takes_training(step)]
            raise ValueError(
                f"in training, unit {unit} of {layer.name!r} reaches input features {stray.tolist()} of "
                f"{next_layer.name!r} that are not its own (training-mode layers on the way: {training}); {advice}"
            )


def _next_outgoing(layer: keras.layers.Layer, size: int, next_layer: keras.layers.Layer | None, explicit: bool) -> list[Outgoing]:
    if next_layer is None:
        return []
    rows = unit_rows(layer, size, next_layer, explicit)
    return [Outgoing(kernel, lambda unit, k=kernel: _row_index(k, rows[unit])) for kernel in input_kernels(next_layer)]


def _recurrent_outgoing(weights: list[UnitWeight], owner: Any, size: int) -> list[Outgoing]:
    recurrent = getattr(owner, "recurrent_kernel", None)
    for variable, blocks, _ in weights:
        if variable is recurrent:
            columns = int(variable.shape[-1])

            def index(unit: int, blocks: int = blocks, columns: int = columns) -> Index:
                return (unit, np.setdiff1d(np.arange(columns), unit + size * np.arange(blocks)))

            return [Outgoing(variable, index)]
    return []


def outgoing_weights(
    layer: keras.layers.Layer, weights: list[UnitWeight], size: int, next_layer: keras.layers.Layer | None, explicit: bool
) -> list[Outgoing]:
    """The weights holding the units' outgoing slices: the layer's own recurrent kernel (rows), then
    ``next_layer``'s input kernels (None: unknown, none). ``explicit``: ``next_layer`` was named by
    the user and must consume the units directly.

    Raises:
        ValueError: the consumer, or the chain of layers to it, cannot be mapped exactly.
    """
    return _recurrent_outgoing(weights, weight_owner(layer), size) + _next_outgoing(layer, size, next_layer, explicit)
