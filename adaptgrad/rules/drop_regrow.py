"""Drop / regrow swaps of units on a cosine schedule (RigL, Evci et al. ICML 2020, at unit level)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from adaptgrad.criteria import CRITERIA, check_criterion
from adaptgrad.rules.base import AdaptationRule, check_int, check_range
from adaptgrad.rules.schedule import Moment
from adaptgrad.rules.scoring import highest, lowest_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.capture import GradientWatch
    from adaptgrad.growth import GrowthWatch
    from adaptgrad.units import UnitView


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class DropRegrow(AdaptationRule, name="drop_regrow"):
    """Swap the least important active units for the most promising gated ones, less each epoch.

    Example:
        >>> from adaptgrad.rules import DropRegrow
        >>> [round(DropRegrow.drop_fraction(t, fraction=0.3, end=4), 4) for t in range(6)]
        [0.3, 0.2561, 0.15, 0.0439, 0.0, 0.0]
        >>> DropRegrow(every_steps=100, end_step=3000, grace=300)   # RigL's clock: ΔT = 100 steps
        DropRegrow(start_epoch=0, every=1, stop_epoch=None, every_steps=100, start_step=0, stop_step=None, min_active=1, \
fraction=0.3, end_epoch=10, grace=300, end_step=3000, criterion='taylor_example_abs')

    RigL (Evci, Gale, Menick, Castro, Elsen: "Rigging the Lottery: Making All Tickets
    Winners", ICML 2020) drops the weakest weights and regrows as many where the gradient is
    largest, every ΔT = 100 optimizer steps, with a drop fraction decayed over steps by a cosine
    (alpha = 0.3, T_end = 75 % of training). Here at unit level, at time ``t`` on the rule's clock
    (the epoch, or with ``every_steps`` the optimizer step) with ``T = end_epoch`` (or ``end_step``)::

        f_t = (fraction / 2) * (1 + cos(pi * t / T))   for t < T, else 0
        n   = round(f_t * n_active)                     (no action if n == 0)

    - drop: up to ``n`` active units with the lowest ``criterion`` score (default: the
      per-example first-order Taylor score ``taylor_example_abs``, the best predictor of the
      gating oracle in the oracle study; see :data:`adaptgrad.criteria.CRITERIA`) among those
      whose incoming weights are more than ``grace`` epochs old (:attr:`~adaptgrad.UnitView.age`;
      on the step clock, steps) are gated;
    - regrow: as many of the previously gated units as were dropped (fewer if fewer are gated),
      those with the highest regrowth score, ties going to the unit gated longest ago (highest
      ``age``: gating resets a unit's age), then the lowest index, are ungated with their saved incoming weights,
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
    floor limits only the net shrink. ``t`` is the epoch number Keras passes (0-based), or on
    the step clock the optimizer steps applied.

    **RigL's clock**: ``every_steps=100, end_step=<75 % of the run's steps>`` (on the command
    line ``rule=drop_regrow rule.every_steps=100 rule.end_step=3000``): ``grace`` and ``end_step``
    are then in steps, and the statistics are those of the 100 steps since the last swap (RigL
    reads one batch's dense gradient). ``grace`` keeps its default of 3, which in steps is less
    than one period (no protection); ``grace=300`` gives regrown units three periods, as the
    default gives three epochs. The epoch defaults stay those the studies use.

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
        fraction: f0, the drop fraction at time 0, in (0, 1).
        end_epoch: T_end, the epoch from which the rule stops swapping, >= 1 (epoch clock).
        grace: units whose incoming weights are at most this many epochs (on the step clock:
            steps) old are not dropped, >= 0.
        end_step: T_end in optimizer steps, >= 1; required with ``every_steps``, refused without.
        criterion: the drop score, a name in :data:`adaptgrad.criteria.CRITERIA`.
        start_epoch, every, stop_epoch, every_steps, start_step, stop_step, min_active: the
            schedule and floor of :class:`~adaptgrad.rules.AdaptationRule`.
    """

    edit: ClassVar[str] = "gate"

    fraction: float = 0.3
    end_epoch: int = 10
    grace: int = 3
    end_step: int | None = None
    criterion: str = "taylor_example_abs"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fraction = check_range(self.label, "fraction", self.fraction, 0.0, 1.0)
        self.end_epoch = check_int(self.label, "end_epoch", self.end_epoch, 1)
        self.grace = check_int(self.label, "grace", self.grace, 0)
        if self.every_steps is None and self.end_step is not None:
            raise ValueError(f"{self.label}: end_step={self.end_step!r} needs every_steps (the step clock); use end_epoch")
        if self.every_steps is not None:
            if self.end_step is None:
                raise ValueError(
                    f"{self.label}: on the step clock (every_steps={self.every_steps}) the cosine decay needs end_step, "
                    f"T_end in optimizer steps (RigL: 75 % of the run's steps), e.g. end_step=3000"
                )
            self.end_step = check_int(self.label, "end_step", self.end_step, 1)
        self.criterion = check_criterion(self.label, self.criterion)
        self._growth: GrowthWatch | None = None

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        return CRITERIA[self.criterion].reads

    def check(self, watch: GradientWatch, units: UnitView) -> None:
        """Validate and attach the growth statistic the regrowth score reads."""
        from adaptgrad import growth  # here: rules load without TensorFlow

        super().check(watch, units)
        self.require_next_layer(units, "starts regrown units with zero outgoing weights")
        if self._growth is None:
            self._growth = growth.watch_growth(units.model, units.layer, next_layer=units.next_layer)

    def regrowth_scores(self, units: UnitView) -> np.ndarray:
        """score_j (see the class docstring) of every gated unit over the batches since the rule
        last acted (0 for active units)."""
        from adaptgrad import growth  # here: rules load without TensorFlow

        if self._growth is None:
            raise RuntimeError(f"{self.label}: the growth statistic is attached by check(); build the Adapt first")
        statistic = self._growth.statistic()
        active = units.active
        incoming = {int(unit): growth.saved_incoming(units, int(unit)) for unit in np.flatnonzero(~active)}
        return growth.revival_scores(statistic, {unit: theta for unit, theta in incoming.items() if theta is not None}, active)

    @staticmethod
    def drop_fraction(t: int, *, fraction: float, end: int) -> float:
        """f_t = (fraction/2)(1 + cos(pi t / end)) for t < end, else 0 (t and end in one unit)."""
        if t >= end:
            return 0.0
        return fraction / 2.0 * (1.0 + math.cos(math.pi * t / end))

    @staticmethod
    def plan(
        scores: np.ndarray,
        regrow_score: np.ndarray,
        active: np.ndarray,
        count: int,
        droppable: np.ndarray | None = None,
        age: np.ndarray | None = None,
    ) -> tuple[list[int], list[int]]:
        """(drop, regrow): up to ``count`` active (and ``droppable``) units with the lowest
        ``scores`` (lowest first), and as many gated units with the highest ``regrow_score``
        (highest first; ties: highest ``age``, then lowest index)."""
        active = np.asarray(active, dtype=bool)
        candidates = active if droppable is None else active & np.asarray(droppable, dtype=bool)
        drop = lowest_active(np.asarray(scores, dtype=np.float64), candidates, 1.0)[:count]
        regrow = highest(regrow_score, np.flatnonzero(~active), len(drop), ties=age)
        return drop, regrow

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int, *, when: Moment | None = None) -> None:
        when = when or Moment.epoch_end(epoch, units.age)
        active = units.active
        end = self.end_step if when.unit == "step" else self.end_epoch
        f_t = self.drop_fraction(when.time, fraction=self.fraction, end=end)
        count = int(round(f_t * int(active.sum())))
        if count == 0 or stats.batches == 0:
            return
        age = when.age
        regrowth = np.zeros(units.size)
        if not active.all() and (self._growth is None or self._growth.batches):  # no batch: every step skipped (overflow)
            regrowth = self.regrowth_scores(units)
        if self._growth is not None:
            self._growth.reset()
        drop, regrow = self.plan(self.score(stats, units), regrowth, active, count, age > self.grace, age)
        units.ungate(regrow, zero_outgoing=True)
        units.gate(drop)
