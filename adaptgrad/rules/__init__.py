"""Adaptation rules: the base class, the registry of shipped rules, and lookup by short name.

Example:
    >>> from adaptgrad import rules
    >>> sorted(rules.REGISTRY)[:2]
    ['dormant_reset', 'drop_regrow']
    >>> rules.get("taylor_prune", fraction=0.2)
    TaylorPrune(start_epoch=0, every=1, stop_epoch=None, every_steps=None, start_step=0, stop_step=None, min_active=1, \
fraction=0.2, max_sparsity=0.5, criterion='taylor_example_abs')
"""

from __future__ import annotations

from typing import Any

from adaptgrad.rules.base import REGISTRY, AdaptationRule
from adaptgrad.rules.dormant_reset import DormantReset
from adaptgrad.rules.drop_regrow import DropRegrow
from adaptgrad.rules.gain_rescale import GainRescale
from adaptgrad.rules.gradmax import GradMax
from adaptgrad.rules.none import NoOp
from adaptgrad.rules.schedule import Moment, Schedule
from adaptgrad.rules.taylor_gate_ema import TaylorGateEMA
from adaptgrad.rules.taylor_prune import RandomGate, TaylorPrune
from adaptgrad.rules.trust_ratio import TrustRatio

__all__ = [
    "REGISTRY",
    "AdaptationRule",
    "DormantReset",
    "DropRegrow",
    "GainRescale",
    "GradMax",
    "Moment",
    "NoOp",
    "RandomGate",
    "Schedule",
    "TaylorGateEMA",
    "TaylorPrune",
    "TrustRatio",
    "get",
]


def get(name: str, **kwargs: Any) -> AdaptationRule:
    """Build the shipped or registered rule called ``name`` with keyword arguments ``kwargs``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown rule {name!r}; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**kwargs)
