"""The base class of every adaptation rule.

Example:
    >>> import numpy as np
    >>> from adaptgrad.rules import AdaptationRule
    >>> class HalveNoisiest(AdaptationRule, name="halve_noisiest"):
    ...     '''Halve the incoming weights of the unit with the largest gradient RMS.'''
    ...     def apply(self, stats, units, epoch):
    ...         units.scale([int(np.argmax(stats.rms_grad))], 0.5)
    >>> HalveNoisiest(every=2).applies_at(3)
    False

A rule reads the epoch's :class:`~adaptgrad.OutputGradientStats` and edits the layer through a
:class:`~adaptgrad.UnitView`. It is configured by keyword arguments only, so that Hydra's
``_target_`` can build it, and keeps any state across epochs in :meth:`get_state` /
:meth:`set_state` so that a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from adaptgrad.stats import OutputGradientStats

REGISTRY: dict[str, type[AdaptationRule]] = {}
"""Short name -> rule class, filled by ``class MyRule(AdaptationRule, name="my_rule")``."""


def check_range(rule: str, name: str, value: float, low: float, high: float, *, closed: str = "neither") -> float:
    """Return ``value`` as float if it lies in the interval, else raise a ValueError naming it."""
    value = float(value)
    left = value >= low if closed in ("left", "both") else value > low
    right = value <= high if closed in ("right", "both") else value < high
    if not (left and right):  # NaN fails both comparisons
        brackets = {"neither": "()", "left": "[)", "right": "(]", "both": "[]"}[closed]
        raise ValueError(f"{rule}: {name}={value!r} is out of range; valid: {brackets[0]}{low}, {high}{brackets[1]}")
    return value


class AdaptationRule:
    """Subclass this and write :meth:`apply`; see the module docstring for an example.

    Args:
        start_epoch: first epoch (0-based) at which the rule acts.
        every: act every ``every`` epochs from ``start_epoch`` on.
        stop_epoch: last epoch at which the rule may act (None: no end).
        min_active: the rule never gates the layer below this many active units.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            taken = REGISTRY.get(name)
            if taken is not None and taken.__qualname__ != cls.__qualname__:  # a re-import is fine
                raise ValueError(f"rule name {name!r} is already taken by {taken.__qualname__}")
            cls.name = name
            REGISTRY[name] = cls

    def __init__(self, *, start_epoch: int = 0, every: int = 1, stop_epoch: int | None = None, min_active: int = 1) -> None:
        label = self.label
        if int(start_epoch) < 0:
            raise ValueError(f"{label}: start_epoch={start_epoch!r} must be >= 0")
        if int(every) < 1:
            raise ValueError(f"{label}: every={every!r} must be >= 1")
        if stop_epoch is not None and int(stop_epoch) < int(start_epoch):
            raise ValueError(f"{label}: stop_epoch={stop_epoch!r} must be >= start_epoch={start_epoch!r} (or None)")
        if int(min_active) < 1:
            raise ValueError(f"{label}: min_active={min_active!r} must be >= 1")
        self.start_epoch = int(start_epoch)
        self.every = int(every)
        self.stop_epoch = None if stop_epoch is None else int(stop_epoch)
        self.min_active = int(min_active)

    @property
    def label(self) -> str:
        """The name recorded in action tables: the registered name, else the class name."""
        return self.name or type(self).__name__

    def applies_at(self, epoch: int) -> bool:
        """True if the schedule lets the rule act at the end of ``epoch`` (0-based)."""
        if epoch < self.start_epoch or (self.stop_epoch is not None and epoch > self.stop_epoch):
            return False
        return (epoch - self.start_epoch) % self.every == 0

    def apply(self, stats: OutputGradientStats, units: Any, epoch: int) -> None:
        """Read ``stats`` and edit ``units`` (a :class:`~adaptgrad.UnitView`). Override this."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement apply(stats, units, epoch)")

    def get_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this rule (subclasses add theirs)."""
        return {"start_epoch": self.start_epoch, "every": self.every, "stop_epoch": self.stop_epoch, "min_active": self.min_active}

    def get_state(self) -> dict[str, Any]:
        """State carried across epochs (e.g. an EMA of scores), as plain values; default none."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
