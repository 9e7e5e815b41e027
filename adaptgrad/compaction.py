"""The adapted model out, physically smaller: every gated unit removed.

Example:
    >>> import keras, numpy as np, adaptgrad
    >>> model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(4, name="gru"),
    ...                           keras.layers.Dense(1, name="out")])
    >>> _ = adaptgrad.unit_view(model, "gru").gate([0, 2])
    >>> small = adaptgrad.compact(model)
    >>> small.get_layer("gru").units, small.count_params() < model.count_params()
    (2, True)
    >>> x = np.random.default_rng(0).normal(size=(3, 5, 2))
    >>> bool(np.allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5))
    True

A gated unit outputs exactly 0, so removing it — its column in every gate block of every
incoming weight, its recurrent-kernel row and column, and the next layer's input rows it feeds —
changes no prediction beyond float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from adaptgrad import _keras
from adaptgrad.gates import UnitGate, zero_units
from adaptgrad.layers import find_layer
from adaptgrad.units import consumer_chain, incoming_weights, input_kernels, unit_rows, weight_owner

__all__ = ["compact"]

_GATES = {"adaptgrad>UnitGate", "adaptgrad>GatedInitializer"}


def _gated(layers: list[keras.layers.Layer]) -> dict[str, list[int]]:
    """Each layer's gated units, by name (layers without any left out): read from its gate; in a
    model that carries no gate (a subclassed model rebuilds its layers from code on load, without
    them), the units whose incoming weights are all exactly 0, as :class:`~adaptgrad.UnitView` finds them."""
    weights = {}
    for layer in layers:
        with contextlib.suppress(TypeError):  # a layer without units adaptgrad can edit
            weights[layer.name] = incoming_weights(layer)[0]
    gates = {name: found[0][0].constraint for name, found in weights.items()}
    if any(isinstance(gate, UnitGate) for gate in gates.values()):
        gated = {name: gate.gated for name, gate in gates.items() if isinstance(gate, UnitGate)}
    else:
        gated = {
            name: zero_units([(variable, blocks) for variable, blocks, _ in found], int(found[0][0].shape[-1]) // found[0][1])
            for name, found in weights.items()
        }
    return {name: units for name, units in gated.items() if units}


def _without_gates(config: Any) -> Any:
    """A layer config with every adaptgrad gate replaced by what it wraps."""
    if isinstance(config, dict):
        if config.get("registered_name") in _GATES:
            return _without_gates(config["config"]["inner"])
        return {key: _without_gates(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_without_gates(value) for value in config]
    return config


def _with_units(layer: keras.layers.Layer, config: dict[str, Any], units: int) -> dict[str, Any]:
    holder = config["cell"]["config"] if "units" not in config and isinstance(config.get("cell"), dict) else config
    if "units" not in holder:
        raise ValueError(
            f"compact cannot rebuild layer {layer.name!r} ({type(layer).__name__}) smaller: its config has no 'units'"
        )
    holder["units"] = units
    return config


def compact(model: keras.Model, *, next_layers: Mapping[str, str] | None = None) -> keras.Model:
    """A new, uncompiled model with every gated unit of ``model`` removed, predicting the same.

    Example:
        >>> import keras, adaptgrad
        >>> from adaptgrad.question import question_model, toy_data
        >>> model = question_model(3)
        >>> _ = model(toy_data()[0])
        >>> _ = adaptgrad.unit_view(model, "minimalrnn", next_layer="out").gate([1])
        >>> adaptgrad.compact(model, next_layers={"minimalrnn": "out"}).minimalrnn.cell.units
        2

    Args:
        model: a Sequential or functional model, or a subclassed model that defines
            ``adaptgrad_compact(units: dict[str, int]) -> keras.Model`` (a new built model of its
            class, with the given number of units in the named layers and the same layer names).
        next_layers: for a subclassed model, the layer consuming each gated layer's output, by name
            (found automatically in Sequential and functional models).

    Raises:
        ValueError: a gated layer, its consumer, or the model cannot be rebuilt smaller; the
            message names it.
    """
    next_layers = dict(next_layers or {})
    layers = _keras.all_layers(model)
    gated = _gated(layers)
    by_name = {layer.name: layer for layer in layers}
    sizes, removed_rows = {}, {}  # layer -> units kept; consumer name -> rows to delete from its input kernels
    for name, units in gated.items():
        layer = by_name[name]
        weights, _ = incoming_weights(layer)
        size = int(weights[0][0].shape[-1]) // weights[0][1]
        if len(units) == size:
            raise ValueError(f"compact cannot remove all {size} units of layer {name!r}")
        sizes[name] = size
        if name in next_layers:
            consumer, explicit = find_layer(model, next_layers[name]), True
        else:
            found = consumer_chain(layer)
            if found is None:
                raise ValueError(
                    f"compact cannot find the layer consuming {name!r}'s output (a subclassed model?); "
                    f"pass next_layers={{{name!r}: '<its consumer>'}}"
                )
            consumer, explicit = found[1], False
        rows = unit_rows(layer, size, consumer, explicit)
        removed_rows[consumer.name] = np.concatenate([rows[unit] for unit in units])
    kept = {name: size - len(gated[name]) for name, size in sizes.items()}
    small = _rebuild(model, kept)
    nested = {id(sub) for layer in layers for sub in _keras.all_layers(layer)}  # cells etc.
    for old in layers:
        if id(old) in nested or not old.weights:
            continue
        new = find_layer(small, old.name)
        new.set_weights(_sliced_weights(old, gated.get(old.name, []), removed_rows.get(old.name)))
    return small


def _rebuild(model: keras.Model, kept: dict[str, int]) -> keras.Model:
    if hasattr(model, "adaptgrad_compact"):
        return model.adaptgrad_compact(kept)
    if not _keras.is_graph_model(model):
        raise ValueError(
            f"compact rebuilds Sequential and functional models; {type(model).__name__} {model.name!r} is subclassed: "
            f"define adaptgrad_compact(units) on it (see adaptgrad.question.MyModel)"
        )

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = _without_gates(layer.get_config())
        if layer.name in kept:
            config = _with_units(layer, config, kept[layer.name])
        return type(layer).from_config(config)

    try:
        return keras.models.clone_model(model, clone_function=clone)
    except Exception as error:  # noqa: BLE001 - a layer between a gated layer and its consumer fixes a shape
        raise ValueError(f"compact cannot rebuild model {model.name!r} with fewer units: {error}") from error


def _sliced_weights(layer: keras.layers.Layer, gated: list[int], rows: np.ndarray | None) -> list[np.ndarray]:
    values = [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.weights]
    edits: dict[int, list[Callable[[np.ndarray], np.ndarray]]] = {}
    if gated:
        weights, _ = incoming_weights(layer)
        recurrent = getattr(weight_owner(layer), "recurrent_kernel", None)
        for variable, blocks, _ in weights:
            size = int(variable.shape[-1]) // blocks
            keep = np.setdiff1d(np.arange(size), gated)
            columns = np.concatenate([keep + size * block for block in range(blocks)])
            edits.setdefault(id(variable), []).append(lambda a, c=columns: a[..., c])
            if variable is recurrent:
                edits[id(variable)].append(lambda a, k=keep: a[k])
    if rows is not None:
        for kernel in input_kernels(layer):
            edits.setdefault(id(kernel), []).append(lambda a, r=rows: np.delete(a, r, axis=a.ndim - 2))
    for i, variable in enumerate(layer.weights):
        for edit in edits.get(id(variable), []):
            values[i] = edit(values[i])
    return values
