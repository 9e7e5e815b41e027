"""The control arm: records statistics, changes nothing."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from adaptgrad.rules.base import AdaptationRule
from adaptgrad.stats import OutputGradientStats


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class NoOp(AdaptationRule, name="none"):
    """Changes nothing and reads no statistic; every study needs its control arm.

    Example:
        >>> from adaptgrad.rules import NoOp
        >>> NoOp().apply(None, None, 0)
        >>> NoOp.reads
        frozenset()
    """

    reads: ClassVar[frozenset[str]] = frozenset()

    def apply(self, stats: OutputGradientStats, units: Any, epoch: int) -> None:
        return None
