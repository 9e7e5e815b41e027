"""The control arm: records statistics, changes nothing."""

from __future__ import annotations

from typing import Any

from adaptgrad.rules.base import AdaptationRule
from adaptgrad.stats import OutputGradientStats


class NoOp(AdaptationRule, name="none"):
    """Changes nothing; every study needs its control arm.

    Example:
        >>> from adaptgrad.rules import NoOp
        >>> NoOp().apply(None, None, 0)
    """

    def apply(self, stats: OutputGradientStats, units: Any, epoch: int) -> None:
        return None
