"""First-order Taylor pruning of units (Molchanov et al., ICLR 2017)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

from adaptgrad.criteria import CRITERIA, check_criterion
from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.rules.scoring import lowest_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.units import UnitView


def sparsity_floor(size: int, max_sparsity: float, min_active: int) -> int:
    """Fewest active units a gating rule may leave: ``max(min_active, ceil((1 - max_sparsity) * size))``.

    Example:
        >>> from adaptgrad.rules.taylor_prune import sparsity_floor
        >>> sparsity_floor(32, 0.5, 1), sparsity_floor(7, 0.5, 1), sparsity_floor(8, 1.0, 3)
        (16, 4, 3)
    """
    return max(int(min_active), math.ceil(round((1.0 - max_sparsity) * size, 9)))


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class TaylorPrune(AdaptationRule, name="taylor_prune"):
    """Gate off the active units with the smallest first-order Taylor score, down to a floor.

    Example:
        >>> import numpy as np
        >>> from adaptgrad import OutputGradientStats
        >>> from adaptgrad.rules import TaylorPrune
        >>> rule = TaylorPrune(fraction=0.5)
        >>> rule.criterion, sorted(rule.reads)
        ('taylor_example_abs', ['act_grad_example_abs_sum'])
        >>> rule.score(OutputGradientStats(batches=2, count=6, act_grad_example_abs_sum=np.array([0.6, 0.2, 1.0])), None)
        array([0.3, 0.1, 0.5])
        >>> TaylorPrune().floor(32)                      # the defaults never gate more than half
        16

    The first-order estimate of the loss change when unit j is removed (Molchanov, Tyree, Karras,
    Aila, Kautz: "Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR
    2017): for one example the change is about ``-sum_t a_j * g_j`` over its steps (through time:
    the unit removed at every step and from the recurrence), and the paper takes its absolute
    value per example before averaging over the data. The default ``criterion`` is that,
    ``sum_n |sum_t a*g| / batches`` (``taylor_example_abs``), the best predictor of the gating
    oracle among :data:`adaptgrad.criteria.CRITERIA` in the oracle study (experiments/README.md);
    ``criterion="taylor"`` is the total ``|sum a*g|`` over the data, which cancels near a stationary
    point. Each time it acts, gates ``round(fraction * n_active)`` (at least one) of the active
    units, lowest score first, never leaving fewer than
    ``max(min_active, ceil((1 - max_sparsity) * units))`` active. With the defaults (10 % of the
    active units per epoch, ``max_sparsity=0.5``) a layer of 32 units reaches 16 after 7 epochs and
    stays there: the rule cannot collapse a layer unless asked to. On a recurrent layer it needs
    through-time statistics (:meth:`~adaptgrad.rules.AdaptationRule.through_time`).

    Args:
        fraction: share of the active units gated each time the rule acts, in (0, 1).
        max_sparsity: the largest share of the layer's units the rule may gate, in (0, 1].
        criterion: the score units are ranked by, a name in :data:`adaptgrad.criteria.CRITERIA`.
        start_epoch, every, stop_epoch, min_active: the schedule and floor of
            :class:`~adaptgrad.rules.AdaptationRule`.
    """

    edit: ClassVar[str] = "gate"

    fraction: float = 0.1
    max_sparsity: float = 0.5
    criterion: str = "taylor_example_abs"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fraction = check_range(self.label, "fraction", self.fraction, 0.0, 1.0)
        self.max_sparsity = check_range(self.label, "max_sparsity", self.max_sparsity, 0.0, 1.0, closed="right")
        self.criterion = check_criterion(self.label, self.criterion)

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        return CRITERIA[self.criterion].reads

    def floor(self, size: int) -> int:
        return sparsity_floor(size, self.max_sparsity, self.min_active)

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        units.gate(lowest_active(self.score(stats, units), units.active, self.fraction))


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class RandomGate(TaylorPrune, name="random_gate"):
    """The control of a gating rule: :class:`TaylorPrune`'s schedule and floor, random units.

    Example:
        >>> from adaptgrad.rules import RandomGate
        >>> RandomGate().criterion, RandomGate().floor(32)
        ('random', 16)

    Gates ``round(fraction * n_active)`` active units chosen at random each time it acts (the
    ``random`` criterion of :data:`adaptgrad.criteria.CRITERIA`, drawn from the window's
    statistics, so a rerun draws the same units), down to the same floor. A study arm of it says
    what gating that many units costs with no criterion at all: a gating rule's criterion is worth
    what it gains over this arm.
    """

    criterion: str = "random"
