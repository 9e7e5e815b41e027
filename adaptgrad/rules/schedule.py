"""When a rule acts: its schedule, in epochs or in optimizer steps, and the moment it is told.

Example:
    >>> from adaptgrad.rules.schedule import Schedule
    >>> rigl = Schedule("step", every=100)              # RigL's mask update every ΔT = 100 steps
    >>> rigl.fires(0, 100), rigl.fires(100, 199), rigl.fires(196, 200), rigl.fires(0, 250)
    (True, False, True, True)
    >>> [epoch for epoch in range(7) if Schedule("epoch", every=2, start=1, stop=5).fires(epoch - 1, epoch)]
    [1, 3, 5]

A schedule's times are ``start, start + every, start + 2 * every, ...`` up to ``stop``
(inclusive), all in one unit: epochs (0-based, the time of an epoch's end) or optimizer steps
(the count of steps applied: ``model.optimizer.iterations``, which a skipped mixed-precision
step does not advance; 0 before training, so with ``start=0`` a step schedule first fires at
step ``every``). The anchors: TFMOT's ``PolynomialDecay(begin_step, end_step, frequency)``
and jaxpruner's ``PeriodicSchedule(update_freq, update_start_step, update_end_step)``.

The :class:`~adaptgrad.Adapt` callback checks schedules at *boundaries*: every epoch end, and
(only if some rule counts steps) every point between two executions of the train step, that is
every ``steps_per_execution`` steps and at the end of each epoch. A rule acts once at the first
boundary at or after a scheduled time (:meth:`Schedule.fires` between two boundaries), so with
``steps_per_execution`` > 1 or epochs that are not a multiple of it a step rule may act a few
steps late; the ``step`` column of ``actions.csv`` records when it did. The statistics it then
receives cover the steps since its previous scheduled time (its previous action): one period.
"""

from __future__ import annotations

import dataclasses

import numpy as np

UNITS = ("epoch", "step")
"""The two clocks a rule can run on."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The times at which a rule acts: ``start + k * every`` for k = 0, 1, ... while <= ``stop``.

    Args:
        unit: ``"epoch"`` or ``"step"`` (optimizer steps).
        every: the period, >= 1.
        start: the first time, >= 0.
        stop: the last time the rule may act (None: no end).
    """

    unit: str
    every: int = 1
    start: int = 0
    stop: int | None = None

    def next_time(self, after: int) -> int | None:
        """The first scheduled time strictly after ``after``; None when it would pass ``stop``.

        Example:
            >>> Schedule("step", every=30, start=60, stop=120).next_time(61), Schedule("step", every=30, stop=120).next_time(120)
            (90, None)
        """
        if after < self.start:
            time = self.start
        else:
            time = self.start + ((after - self.start) // self.every + 1) * self.every
        return time if self.stop is None or time <= self.stop else None

    def fires(self, after: int, upto: int) -> bool:
        """True if a scheduled time lies in ``(after, upto]``: the rule acts at the boundary ``upto``
        when the previous boundary was ``after``."""
        time = self.next_time(after)
        return time is not None and time <= upto

    @property
    def opening(self) -> int:
        """Where the statistics of the first action begin: one period before ``start``."""
        return self.start - self.every


@dataclasses.dataclass(frozen=True, eq=False)
class Moment:
    """When a rule acts, passed to :meth:`~adaptgrad.AdaptationRule.apply` as ``when=`` (to rules
    whose ``apply`` takes that keyword).

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules.schedule import Moment
        >>> now = Moment(epoch=2, step=150, unit="step", age=np.array([150, 40]))
        >>> now.time, now.age.tolist()
        (150, [150, 40])
        >>> Moment.epoch_end(2, np.array([3, 1])).time
        2

    Attributes:
        epoch: the epoch in progress (0-based; the one that just ended, at an epoch end).
        step: optimizer steps applied so far (None when the rule is called outside ``fit``).
        unit: the acting rule's clock, ``"epoch"`` or ``"step"``.
        age: per unit, how long ago its incoming weights were made new (built, re-initialised,
            regrown), in ``unit``: epoch ends passed (:attr:`~adaptgrad.UnitView.age`) or optimizer
            steps applied since.
    """

    epoch: int
    step: int | None
    unit: str
    age: np.ndarray

    @classmethod
    def epoch_end(cls, epoch: int, age: np.ndarray, step: int | None = None) -> Moment:
        """The moment of an epoch-clock rule at the end of ``epoch`` (ages in epochs)."""
        return cls(epoch=epoch, step=step, unit="epoch", age=np.asarray(age))

    @property
    def time(self) -> int:
        """Now on the rule's clock: ``step`` on the step clock, ``epoch`` on the epoch clock."""
        if self.unit == "step":
            if self.step is None:
                raise ValueError("a step-clock moment needs the step")
            return self.step
        return self.epoch
