"""adaptgrad: gradient-driven layer adaptation for Keras 3.

Example:
    >>> import adaptgrad
    >>> from adaptgrad.question import question_model, toy_data
    >>> model = question_model()
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> w = adaptgrad.watch(model, "minimalrnn")
    >>> x, y = toy_data()
    >>> _ = model.fit(x, y, epochs=1, batch_size=1, verbose=0)
    >>> w.stats().grad_sum.shape
    (2,)

The public names are imported on first use, so ``adaptgrad.results`` and ``adaptgrad.data``
load without TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaptgrad.adapt import Adapt
    from adaptgrad.capture import GradientWatch, watch
    from adaptgrad.rules import AdaptationRule
    from adaptgrad.stats import OutputGradientStats
    from adaptgrad.units import UnitView, unit_view

_EXPORTS = {
    "Adapt": "adaptgrad.adapt",
    "AdaptationRule": "adaptgrad.rules",
    "GradientWatch": "adaptgrad.capture",
    "OutputGradientStats": "adaptgrad.stats",
    "UnitView": "adaptgrad.units",
    "unit_view": "adaptgrad.units",
    "watch": "adaptgrad.capture",
}
__all__ = ["Adapt", "AdaptationRule", "GradientWatch", "OutputGradientStats", "UnitView", "unit_view", "watch"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adaptgrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
