"""Drop / regrow swaps of units on a cosine schedule (RigL, Evci et al. ICML 2020, at unit level)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.rules.taylor_prune import lowest_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.units import UnitView


def highest(scores: np.ndarray, candidates: np.ndarray, count: int) -> list[int]:
    """The ``count`` candidate units with the highest scores, highest first; ties by unit index.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules.drop_regrow import highest
        >>> highest(np.array([5.0, 1.0, 3.0, 3.0]), np.array([1, 2, 3]), 2)
        [2, 3]
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    order = candidates[np.lexsort((candidates, -np.asarray(scores, dtype=np.float64)[candidates]))]
    return order[: max(int(count), 0)].tolist()


def _whole_at_least_one(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and float(value) == int(value) >= 1
    except (TypeError, ValueError, OverflowError):
        return False


class DropRegrow(AdaptationRule, name="drop_regrow"):
    """Swap the least important active units for the most promising gated ones, less each epoch.

    Example:
        >>> from adaptgrad.rules import DropRegrow
        >>> [round(DropRegrow.drop_fraction(t, fraction=0.3, end_epoch=4), 4) for t in range(6)]
        [0.3, 0.2561, 0.15, 0.0439, 0.0, 0.0]

    RigL (Evci, Gale, Menick, Castro, Elsen: "Rigging the Lottery: Making All Tickets
    Winners", ICML 2020) drops the weakest weights and regrows as many where the gradient is
    largest, with a cosine-decaying drop fraction. Here at unit level, at epoch ``t``::

        f_t = (fraction / 2) * (1 + cos(pi * t / end_epoch))   for t < end_epoch, else 0
        n   = round(f_t * n_active)                             (no action if n == 0)

    - drop: the ``n`` active units with the lowest first-order Taylor score (``stats.taylor``,
      ``|mean a*g|``) are gated;
    - regrow: ``min(n, number of units gated before this step)`` of the previously gated units
      with the highest ``rms_grad`` (``sqrt(mean g**2)``, RigL's dense-gradient criterion; a
      gated unit outputs 0 but its output gradient is still seen) are ungated with zero outgoing
      weights and reset optimizer slots, so they start without changing the network's function.
      Units dropped in this very step are never regrown in it.

    So the number of active units stays constant once some units are gated; on a layer with no
    gated unit (the first step) the rule only drops, and it drops fewer than ``n`` if that would
    leave fewer than ``min_active`` units. The regrowth is done before the drop so that the
    floor limits only the net shrink: a layer already at ``min_active`` can still swap units.
    ``t`` is the epoch number Keras passes (0-based), not counted from ``start_epoch``.

    Args:
        fraction: f0, the drop fraction at epoch 0, in (0, 1).
        end_epoch: T_end, the epoch from which the rule stops swapping, >= 1.
        **schedule: ``start_epoch``, ``every``, ``stop_epoch``, ``min_active``.
    """

    def __init__(self, *, fraction: float = 0.3, end_epoch: int = 10, **schedule: int | None) -> None:
        super().__init__(**schedule)
        self.fraction = check_range(self.label, "fraction", fraction, 0.0, 1.0)
        if not _whole_at_least_one(end_epoch):
            raise ValueError(f"{self.label}: end_epoch={end_epoch!r} is out of range; valid: an integer >= 1")
        self.end_epoch = int(end_epoch)

    @staticmethod
    def drop_fraction(epoch: int, *, fraction: float, end_epoch: int) -> float:
        """f_t = (fraction/2)(1 + cos(pi t / end_epoch)) for t < end_epoch, else 0."""
        if epoch >= end_epoch:
            return 0.0
        return fraction / 2.0 * (1.0 + math.cos(math.pi * epoch / end_epoch))

    @staticmethod
    def plan(taylor: np.ndarray, rms_grad: np.ndarray, active: np.ndarray, count: int) -> tuple[list[int], list[int]]:
        """(drop, regrow): the ``count`` active units with the lowest Taylor score (lowest first)
        and up to ``count`` gated units with the highest ``rms_grad`` (highest first)."""
        active = np.asarray(active, dtype=bool)
        drop = lowest_active(np.asarray(taylor, dtype=np.float64), active, 1.0)[:count]
        regrow = highest(rms_grad, np.flatnonzero(~active), count)
        return drop, regrow

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        active = units.active
        f_t = self.drop_fraction(epoch, fraction=self.fraction, end_epoch=self.end_epoch)
        count = int(round(f_t * int(active.sum())))
        if count == 0 or stats.batches == 0:
            return
        drop, regrow = self.plan(stats.taylor, stats.rms_grad, active, count)
        units.ungate(regrow, zero_outgoing=True)
        units.gate(drop)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "fraction": self.fraction, "end_epoch": self.end_epoch}
