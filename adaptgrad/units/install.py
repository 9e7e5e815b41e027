"""Putting a unit gate on a layer — its weights' constraints and its config — and taking it off.

Example:
    >>> import keras
    >>> from adaptgrad.units.install import install_gate
    >>> from adaptgrad.units.layout import Layout
    >>> layer = keras.layers.Dense(3)
    >>> layer.build((None, 2))
    >>> installed = install_gate(layer, Layout(layer, None), view=None)
    >>> type(layer.kernel.constraint).__name__, type(layer.kernel_initializer).__name__
    ('UnitGate', 'GatedInitializer')
    >>> installed.remove()
    >>> layer.kernel.constraint, type(layer.kernel_initializer).__name__
    (None, 'GlorotUniform')

Gating is part of the model. A gated unit's incoming and outgoing weights are set to exactly 0;
a GRU, LSTM, SimpleRNN, MinimalRNN or Dense unit whose incoming weights are 0 outputs exactly 0
at every step from a zero initial state (its candidate is ``activation(0) = 0``; layers whose
activation does not map 0 to 0 are refused). With its outgoing weights 0 as well, every gradient
reaching the unit's weights is exactly 0, so no optimizer moves them, and a
:class:`adaptgrad.gates.UnitGate` constraint — applied by the optimizer inside the compiled step,
its mask a variable the step reads — keeps the incoming weights 0 whatever happens. The gate and a
gate-aware initializer are stored in the layer's config, so ``model.save`` / ``load_model``,
``get_config`` / ``from_config`` and ``save_weights`` / ``load_weights`` keep the units gated, and
a new view on the loaded model sees them. Gating never changes how Keras runs the layer (a GRU or
LSTM keeps ``use_cudnn``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import keras

from adaptgrad.gates import GatedInitializer, UnitGate, unwrap, zero_units
from adaptgrad.units.incoming import weight_owner
from adaptgrad.units.layout import Layout

__all__ = ["Installed", "install_gate"]


@dataclasses.dataclass
class Installed:
    """A gate put on a layer, and what :meth:`remove` puts back: ``(owner, attribute, value)``."""

    gate: UnitGate
    restore: list[tuple[Any, str, Any]]

    def remove(self) -> None:
        """Put back the constraints and initializers the layer had (a loaded model's stale gate goes too)."""
        for owner, attribute, value in reversed(self.restore):
            object.__setattr__(owner, attribute, unwrap(value))
        self.gate.view = None


def _wrap(gate: UnitGate, inner: Any) -> UnitGate:
    """The gate itself where the weight had no constraint, else a gate sharing its mask around ``inner``."""
    if inner is None:
        return gate
    wrapped = copy.copy(gate)
    wrapped.inner = inner
    return wrapped


def _zero_units(layout: Layout) -> list[int]:
    """Units whose incoming weights are all exactly 0: gated in a model saved without its gates'
    config (a subclassed model rebuilds its layers from code)."""
    return zero_units([(variable, blocks) for variable, blocks, _ in layout.weights], layout.size)


def install_gate(layer: keras.layers.Layer, layout: Layout, view: Any) -> Installed:
    """Put one shared :class:`UnitGate` on every incoming weight of ``layer`` (and in its config),
    marked as ``view``'s; adopt the gated units of gates already there (a loaded model), else the
    units whose incoming weights are all 0.

    Raises:
        ValueError: another view holds the layer's gate.
    """
    existing = [v.constraint for v, _, _ in layout.weights if isinstance(v.constraint, UnitGate)]
    if any(getattr(gate, "view", None) is not None for gate in existing):
        raise ValueError(f"layer {layer.name!r} already has a unit view; reuse it")
    gated = sorted({unit for gate in existing for unit in gate.gated}) if existing else _zero_units(layout)
    gate = UnitGate(layout.size, gated)
    gate.view = view
    owner = weight_owner(layer)
    restore: list[tuple[Any, str, Any]] = []
    for (variable, _, _), prefix in zip(layout.weights, layout.prefixes):
        restore.append((variable, "constraint", variable.constraint))
        variable.constraint = _wrap(gate, unwrap(variable.constraint))
        if prefix is None:
            continue
        for attribute, value in ((f"{prefix}_constraint", variable.constraint), (f"{prefix}_initializer", None)):
            if hasattr(owner, attribute):
                old = getattr(owner, attribute)
                restore.append((owner, attribute, old))
                new = value if value is not None else GatedInitializer(gate, unwrap(old))
                object.__setattr__(owner, attribute, new)
    return Installed(gate, restore)
