"""Drop / regrow swaps of units on a cosine schedule (RigL, Evci et al. ICML 2020, at unit level)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from adaptgrad.growth import GrowthWatch, revival_scores, saved_incoming, watch_growth
from adaptgrad.rules.base import AdaptationRule, check_int, check_range
from adaptgrad.rules.scoring import highest, lowest_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.capture import GradientWatch
    from adaptgrad.units import UnitView


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
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

    - drop: up to ``n`` active units with the lowest first-order Taylor score (``stats.taylor``,
      ``|mean a*g|``) among those whose incoming weights are more than ``grace`` epochs old
      (:attr:`~adaptgrad.UnitView.age`) are gated;
    - regrow: as many of the previously gated units as were dropped (fewer if fewer are gated),
      those with the highest regrowth score, ties going to the oldest incoming weights (``age``:
      in practice the unit gated longest ago), are ungated with their saved incoming weights,
      zero outgoing weights and reset optimizer slots, so they start without changing the
      network's function. Units dropped in this very step are never regrown in it.

    The regrowth score is the gradient a unit would get once revived (RigL's criterion; a gated
    unit's own output gradient is exactly 0, its outgoing weights being 0). Revived with incoming
    weights θ_j and outgoing weights 0, only its outgoing weights get a gradient, to first order
    in θ_j::

        score_j = κ ‖P M θ_j‖

    with M the growth statistic of :mod:`adaptgrad.growth` (Σ over the epoch's batches of
    δ_s x̄_sᵀ: the gradients at the consumers' pre-activations times what the unit reads), θ_j
    the unit's saved incoming weights in its candidate gate block, κ the layer's f'(0) and P the
    rows of the consumer's outputs and of the active units' recurrent columns
    (:func:`adaptgrad.growth.revival_scores`). It is 0 only for a unit whose saved weights are
    unknown (a model loaded with the unit gated). The rule needs what the growth statistic
    needs (a ``Dense`` consumer reading the layer directly, a recurrent layer returning its last
    step); :meth:`check` attaches it.

    So the number of active units stays constant once some units are gated; on a layer with no
    gated unit (the first step) the rule only drops, and it drops fewer than ``n`` if that would
    leave fewer than ``min_active`` units. The regrowth is done before the drop so that the
    floor limits only the net shrink. ``t`` is the epoch number Keras passes (0-based).

    Why ``grace``: a regrown unit starts with zero outgoing weights, so its output gradient and
    Taylor score are near 0 for the next epoch and it would be the first dropped. Measured on
    issue #10's setting (16 units, ``fraction=0.3, end_epoch=8``, through time, Adam 0.01, 256
    sequences of 10 steps, 10 epochs; GRU and LSTM with seeds 0 and 1, MinimalRNN seed 0), the share of regrown
    units dropped at the first epoch the grace allowed:

    =====  ==========================  ==========================================
    grace  dropped at once             regrown units' Taylor percentile, ages 1-3
    =====  ==========================  ==========================================
    0      34 of 55 (62 %), at t+1     ~0.17, then 0.0
    1      13 of 40 (33 %), at t+2     0.2-0.3
    2      3 of 30 (10 %), at t+3      0.2-0.3
    3      0 of 20                     0.1-0.3
    =====  ==========================  ==========================================

    (``scripts/grace_evidence.py``). The default ``grace=3`` is the smallest with none. Units of a layer just built have age 0
    too, so the first drop happens at the end of epoch ``grace`` (with the defaults, epoch 3:
    f = 0.24).

    Args:
        fraction: f0, the drop fraction at epoch 0, in (0, 1).
        end_epoch: T_end, the epoch from which the rule stops swapping, >= 1.
        grace: units whose incoming weights are at most this many epochs old are not dropped, >= 0.
        start_epoch, every, stop_epoch, min_active: see :class:`~adaptgrad.rules.AdaptationRule`.
    """

    reads: ClassVar[frozenset[str]] = frozenset({"act_grad_sum"})

    fraction: float = 0.3
    end_epoch: int = 10
    grace: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fraction = check_range(self.label, "fraction", self.fraction, 0.0, 1.0)
        self.end_epoch = check_int(self.label, "end_epoch", self.end_epoch, 1)
        self.grace = check_int(self.label, "grace", self.grace, 0)
        self._growth: GrowthWatch | None = None

    def check(self, watch: GradientWatch, units: UnitView) -> None:
        """Validate and attach the growth statistic the regrowth score reads."""
        super().check(watch, units)
        self.require_next_layer(units, "starts regrown units with zero outgoing weights")
        if self._growth is None:
            self._growth = watch_growth(units.model, units.layer, next_layer=units.next_layer)

    def regrowth_scores(self, units: UnitView) -> np.ndarray:
        """score_j (see the class docstring) of every gated unit over the batches since the rule
        last acted (0 for active units)."""
        if self._growth is None:
            raise RuntimeError(f"{self.label}: the growth statistic is attached by check(); build the Adapt first")
        statistic = self._growth.statistic()
        active = units.active
        incoming = {int(unit): saved_incoming(units, int(unit)) for unit in np.flatnonzero(~active)}
        return revival_scores(statistic, {unit: theta for unit, theta in incoming.items() if theta is not None}, active)

    @staticmethod
    def drop_fraction(epoch: int, *, fraction: float, end_epoch: int) -> float:
        """f_t = (fraction/2)(1 + cos(pi t / end_epoch)) for t < end_epoch, else 0."""
        if epoch >= end_epoch:
            return 0.0
        return fraction / 2.0 * (1.0 + math.cos(math.pi * epoch / end_epoch))

    @staticmethod
    def plan(
        taylor: np.ndarray,
        regrow_score: np.ndarray,
        active: np.ndarray,
        count: int,
        droppable: np.ndarray | None = None,
        age: np.ndarray | None = None,
    ) -> tuple[list[int], list[int]]:
        """(drop, regrow): up to ``count`` active (and ``droppable``) units with the lowest Taylor
        score (lowest first), and as many gated units with the highest ``regrow_score`` (highest
        first; ties: highest ``age``, then lowest index)."""
        active = np.asarray(active, dtype=bool)
        candidates = active if droppable is None else active & np.asarray(droppable, dtype=bool)
        drop = lowest_active(np.asarray(taylor, dtype=np.float64), candidates, 1.0)[:count]
        regrow = highest(regrow_score, np.flatnonzero(~active), len(drop), ties=age)
        return drop, regrow

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        active = units.active
        f_t = self.drop_fraction(epoch, fraction=self.fraction, end_epoch=self.end_epoch)
        count = int(round(f_t * int(active.sum())))
        if count == 0 or stats.batches == 0:
            return
        age = units.age
        scores = np.zeros(units.size)
        if not active.all() and (self._growth is None or self._growth.batches):  # no batch: every step skipped (overflow)
            scores = self.regrowth_scores(units)
        if self._growth is not None:
            self._growth.reset()
        drop, regrow = self.plan(stats.taylor, scores, active, count, age > self.grace, age)
        units.ungate(regrow, zero_outgoing=True)
        units.gate(drop)
