"""Virtual-gain rescaling of units (GradInit, Zhu et al. 2021; MetaInit, Dauphin & Schoenholz 2019)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.rules.taylor_gate_ema import per_batch
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.units import UnitView


def scale_active(units: UnitView, factors: np.ndarray) -> list[int]:
    """Scale every active unit whose factor is finite and not exactly 1; return those units."""
    factors = np.asarray(factors, dtype=np.float64)
    chosen = np.flatnonzero(units.active & np.isfinite(factors) & (factors != 1.0))
    if chosen.size:
        units.scale(chosen.tolist(), factors[chosen])
    return chosen.tolist()


class GainRescale(AdaptationRule, name="gain_rescale"):
    """Take one normalised gradient step on a virtual gain per unit and fold it into the weights.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import GainRescale
        >>> GainRescale.steps(np.array([4.0, -4.0, 0.0]), np.array([4.0, 16.0, 0.0]), batches=4,
        ...                   lr=0.1, eps=0.0, max_step=0.5)
        array([ 0.1 , -0.05,  0.  ])
        >>> round(float(np.exp(-0.1)), 4)                   # unit 0's weights are multiplied by it
        0.9048

    Imagine a gain gamma_j (= 1) on unit j's output ``a_j``; then ``dL/dgamma_j = sum a*g`` with
    ``g = dL/da`` (GradInit: Zhu, Ni, Xu, Kong, Huang, Goldstein, NeurIPS 2021; MetaInit:
    Dauphin & Schoenholz, NeurIPS 2019 tune such gains by gradient). Per unit, over the epoch's
    B batches, with ``x_b = sum_{n,t in b} a*g`` the gain's gradient on batch b::

        m1_j = act_grad_sum_j / B            = mean_b x_b        (mean per-batch gain gradient)
        m2_j = act_grad_batch_sq_sum_j / B   = mean_b x_b**2     (its second moment over batches)
        step_j = clip(lr * m1_j / (sqrt(m2_j) + eps), -max_step, max_step)
        log gamma_j -= step_j,   i.e. unit j's incoming weights *= exp(-step_j)

    an Adam-like normalised step (``|m1| <= sqrt(m2)``, so ``|step| <= lr``): its size is set by
    how consistently the batches agree on the gain's direction, not by the gradient's scale.
    Folding the gain into the incoming weights (kernel columns of every gate block, recurrent
    columns, bias) equals an output gain exactly for positively homogeneous units (linear,
    ReLU, the shipped ``MinimalRNNCell``); for saturating units (tanh, GRU, LSTM) it is the
    first-order analogue. Only active units are scaled, and only where the step is non-zero
    (so no batch accumulated means no action).

    Args:
        lr: step size on log gamma, > 0.
        eps: added to sqrt(m2), >= 0 (a unit with m2 = 0 has m1 = 0 and takes no step).
        max_step: bound on ``|step|``, > 0 (factors stay within [exp(-max_step), exp(max_step)]).
        **schedule: ``start_epoch``, ``every``, ``stop_epoch``, ``min_active``.
    """

    def __init__(self, *, lr: float = 0.1, eps: float = 1e-8, max_step: float = 0.5, **schedule: int | None) -> None:
        super().__init__(**schedule)
        self.lr = check_range(self.label, "lr", lr, 0.0, math.inf)
        self.eps = check_range(self.label, "eps", eps, 0.0, math.inf, closed="left")
        self.max_step = check_range(self.label, "max_step", max_step, 0.0, math.inf)

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
        steps = self.steps(
            stats.act_grad_sum, stats.act_grad_batch_sq_sum, stats.batches, lr=self.lr, eps=self.eps, max_step=self.max_step
        )
        scale_active(units, np.exp(-steps))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lr": self.lr, "eps": self.eps, "max_step": self.max_step}
