"""Finding a layer of any Keras 3 model by name or object.

Example:
    >>> import keras
    >>> from adaptgrad.layers import find_layer
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h")])
    >>> find_layer(model, "h").units
    3
"""

from __future__ import annotations

import keras

from adaptgrad import _keras


def find_layer(model: keras.Model, layer: str | keras.layers.Layer) -> keras.layers.Layer:
    """The layer of ``model`` called ``layer`` (or ``layer`` itself, checked to belong to it).

    Raises:
        ValueError: no such layer, or more than one layer with that name; the message lists the
            model's layer names.
        TypeError: ``layer`` is neither a string nor a Keras layer.
    """
    layers = _keras.all_layers(model)  # nested sub-models and attributes of subclassed models included
    names = [candidate.name for candidate in layers]
    if isinstance(layer, keras.layers.Layer):
        if not any(candidate is layer for candidate in layers):
            raise ValueError(f"layer {layer.name!r} is not part of model {model.name!r}; its layers: {names}")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name or a keras Layer, got {type(layer).__name__}: {layer!r}")
    matches = [candidate for candidate in layers if candidate.name == layer]
    if not matches:
        raise ValueError(f"model {model.name!r} has no layer named {layer!r}; its layers: {names}")
    if len(matches) > 1:
        raise ValueError(f"model {model.name!r} has {len(matches)} layers named {layer!r}; pass the layer object")
    return matches[0]
