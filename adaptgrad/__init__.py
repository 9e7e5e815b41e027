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
load without TensorFlow. adaptgrad's Keras classes that a saved model can contain (gates,
``MinimalRNNCell``, the question's model) are registered with Keras as soon as Keras is imported,
so ``keras.models.load_model`` needs nothing beyond ``import adaptgrad``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaptgrad.adapt import Adapt
    from adaptgrad.capture import GradientWatch, watch
    from adaptgrad.compaction import compact
    from adaptgrad.oracles import oracle
    from adaptgrad.rules import AdaptationRule
    from adaptgrad.stats import OutputGradientStats
    from adaptgrad.units import UnitView, unit_view

_EXPORTS = {
    "Adapt": "adaptgrad.adapt",
    "AdaptationRule": "adaptgrad.rules",
    "GradientWatch": "adaptgrad.capture",
    "OutputGradientStats": "adaptgrad.stats",
    "UnitView": "adaptgrad.units",
    "compact": "adaptgrad.compaction",
    "oracle": "adaptgrad.oracles",
    "unit_view": "adaptgrad.units",
    "watch": "adaptgrad.capture",
}
__all__ = [
    "Adapt",
    "AdaptationRule",
    "GradientWatch",
    "OutputGradientStats",
    "UnitView",
    "compact",
    "oracle",
    "unit_view",
    "watch",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adaptgrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


_SERIALIZABLE = ("adaptgrad.gates", "adaptgrad.cells", "adaptgrad.question")


def _register_with_keras() -> None:
    for module in _SERIALIZABLE:
        importlib.import_module(module)


class _AfterKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers adaptgrad's serialisable classes right after ``keras`` is first imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__spec__.loader = module.__loader__ = self._loader
        self._loader.exec_module(module)
        _register_with_keras()


if "keras" in sys.modules:
    _register_with_keras()
else:
    sys.meta_path.insert(0, _AfterKeras())
