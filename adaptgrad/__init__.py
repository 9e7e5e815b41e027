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
"""

from adaptgrad.adapt import Adapt
from adaptgrad.rules import AdaptationRule
from adaptgrad.stats import OutputGradientStats
from adaptgrad.units import UnitView, unit_view
from adaptgrad.watch import GradientWatch, watch

__all__ = ["Adapt", "AdaptationRule", "GradientWatch", "OutputGradientStats", "UnitView", "unit_view", "watch"]
__version__ = "0.1.0"
