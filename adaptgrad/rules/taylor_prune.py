"""First-order Taylor pruning of units (Molchanov et al., ICLR 2017)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.units import UnitView


def lowest_active(scores: np.ndarray, active: np.ndarray, fraction: float) -> list[int]:
    """The ``round(fraction * n_active)`` (at least one) active units with the lowest scores,
    lowest first; ties broken by unit index."""
    candidates = np.flatnonzero(active)
    if candidates.size == 0:
        return []
    count = max(1, int(round(fraction * candidates.size)))
    order = candidates[np.lexsort((candidates, scores[candidates]))]
    return order[:count].tolist()


class TaylorPrune(AdaptationRule, name="taylor_prune"):
    """Gate off the active units with the smallest first-order Taylor score.

    s_j = |mean(a_j * g_j)| / ||s||_2 (``stats.taylor`` normalised by its L2 norm over the
    layer), the first-order estimate of the loss change when unit j is removed (Molchanov,
    Tyree, Karras, Aila, Kautz: "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", ICLR 2017). Each time it acts, gates ``round(fraction * n_active)`` (at least
    one) of the active units, lowest score first, never below ``min_active``.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import TaylorPrune
        >>> TaylorPrune(fraction=0.5).scores(np.array([0.3, -0.4, 0.0]), 1)
        array([0.6, 0.8, 0. ])
    """

    def __init__(self, *, fraction: float = 0.1, **schedule: int | None) -> None:
        super().__init__(**schedule)
        self.fraction = check_range(self.label, "fraction", fraction, 0.0, 1.0)

    @staticmethod
    def scores(act_grad_sum: np.ndarray, count: int) -> np.ndarray:
        """|mean(a*g)| per unit divided by its L2 norm over the layer."""
        taylor = np.abs(act_grad_sum) / max(count, 1)
        norm = np.linalg.norm(taylor)
        return taylor / norm if norm > 0 else taylor

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        scores = self.scores(stats.act_grad_sum, stats.count)
        units.gate(lowest_active(scores, units.active, self.fraction))

    def get_config(self) -> dict:
        return {**super().get_config(), "fraction": self.fraction}
