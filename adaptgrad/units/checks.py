"""What an edit checks before it changes anything: unit indices, factors, and whether gating is exact.

Example:
    >>> from adaptgrad.units.checks import check_units
    >>> check_units([3, 1.0], size=4, layer="h")
    [3, 1]
    >>> check_units([4], size=4, layer="h")
    Traceback (most recent call last):
    ...
    ValueError: unit indices [4] out of range for layer 'h' with 4 units
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

from adaptgrad import slots

__all__ = ["activation_refusal", "check_built", "check_factors", "check_units", "optimizer_refusal"]


def check_built(layer: keras.layers.Layer) -> None:
    """Raise ValueError unless ``layer`` is built (its weights exist)."""
    if not layer.built:
        raise ValueError(
            f"layer {layer.name!r} is not built yet: call the model on a batch (or "
            f"model.build(input_shape)) before making a unit view"
        )


def check_units(units: Iterable[int], size: int, layer: str) -> list[int]:
    """``units`` as a list of ints in ``[0, size)``; ValueError naming the bad ones otherwise."""
    given = np.asarray(units if np.isscalar(units) else list(units)).ravel()
    if given.size and (given.dtype.kind not in "iuf" or (given.dtype.kind == "f" and not np.all(given == np.round(given)))):
        raise ValueError(f"unit indices must be integers, got {given.tolist()} for layer {layer!r}")
    checked = given.astype(np.int64).tolist()
    bad = [u for u in checked if not 0 <= u < size]
    if bad:
        raise ValueError(f"unit indices {bad} out of range for layer {layer!r} with {size} units")
    return checked


def check_factors(factors: float | Sequence[float], count: int) -> np.ndarray:
    """One finite float64 factor per unit (a single one broadcast); ValueError otherwise."""
    checked = np.broadcast_to(np.asarray(factors, dtype=np.float64), (count,))
    if not np.all(np.isfinite(checked)):
        raise ValueError(f"scale factors must be finite, got {checked.tolist()}")
    return checked


def activation_refusal(layer: keras.layers.Layer, owner: Any) -> str | None:
    """Why a unit of ``layer`` with zero weights would not output 0 (its activation maps 0 elsewhere), or None."""
    activation = getattr(owner, "activation", None)
    if activation is not None and float(keras.ops.convert_to_numpy(activation(keras.ops.zeros((1,))))[0]) != 0.0:
        name = getattr(activation, "__name__", repr(activation))
        return (
            f"cannot gate units of layer {layer.name!r}: its activation {name!r} maps 0 to a non-zero value, "
            f"so a unit with zero weights does not output 0; gating needs an activation with f(0) = 0 "
            f"(linear, relu, tanh, ...)"
        )
    return None


def optimizer_refusal(layer: keras.layers.Layer, optimizer: Any, next_layer: keras.layers.Layer | None) -> str | None:
    """Why gating ``layer``'s units under ``optimizer`` could not stay exact (it averages weights, and
    the next layer is unknown), or None."""
    inner = slots.inner_optimizer(optimizer)
    if next_layer is None and getattr(inner, "use_ema", False):
        return (
            f"cannot gate units of layer {layer.name!r} under {type(inner).__name__}(use_ema=True) without "
            f"knowing its next layer: the weight average written back at the end of fit would revive them; "
            f"pass next_layer=... to unit_view"
        )
    return None
