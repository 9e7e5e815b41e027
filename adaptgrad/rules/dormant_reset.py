"""Dormant-unit recycling (ReDo, Sokar et al. ICML 2023; GraMa, Liu et al. 2025)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.units import UnitView

SCORES: dict[str, str] = {"grad": "mean_abs_grad", "activation": "mean_abs_act"}
"""``score`` option -> the :class:`~adaptgrad.OutputGradientStats` field it reads."""


def relative_to_active(
    scores: np.ndarray, active: np.ndarray, reference: Callable[[np.ndarray], float] = np.mean
) -> np.ndarray | None:
    """``scores / reference(scores[active])``; None if no unit is active or the reference is
    not a finite positive number (then no unit can be judged relative to the others).

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules.dormant_reset import relative_to_active
        >>> relative_to_active(np.array([1.0, 3.0, 8.0]), np.array([True, True, False]))
        array([0.5, 1.5, 4. ])
        >>> relative_to_active(np.zeros(2), np.ones(2, bool)) is None
        True
    """
    scores = np.asarray(scores, dtype=np.float64)
    active = np.asarray(active, dtype=bool)
    if not active.any():
        return None
    with np.errstate(invalid="ignore"):
        ref = float(reference(scores[active]))
    if not (np.isfinite(ref) and ref > 0):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return scores / ref


class DormantReset(AdaptationRule, name="dormant_reset"):
    """Re-initialise the active units whose gradient (or activity) is far below the layer's mean.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import DormantReset
        >>> DormantReset.dormant(np.array([0.05, 1.0, 1.95, 0.0]), np.array([True, True, True, False]),
        ...                      tau=0.1)
        [0]

    Score, per active unit j (Sokar, Agarwal, Castro, Evci: "The Dormant Neuron Phenomenon in
    Deep Reinforcement Learning", ICML 2023 (ReDo) with ``score="activation"``; Liu et al.,
    2025 (GraMa, gradient magnitude) with ``score="grad"``, the default)::

        r_j = s_j / mean_{k active} s_k,   s = mean|g| (``stats.mean_abs_grad``) or mean|a|

    Every active unit with ``r_j <= tau`` is dormant: its incoming weights are redrawn from
    the layer's initialisers, their optimizer slots reset, and (``zero_outgoing=True``, as in
    ReDo) its outgoing weights zeroed, so the reset does not perturb the network's function.
    Since the active units' mean ratio is 1 and ``tau < 1``, at least one unit is never
    dormant. If the mean score over active units is 0 (a layer with no gradient at all, or no
    batch accumulated), nothing can be judged and the rule does nothing. Gated units are
    neither scored nor reset.

    Args:
        tau: dormancy threshold on the ratio, in [0, 1) (0: only units with exactly zero score).
        score: ``"grad"`` (mean |dL/da|) or ``"activation"`` (mean |a|).
        zero_outgoing: also zero the dormant units' outgoing weights (next layer's input rows
            and, for recurrent layers, their recurrent rows).
        **schedule: ``start_epoch``, ``every``, ``stop_epoch``, ``min_active``.
    """

    def __init__(self, *, tau: float = 0.1, score: str = "grad", zero_outgoing: bool = True, **schedule: int | None) -> None:
        super().__init__(**schedule)
        self.tau = check_range(self.label, "tau", tau, 0.0, 1.0, closed="left")
        if score not in SCORES:
            raise ValueError(f"{self.label}: score={score!r} is not valid; valid: {', '.join(map(repr, SCORES))}")
        self.score = score
        if not isinstance(zero_outgoing, (bool, np.bool_)):
            raise ValueError(f"{self.label}: zero_outgoing={zero_outgoing!r} must be True or False")
        self.zero_outgoing = bool(zero_outgoing)

    @staticmethod
    def dormant(scores: np.ndarray, active: np.ndarray, tau: float) -> list[int]:
        """Active units whose score divided by the active units' mean score is <= tau."""
        ratios = relative_to_active(scores, active)
        if ratios is None:
            return []
        return np.flatnonzero(np.asarray(active, dtype=bool) & (ratios <= tau)).tolist()

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        dormant = self.dormant(getattr(stats, SCORES[self.score]), units.active, self.tau)
        units.reinit(dormant, zero_outgoing=self.zero_outgoing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tau": self.tau, "score": self.score, "zero_outgoing": self.zero_outgoing}
