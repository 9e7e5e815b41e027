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
    HalveNoisiest(start_epoch=0, every=2, stop_epoch=None, min_active=1)

A rule reads the epoch's :class:`~adaptgrad.OutputGradientStats` and edits the layer through a
:class:`~adaptgrad.UnitView`. It is a keyword-only dataclass: its fields are its configuration
(so its signature documents them and Hydra's ``_target_`` can build it), validated in
``__post_init__``; state across epochs goes through :meth:`get_state` / :meth:`set_state` so
that a resumed run continues exactly. ``reads`` names the statistics it needs (the watch must
capture them), and :meth:`check` refuses, when :class:`~adaptgrad.Adapt` is built, a model or
capture mode on which the rule could not act correctly.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from adaptgrad.checks import integer, number_in
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
        start_epoch: first epoch (0-based) at which the rule acts.
        every: act every ``every`` epochs from ``start_epoch`` on.
        stop_epoch: last epoch at which the rule may act (None: no end).
        min_active: the rule never gates the layer below this many active units.
    """

    name: ClassVar[str] = ""
    reads: ClassVar[frozenset[str]] = frozenset(SUM_FIELDS)
    """The :class:`~adaptgrad.OutputGradientStats` sum fields :meth:`apply` reads (the watch must
    capture them; the runner asks for the union over its rules). Default: all of them."""

    start_epoch: int = 0
    every: int = 1
    stop_epoch: int | None = None
    min_active: int = 1

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            taken = REGISTRY.get(name)
            if taken is not None and taken.__qualname__ != cls.__qualname__:  # a re-import is fine
                raise ValueError(f"rule name {name!r} is already taken by {taken.__qualname__}")
            cls.name = name
            REGISTRY[name] = cls
        unknown = set(cls.reads) - set(SUM_FIELDS)
        if unknown:
            raise ValueError(f"{cls.__qualname__}.reads names unknown fields {sorted(unknown)}; valid: {', '.join(SUM_FIELDS)}")

    def __post_init__(self) -> None:
        label = self.label
        self.start_epoch = check_int(label, "start_epoch", self.start_epoch, 0)
        self.every = check_int(label, "every", self.every, 1)
        if self.stop_epoch is not None:
            self.stop_epoch = check_int(label, "stop_epoch", self.stop_epoch, self.start_epoch)
        self.min_active = check_int(label, "min_active", self.min_active, 1)

    @property
    def label(self) -> str:
        """The name recorded in action tables: the registered name, else the class name."""
        return self.name or type(self).__name__

    def applies_at(self, epoch: int) -> bool:
        """True if the schedule lets the rule act at the end of ``epoch`` (0-based)."""
        if epoch < self.start_epoch or (self.stop_epoch is not None and epoch > self.stop_epoch):
            return False
        return (epoch - self.start_epoch) % self.every == 0

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
        if self.min_active > units.size:
            raise ValueError(
                f"{self.label}: min_active={self.min_active} exceeds the {units.size} units of "
                f"layer {units.layer.name!r}; valid: 1..{units.size}"
            )

    def require_next_layer(self, units: UnitView, why: str) -> None:
        """Raise ValueError (for :meth:`check`) if the layer's consumer is unknown."""
        if units.next_layer is None:
            raise ValueError(
                f"{self.label} {why}, but the layer that consumes {units.layer.name!r} is unknown; "
                f"pass next_layer=<its name> to adaptgrad.Adapt (or unit_view)"
            )

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        """Read ``stats`` and edit ``units`` (a :class:`~adaptgrad.UnitView`). Override this."""
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
