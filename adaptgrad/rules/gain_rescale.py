"""A normalised gradient step on a per-unit virtual gain, taken during training and folded into the weights."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.rules.fold import LayerKind, checked_fold, exact_mode, gain_fold
from adaptgrad.rules.scoring import per_batch, scale_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.capture import GradientWatch
    from adaptgrad.units import UnitView


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class GainRescale(AdaptationRule, name="gain_rescale"):
    """Take one normalised gradient step on a virtual gain per unit and fold it into the weights.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import GainRescale
        >>> GainRescale.steps(np.array([4.0, -4.0, 0.0]), np.array([4.0, 16.0, 0.0]), batches=4,
        ...                   lr=0.1, eps=0.0, max_step=0.5)
        array([ 0.1 , -0.05,  0.  ])
        >>> round(float(np.exp(-0.1)), 4)                   # unit 0's gain is multiplied by it
        0.9048

    What it is: at the end of every epoch it acts, during training, one step of normalised
    gradient descent on ``log gamma_j``, where gamma_j is a virtual gain (= 1) on unit j's output
    ``a_j``, whose derivative the watch captures exactly: ``dL/dlog gamma_j = sum a*g`` with
    ``g = dL/da``. The new gain is then folded into weights (below) and gamma_j is 1 again. It is
    a heuristic of this library, not a published method: GradInit (Zhu, Ni, Xu, Kong, Huang,
    Goldstein, NeurIPS 2021) and MetaInit (Dauphin & Schoenholz, NeurIPS 2019) inspired it, but
    they tune the scales of the *initial* weights before training (per layer; GradInit so that
    the loss after one optimizer step drops, under a bound on the gradient norm; MetaInit to
    minimise a gradient quotient) and then leave them to the optimizer, while this rule moves
    each unit's scale during training, every epoch. Per unit, over the epoch's B batches, with
    ``x_b = sum_{n,t in b} a*g`` the gain's gradient on batch b::

        m1_j = act_grad_sum_j / B            = mean_b x_b        (mean per-batch gain gradient)
        m2_j = act_grad_batch_sq_sum_j / B   = mean_b x_b**2     (its second moment over batches)
        step_j = clip(lr * m1_j / (sqrt(m2_j) + eps), -max_step, max_step)
        log gamma_j -= step_j,   i.e. the gain is multiplied by exp(-step_j)

    an Adam-like normalised step (``|m1| <= sqrt(m2)``, so ``|step| <= lr``): its size is set by
    how consistently the batches agree on the gain's direction, not by the gradient's scale.

    The gain is folded into weights where ``x_b`` is exactly its derivative
    (:func:`adaptgrad.rules.fold.gain_fold`, decided by :meth:`check` from the capture mode):
    in output mode into the next layer's input rows that read unit j (any layer type), through
    time into the unit's incoming weights (kernel and recurrent columns, bias) of a positively
    homogeneous cell (``MinimalRNNCell``, relu/linear SimpleRNN). Through-time capture of a GRU,
    LSTM or tanh cell is refused, naming output mode. Measured against a central finite
    difference of the batch loss under the rule's own edit (float64, 12 units, one batch of 32
    sequences of 10 steps, ``tests/test_rules.py``), max |error| / max |derivative| over units:

    ==========  ================  ===================================================
    cell        output mode       through time (incoming fold)
    ==========  ================  ===================================================
    MinimalRNN  4e-8              3e-7
    GRU         6e-8              0.87; sign agreement 92 %, correlation 0.94: refused
    LSTM        9e-8              0.29; sign agreement 100 %, correlation 0.94: refused
    SimpleRNN   1e-7              1.32 (tanh); sign agreement 100 %, corr. 0.96: refused
    ==========  ================  ===================================================

    Only active units are scaled, and only where the step is non-zero (so no batch accumulated
    means no action).

    Args:
        lr: step size on log gamma, > 0.
        eps: added to sqrt(m2), >= 0 (a unit with m2 = 0 has m1 = 0 and takes no step).
        max_step: bound on ``|step|``, > 0 (factors stay within [exp(-max_step), exp(max_step)]).
        start_epoch, every, stop_epoch, min_active: see :class:`~adaptgrad.rules.AdaptationRule`.
    """

    reads: ClassVar[frozenset[str]] = frozenset({"act_grad_sum", "act_grad_batch_sq_sum"})

    lr: float = 0.1
    eps: float = 1e-8
    max_step: float = 0.5
    fold: str | None = dataclasses.field(default=None, init=False)
    """``"outgoing"`` or ``"incoming"``: where the gain goes; set by :meth:`check`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lr = check_range(self.label, "lr", self.lr, 0.0, math.inf)
        self.eps = check_range(self.label, "eps", self.eps, 0.0, math.inf, closed="left")
        self.max_step = check_range(self.label, "max_step", self.max_step, 0.0, math.inf)

    def through_time(self, layer: LayerKind) -> bool | None:
        return exact_mode(layer)

    def check(self, watch: GradientWatch, units: UnitView) -> None:
        self.fold = gain_fold(self.label, watch, units)  # first: its message says why and what to do
        super().check(watch, units)

    @staticmethod
    def steps(
        act_grad_sum: np.ndarray, act_grad_batch_sq_sum: np.ndarray, batches: int, *, lr: float, eps: float, max_step: float
    ) -> np.ndarray:
        """step_j = clip(lr * m1_j / (sqrt(m2_j) + eps), +-max_step) (0 where the denominator is 0)."""
        m1 = per_batch(act_grad_sum, batches)
        denominator = np.sqrt(per_batch(act_grad_batch_sq_sum, batches)) + eps
        ratio = np.divide(m1, denominator, out=np.zeros_like(m1), where=denominator > 0)
        return np.clip(lr * ratio, -max_step, max_step)

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        outgoing = checked_fold(self) == "outgoing"
        steps = self.steps(
            stats.act_grad_sum, stats.act_grad_batch_sq_sum, stats.batches, lr=self.lr, eps=self.eps, max_step=self.max_step
        )
        scale_active(units, np.exp(-steps), outgoing=outgoing)
