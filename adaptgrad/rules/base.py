"""The base class of every adaptation rule.

Example:
    >>> import numpy as np
    >>> from adaptgrad.rules import AdaptationRule
    >>> class HalveNoisiest(AdaptationRule, name="halve_noisiest"):
    ...     '''Halve the incoming weights of the unit with the largest gradient RMS.'''
    ...     reads = frozenset({"grad_sq_sum"})
    ...     def apply(self, stats, units, epoch):
    ...         units.scale([int(np.argmax(stats.rms_grad))], 0.5)
    >>> HalveNoisiest(every=2).applies_at(3)
    False
    >>> HalveNoisiest(every=2)
    HalveNoisiest(start_epoch=0, every=2, stop_epoch=None, every_steps=None, start_step=0, stop_step=None, min_active=1)
    >>> HalveNoisiest(every_steps=100).schedule              # on the step clock instead
    Schedule(unit='step', every=100, start=0, stop=None)

A rule reads the :class:`~adaptgrad.OutputGradientStats` of the steps since it last acted (one
period of its schedule: every ``every`` epochs, or every ``every_steps`` optimizer steps inside
``fit``) and edits the layer through a :class:`~adaptgrad.UnitView`. It is a keyword-only
dataclass: its fields are its configuration (so its signature documents them and Hydra's
``_target_`` can build it), validated in
``__post_init__``; state across epochs goes through :meth:`get_state` / :meth:`set_state` so
that a resumed run continues exactly. ``reads`` names the statistics it needs (the watch must
capture them), and :meth:`check` refuses, when :class:`~adaptgrad.Adapt` is built, a model or
capture mode on which the rule could not act correctly.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from adaptgrad import criteria
from adaptgrad.checks import integer, number_in
from adaptgrad.rules.fold import LayerKind
from adaptgrad.rules.schedule import Moment, Schedule
from adaptgrad.stats import SUM_FIELDS, OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.capture import GradientWatch
    from adaptgrad.units import UnitView

REGISTRY: dict[str, type[AdaptationRule]] = {}
"""Short name -> rule class, filled by ``class MyRule(AdaptationRule, name="my_rule")``."""


def check_range(rule: str, name: str, value: float, low: float, high: float, *, closed: str = "neither") -> float:
    """Return ``value`` as float if it lies in the interval, else raise a ValueError naming it
    (:func:`adaptgrad.checks.number_in`)."""
    return number_in(f"{rule}: {name}", value, low, high, closed=closed)


def check_int(rule: str, name: str, value: Any, low: int) -> int:
    """Return ``value`` as int if it is a whole number >= ``low``, else raise a ValueError naming it
    (:func:`adaptgrad.checks.integer`)."""
    return integer(f"{rule}: {name}", value, low)


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class AdaptationRule:
    """Subclass this (as a ``@dataclasses.dataclass(kw_only=True, eq=False, repr=False)`` to add
    fields) and write :meth:`apply`; see the module docstring for an example.

    Args:
        start_epoch: first epoch (0-based) at whose end the rule acts.
        every: act every ``every`` epochs from ``start_epoch`` on.
        stop_epoch: last epoch at which the rule may act (None: no end).
        every_steps: act every ``every_steps`` optimizer steps instead, inside ``fit`` between
            two batches (None: the epoch clock above, whose three keys must then keep their
            defaults). The rule's own time parameters (a ``grace``, an end) are then in steps.
        start_step: on the step clock, the first step count at which the rule acts (0: at step
            ``every_steps``).
        stop_step: on the step clock, the last step count at which it may act (None: no end).
        min_active: the rule never gates the layer below this many active units.

    The clock is :attr:`schedule` (see :mod:`adaptgrad.rules.schedule`: a step rule acts at the
    first boundary between two train-step executions at or after each scheduled step).
    """

    name: ClassVar[str] = ""
    reads: ClassVar[frozenset[str]] = frozenset(SUM_FIELDS)
    """The :class:`~adaptgrad.OutputGradientStats` sum fields :meth:`apply` reads (the watch must
    capture them; the runner asks for the union over its rules). Default: all of them."""

    edit: ClassVar[str | None] = None
    """What the rule does to a unit: ``"gate"`` or ``"reinit"`` (the unit's output removed, so its
    statistics must describe removing it: through time on a recurrent layer), ``"scale"``, or None."""

    start_epoch: int = 0
    every: int = 1
    stop_epoch: int | None = None
    every_steps: int | None = None
    start_step: int = 0
    stop_step: int | None = None
    min_active: int = 1

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            taken = REGISTRY.get(name)
            if taken is not None and taken.__qualname__ != cls.__qualname__:  # a re-import is fine
                raise ValueError(f"rule name {name!r} is already taken by {taken.__qualname__}")
            cls.name = name
            REGISTRY[name] = cls
        unknown = set() if isinstance(cls.reads, property) else set(cls.reads) - set(SUM_FIELDS)
        if unknown:
            raise ValueError(f"{cls.__qualname__}.reads names unknown fields {sorted(unknown)}; valid: {', '.join(SUM_FIELDS)}")

    def __post_init__(self) -> None:
        label = self.label
        self.start_epoch = check_int(label, "start_epoch", self.start_epoch, 0)
        self.every = check_int(label, "every", self.every, 1)
        if self.stop_epoch is not None:
            self.stop_epoch = check_int(label, "stop_epoch", self.stop_epoch, self.start_epoch)
        self.start_step = check_int(label, "start_step", self.start_step, 0)
        if self.every_steps is None:
            if self.start_step != 0 or self.stop_step is not None:
                raise ValueError(
                    f"{label}: start_step={self.start_step!r}, stop_step={self.stop_step!r} need every_steps "
                    f"(the step clock); give every_steps=N, or use start_epoch/every/stop_epoch"
                )
        else:
            self.every_steps = check_int(label, "every_steps", self.every_steps, 1)
            if (self.start_epoch, self.every, self.stop_epoch) != (0, 1, None):
                raise ValueError(
                    f"{label}: every_steps={self.every_steps} puts the rule on the step clock, but start_epoch="
                    f"{self.start_epoch}, every={self.every}, stop_epoch={self.stop_epoch} set an epoch schedule; "
                    f"use start_step/stop_step (in steps) with every_steps, or leave every_steps=None"
                )
            if self.stop_step is not None:
                self.stop_step = check_int(label, "stop_step", self.stop_step, self.start_step)
        self.min_active = check_int(label, "min_active", self.min_active, 1)

    @property
    def label(self) -> str:
        """The name recorded in action tables: the registered name, else the class name."""
        return self.name or type(self).__name__

    @property
    def schedule(self) -> Schedule:
        """When the rule acts: every ``every_steps`` optimizer steps if set, else every ``every`` epochs."""
        if self.every_steps is not None:
            return Schedule("step", self.every_steps, self.start_step, self.stop_step)
        return Schedule("epoch", self.every, self.start_epoch, self.stop_epoch)

    def applies_at(self, epoch: int) -> bool:
        """True if the schedule lets the rule act at the end of ``epoch`` (0-based); always False
        on the step clock."""
        schedule = self.schedule
        return schedule.unit == "epoch" and schedule.fires(epoch - 1, epoch)

    def floor(self, size: int) -> int:
        """The fewest active units the rule may leave in a layer of ``size`` units (the view's
        ``min_active`` while it acts); ``min_active`` unless a subclass sets a tighter floor."""
        return self.min_active

    def check(self, watch: GradientWatch, units: UnitView) -> None:
        """Raise ValueError if the rule cannot act correctly on ``units`` with statistics from
        ``watch``; :class:`~adaptgrad.Adapt` calls it when built. Checks ``reads`` against the
        fields the watch captures and ``min_active`` against the layer; subclasses add theirs
        (calling this one)."""
        provided = frozenset(getattr(watch, "fields", SUM_FIELDS))
        missing = sorted(set(self.reads) - provided)
        if missing:
            raise ValueError(
                f"{self.label} reads {missing} but the watch on layer {units.layer.name!r} captures only "
                f"{sorted(provided)}; pass stats= including them to adaptgrad.watch (None: all)"
            )
        wanted = self.through_time(LayerKind.of(units.layer))
        if wanted is not None and bool(getattr(watch, "through_time", wanted)) != wanted:
            mode, other = ("through time", "through_time=True") if wanted else ("in output mode", "through_time=False")
            raise ValueError(
                f"{self.label} needs statistics captured {mode} on layer {units.layer.name!r}: they describe its "
                f"{self.edit or 'edit'} of a unit. Watch with adaptgrad.watch(model, {units.layer.name!r}, {other}) "
                f"(runner: through_time=auto picks it)"
            )
        if self.min_active > units.size:
            raise ValueError(
                f"{self.label}: min_active={self.min_active} exceeds the {units.size} units of "
                f"layer {units.layer.name!r}; valid: 1..{units.size}"
            )

    def through_time(self, layer: LayerKind) -> bool | None:
        """The capture mode whose statistics describe this rule's edit on a layer of this kind:
        True (through time), False (output mode) or None (either). A rule that removes units
        (``edit`` gate or reinit) on a recurrent layer needs through time: output-mode statistics
        of a recurrent layer describe zeroing its last output only, not removing the unit at every
        step and from the recurrence (the oracle's ``"gate"`` and ``"zero_output"`` edits differ)."""
        if self.edit in ("gate", "reinit") and layer.recurrent:
            return True
        return None

    def score(self, stats: OutputGradientStats, units: UnitView) -> np.ndarray:
        """The per-unit score the rule ranks units by (higher: the unit matters more), from this
        window's statistics: its ``criterion`` (:data:`adaptgrad.criteria.CRITERIA`) where it has
        one. :func:`adaptgrad.criteria.evaluate` judges it against :func:`adaptgrad.oracle`.

        Raises:
            NotImplementedError: the rule ranks no units (override this to expose its score).
        """
        criterion = getattr(self, "criterion", None)
        if criterion is None:
            raise NotImplementedError(f"{self.label} ranks no units by a score (it has no criterion); override score()")
        return criteria.score(criterion, stats)

    def require_next_layer(self, units: UnitView, why: str) -> None:
        """Raise ValueError (for :meth:`check`) if the layer's consumer is unknown."""
        if units.next_layer is None:
            raise ValueError(
                f"{self.label} {why}, but the layer that consumes {units.layer.name!r} is unknown; "
                f"pass next_layer=<its name> to adaptgrad.Adapt (or unit_view)"
            )

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int, *, when: Moment | None = None) -> None:
        """Read ``stats`` and edit ``units`` (a :class:`~adaptgrad.UnitView`). Override this.

        ``stats`` cover the steps since the rule's previous scheduled time; ``epoch`` is the
        epoch in progress. :class:`~adaptgrad.Adapt` passes ``when`` (a
        :class:`~adaptgrad.rules.schedule.Moment`: the step, and unit ages on the rule's clock)
        only to an ``apply`` that declares that keyword (or ``**kwargs``), so a rule written as
        ``apply(self, stats, units, epoch)`` keeps working; outside ``fit`` it may be None."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement apply(stats, units, epoch)")

    def get_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this rule (its init fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def get_state(self) -> dict[str, Any]:
        """State carried across epochs (e.g. an EMA of scores), as plain values; default none."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
