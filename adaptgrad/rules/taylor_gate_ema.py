"""Per-batch Taylor gating with an EMA across epochs (Molchanov et al., CVPR 2019)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from adaptgrad.criteria import CRITERIA, check_criterion
from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.rules.scoring import lowest_active
from adaptgrad.rules.taylor_prune import sparsity_floor
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.units import UnitView


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class TaylorGateEMA(AdaptationRule, name="taylor_gate_ema"):
    """Gate off the active units with the smallest per-batch Taylor score, smoothed by an EMA.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import TaylorGateEMA
        >>> from adaptgrad import OutputGradientStats
        >>> rule = TaylorGateEMA(criterion="taylor_batch_sq")
        >>> s = rule.score(OutputGradientStats(batches=2, count=8, act_grad_batch_sq_sum=np.array([8.0, 2.0, 0.0])), None)
        >>> s
        array([4., 1., 0.])
        >>> TaylorGateEMA.smooth(s, np.array([0.0, 1.0, 10.0]), momentum=0.5)
        array([2., 1., 5.])

    Score (Molchanov, Mallya, Tyree, Frosio, Kautz: "Importance Estimation for Neural Network
    Pruning", CVPR 2019), per unit j with ``a`` its output and ``g = dL/da``: the paper's
    ``criterion="taylor_batch_sq"``::

        s_j = mean_b (sum_{n,t in b} a*g)**2 = act_grad_batch_sq_sum_j / batches

    the squared first-order loss change of removing unit j, computed per batch and averaged over
    the window's batches; or any other of :data:`adaptgrad.criteria.CRITERIA` (the default is the
    one that best predicts the gating oracle in the oracle study, experiments/README.md). On a
    recurrent layer the rule needs through-time statistics. Across the windows at which the rule
    acts it is smoothed::

        e <- momentum * e + (1 - momentum) * s        (the first time: e = s)

    and ``round(fraction * n_active)`` (at least one) active units with the lowest ``e`` are
    gated, never leaving fewer than ``max(min_active, ceil((1 - max_sparsity) * units))``
    (defaults: 10 % per epoch down to half the layer, reached after 7 epochs). The paper ranks
    globally over all layers; an :class:`~adaptgrad.Adapt` callback adapts one layer, so the
    ranking here is within the layer. Gated units keep an EMA entry (their score decays towards
    0) but are never ranked. The EMA is updated only when the schedule fires (statistics of
    other epochs are not seen). It is state: :meth:`get_state` / :meth:`set_state` carry it
    across a resume. With no batch accumulated the rule does nothing.

    **The paper's clock**: Molchanov et al. 2019 accumulate the squared per-batch term over 30
    minibatches, prune, and smooth with momentum 0.9 (NVlabs' Taylor_pruning configs):
    ``every_steps=30`` (``rule.every_steps=30``) gives exactly that: each action reads the mean
    over the 30 batches since the previous one, then updates the EMA. The epoch default (one
    action per epoch, over the epoch's batches) stays the one the studies use.

    Args:
        fraction: share of the active units gated each time the rule acts, in (0, 1).
        momentum: EMA momentum, in [0, 1) (0: no smoothing).
        max_sparsity: the largest share of the layer's units the rule may gate, in (0, 1].
        criterion: the score units are ranked by, a name in :data:`adaptgrad.criteria.CRITERIA`.
        start_epoch, every, stop_epoch, every_steps, start_step, stop_step, min_active: see
            :class:`~adaptgrad.rules.AdaptationRule`.
    """

    edit: ClassVar[str] = "gate"

    fraction: float = 0.1
    momentum: float = 0.9
    max_sparsity: float = 0.5
    criterion: str = "taylor_example_abs"
    ema: np.ndarray | None = dataclasses.field(default=None, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fraction = check_range(self.label, "fraction", self.fraction, 0.0, 1.0)
        self.momentum = check_range(self.label, "momentum", self.momentum, 0.0, 1.0, closed="left")
        self.max_sparsity = check_range(self.label, "max_sparsity", self.max_sparsity, 0.0, 1.0, closed="right")
        self.criterion = check_criterion(self.label, self.criterion)

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        return CRITERIA[self.criterion].reads

    def floor(self, size: int) -> int:
        return sparsity_floor(size, self.max_sparsity, self.min_active)

    @staticmethod
    def smooth(previous: np.ndarray | None, scores: np.ndarray, momentum: float) -> np.ndarray:
        """``momentum * previous + (1 - momentum) * scores``; ``scores`` if there is no previous."""
        scores = np.asarray(scores, dtype=np.float64)
        if previous is None:
            return scores.copy()
        return momentum * np.asarray(previous, dtype=np.float64) + (1.0 - momentum) * scores

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        if stats.batches == 0:
            return
        if self.ema is not None and self.ema.shape != (stats.units,):
            raise ValueError(f"{self.label}: EMA state has {self.ema.size} units but the layer has {stats.units}")
        self.ema = self.smooth(self.ema, self.score(stats, units), self.momentum)
        units.gate(lowest_active(self.ema, units.active, self.fraction))

    def get_state(self) -> dict[str, Any]:
        return {"ema": None if self.ema is None else self.ema.tolist()}

    def set_state(self, state: dict[str, Any]) -> None:
        ema = state.get("ema")
        self.ema = None if ema is None else np.array(ema, dtype=np.float64).ravel()
