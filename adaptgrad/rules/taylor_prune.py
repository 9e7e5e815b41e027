"""First-order Taylor pruning of units (Molchanov et al., ICLR 2017)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

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
        >>> from adaptgrad.rules import TaylorPrune
        >>> TaylorPrune(fraction=0.5).scores(np.array([0.3, -0.4, 0.0]), 1)
        array([0.6, 0.8, 0. ])
        >>> TaylorPrune().floor(32)                      # the defaults never gate more than half
        16

    s_j = |mean(a_j * g_j)| / ||s||_2 (``stats.taylor`` normalised by its L2 norm over the
    layer), the first-order estimate of the loss change when unit j is removed (Molchanov,
    Tyree, Karras, Aila, Kautz: "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", ICLR 2017). Each time it acts, gates ``round(fraction * n_active)`` (at least
    one) of the active units, lowest score first, never leaving fewer than
    ``max(min_active, ceil((1 - max_sparsity) * units))`` active. With the defaults (10 % of
    the active units per epoch, ``max_sparsity=0.5``) a layer of 32 units reaches 16 after 7
    epochs and stays there: the rule cannot collapse a layer unless asked to.

    Args:
        fraction: share of the active units gated each time the rule acts, in (0, 1).
        max_sparsity: the largest share of the layer's units the rule may gate, in (0, 1].
        start_epoch, every, stop_epoch, min_active: the schedule and floor of
            :class:`~adaptgrad.rules.AdaptationRule`.
    """

    reads: ClassVar[frozenset[str]] = frozenset({"act_grad_sum"})

    fraction: float = 0.1
    max_sparsity: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fraction = check_range(self.label, "fraction", self.fraction, 0.0, 1.0)
        self.max_sparsity = check_range(self.label, "max_sparsity", self.max_sparsity, 0.0, 1.0, closed="right")

    def floor(self, size: int) -> int:
        return sparsity_floor(size, self.max_sparsity, self.min_active)

    @staticmethod
    def scores(act_grad_sum: np.ndarray, count: int) -> np.ndarray:
        """|mean(a*g)| per unit divided by its L2 norm over the layer."""
        taylor = np.abs(act_grad_sum) / max(count, 1)
        norm = np.linalg.norm(taylor)
        return taylor / norm if norm > 0 else taylor

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        scores = self.scores(stats.act_grad_sum, stats.count)
        units.gate(lowest_active(scores, units.active, self.fraction))
