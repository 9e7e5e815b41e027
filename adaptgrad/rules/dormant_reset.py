"""Dormant-unit recycling (ReDo, Sokar et al. ICML 2023; GraMa, Liu et al. 2025)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from adaptgrad.criteria import CRITERIA, check_criterion
from adaptgrad.rules.base import AdaptationRule, check_int, check_range
from adaptgrad.rules.schedule import Moment
from adaptgrad.rules.scoring import relative_to_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.capture import GradientWatch
    from adaptgrad.units import UnitView


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class DormantReset(AdaptationRule, name="dormant_reset"):
    """Re-initialise the active units whose activity (or gradient) is far below the layer's mean.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import DormantReset
        >>> DormantReset.dormant(np.array([0.05, 1.0, 1.95, 0.0]), np.array([True, True, True, False]),
        ...                      tau=0.1)
        [0]

    Score, per active unit j (Sokar, Agarwal, Castro, Evci: "The Dormant Neuron Phenomenon in
    Deep Reinforcement Learning", ICML 2023 (ReDo) with ``criterion="activation"``; Liu et al.,
    2025 (GraMa, gradient magnitude) with ``criterion="grad_abs"``; any name in
    :data:`adaptgrad.criteria.CRITERIA`)::

        r_j = s_j / mean_{k active} s_k,   s = mean|a| (``activation``), mean|g| (``grad_abs``), ...

    The default, ``taylor_example_abs`` (``sum_n |sum_t a*g| / batches``), estimates what the
    reset costs: re-initialising a unit with its outgoing weights zeroed changes the loss exactly as
    gating it does, and this is the criterion that best predicts the gating oracle in the oracle
    study (experiments/README.md); a unit is "dormant" when it matters far less than the others.

    Every active unit with ``r_j <= tau`` whose incoming weights are more than ``grace``
    epochs old (:attr:`~adaptgrad.UnitView.age`) is dormant: its incoming weights are redrawn
    from the layer's initialisers, their optimizer slots reset, and (``zero_outgoing=True``, as
    in ReDo) its outgoing weights zeroed, so the reset does not perturb the network's function.
    Since the active units' mean ratio is 1 and ``tau < 1``, at least one unit is never
    dormant. If the mean score over active units is 0 (no activity or gradient at all, or no
    batch accumulated), nothing can be judged and the rule does nothing. Gated units are
    neither scored nor reset.

    Why ``grace``, and why the activation score: right after a reset the unit's outgoing
    weights are 0, so its output gradient restarts near 0 and the ``grad_abs`` score calls it
    dormant again. On a GRU(16) (256 sequences of 10 steps, Adam 0.01, through time, tau=0.3)
    ``criterion="grad_abs"`` without grace re-initialised one unit in 8 of 8 epochs, its ratio falling
    0.26 -> 0.06 (issue #10, reproduced in ``tests/test_rules.py`` and ``scripts/grace_evidence.py``);
    with ``grace=2`` it reset nothing (the unit recovered before it could be judged again); the
    activation score reset nothing at tau 0.3 on that layer: the activation score of a
    freshly drawn unit is that of any other unit, so it does not loop. ``grace`` (default 2)
    gives a reset unit two epochs to grow outgoing weights before it is judged again, and keeps
    either score from resetting a unit twice within ``grace`` epochs. Units of a layer just
    built also have age 0, so the first reset can happen at the end of epoch ``grace``.

    **ReDo's clock**: ReDo recycles every F = 1000 gradient steps with tau = 0.1, judging the
    activity of a batch; here ``every_steps=1000`` (``rule.every_steps=1000`` on the command
    line) judges the mean activity over those 1000 steps, and ``grace`` is then in steps (its
    default of 2 steps protects nothing a period later; ReDo has none). The epoch defaults stay
    those the studies use.

    Args:
        tau: dormancy threshold on the ratio, in [0, 1) (0: only units with exactly zero score).
        criterion: the score r_j divides: ``"activation"`` (mean |a|, ReDo), ``"grad_abs"``
            (mean |dL/da|, GraMa) or another name in :data:`adaptgrad.criteria.CRITERIA`
            (default: ``"taylor_example_abs"``, the reset's first-order loss change per example).
        zero_outgoing: also zero the dormant units' outgoing weights (next layer's input rows
            and, for recurrent layers, their recurrent rows); needs the next layer.
        grace: units whose incoming weights are at most this many epochs (on the step clock:
            steps) old are not reset, >= 0.
        start_epoch, every, stop_epoch, every_steps, start_step, stop_step, min_active: see
            :class:`~adaptgrad.rules.AdaptationRule`.
    """

    edit: ClassVar[str] = "reinit"

    tau: float = 0.1
    criterion: str = "taylor_example_abs"
    zero_outgoing: bool = True
    grace: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tau = check_range(self.label, "tau", self.tau, 0.0, 1.0, closed="left")
        self.criterion = check_criterion(self.label, self.criterion)
        if not isinstance(self.zero_outgoing, (bool, np.bool_)):
            raise ValueError(f"{self.label}: zero_outgoing={self.zero_outgoing!r} must be True or False")
        self.zero_outgoing = bool(self.zero_outgoing)
        self.grace = check_int(self.label, "grace", self.grace, 0)

    @property
    def reads(self) -> frozenset[str]:  # type: ignore[override]
        return CRITERIA[self.criterion].reads

    def check(self, watch: GradientWatch, units: UnitView) -> None:
        super().check(watch, units)
        if self.zero_outgoing:
            self.require_next_layer(units, "zeroes the outgoing weights of the units it resets (zero_outgoing=True)")

    @staticmethod
    def dormant(scores: np.ndarray, active: np.ndarray, tau: float, eligible: np.ndarray | None = None) -> list[int]:
        """Active (and ``eligible``) units whose score divided by the active units' mean score is <= tau."""
        ratios = relative_to_active(scores, active)
        if ratios is None:
            return []
        judged = np.asarray(active, dtype=bool) if eligible is None else np.asarray(active, dtype=bool) & eligible
        return np.flatnonzero(judged & (ratios <= tau)).tolist()

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int, *, when: Moment | None = None) -> None:
        age = units.age if when is None else when.age
        dormant = self.dormant(self.score(stats, units), units.active, self.tau, age > self.grace)
        units.reinit(dormant, zero_outgoing=self.zero_outgoing)
