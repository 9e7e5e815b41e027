"""Grow units where the gradient points (GradMax, Evci et al. ICLR 2022), in Dense and recurrent layers."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from adaptgrad.rules.base import AdaptationRule, check_int, check_range
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.capture import GradientWatch
    from adaptgrad.growth import GrowthStatistic, GrowthWatch
    from adaptgrad.units import UnitView


DIRECTIONS = ("gradmax", "random")
"""How :class:`GradMax` chooses new units' outgoing weights."""


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class GradMax(AdaptationRule, name="gradmax"):
    """Switch gated units on with zero incoming weights and the outgoing weights that maximise
    their incoming-weight gradient.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import GradMax
        >>> GradMax.top_directions(np.diag([3.0, 1.0, 0.5]), count=2, scale=2.0, kappa=0.5, batches=1, threshold=0.8)
        ([array([2., 0., 0.]), array([0., 2., 0.])], [3.0, 1.0])
        >>> rule = GradMax(start_units=16, count=4)
        >>> rule.start_units, rule.count, rule.threshold, rule.directions
        (16, 4, 0.0, 'gradmax')

    GradMax (Evci, van Merriënboer, Unterthiner, Vladymyrov, Pedregosa: "GradMax: Growing
    Neural Networks using Gradient Information", ICLR 2022). A new unit with incoming weights θ
    = 0 outputs 0 (the network's function is unchanged) and gets the gradient ∂L/∂θ = κ wᵀ M
    for outgoing weights w (:mod:`adaptgrad.growth`: M over the training batches since the
    last growth step, κ the layer's f'(0)). Under ‖w‖ = c the k new units whose gradient
    norms are largest take w_i = c·u_i, u_i the top left singular vectors of M, and get
    ‖∂L/∂θ_i‖ = κ·c·σ_i(M). Here, at each scheduled epoch end:

    - w ranges over the coordinates a new unit may feed: the consumer's outputs and, in a
      recurrent layer, the recurrent-kernel columns of the *active* units (a gated unit's
      columns are its incoming weights, which stay 0);
    - c is the mean norm of the active units' outgoing weights over those coordinates
      (growneuron's choice); nothing grows while it is 0;
    - up to ``count`` of the gated units (lowest index first) are grown, one per singular
      direction, only those whose predicted gradient norm per batch, κ·c·σ_i / batches, is at
      least ``threshold`` (and σ_i > 0); each grow is an action ``grow`` whose value is the
      predicted norm κ·c·σ_i (summed over the batches);
    - the optimizer slots of the new weights are fresh; M is reset after every growth step.

    ``directions="random"`` is the control (growneuron's random growth): the same schedule, count
    and norm c, incoming weights 0, but each new unit's outgoing weights point in a random
    direction (Gaussian, scaled to norm c, seeded by the :class:`~adaptgrad.UnitView`'s seed
    and the epoch, so a resumed run draws the same). Its ``grow`` actions carry the same value,
    the norm κ‖wᵀM‖ of the gradient its incoming weights got over the batches of M (for
    ``gradmax`` this is κ·c·σ_i): the two are compared on one scale.

    ``start_units``: the layer starts with this many active units (the first ones) and the
    others gated, from the first training step (they are gated when :class:`~adaptgrad.Adapt`
    is built, and stay gated through ``model.save`` / ``load_model``). A gated unit costs what
    an active one does in every step (the layer runs at full width: ``scripts/bench_growth.py``
    measures it); :func:`adaptgrad.compact` gives the physical model at any time.

    Needs what :func:`adaptgrad.growth.watch_growth` needs (a ``Dense`` consumer reading the
    layer directly, a recurrent layer returning its last step, an activation with f(0) = 0 and
    f'(0) ≠ 0); :meth:`check` refuses anything else when the ``Adapt`` is built.

    Args:
        start_units: active units at the start (None: the layer starts at its full width).
        count: most units grown per growth step, >= 1.
        threshold: least predicted incoming-gradient norm per batch of a grown unit, >= 0.
        directions: ``"gradmax"`` (the top singular directions of M) or ``"random"`` (the control).
        start_epoch, every, stop_epoch, min_active: see :class:`~adaptgrad.rules.AdaptationRule`.
    """

    reads: ClassVar[frozenset[str]] = frozenset()

    start_units: int | None = None
    count: int = 1
    threshold: float = 0.0
    directions: str = "gradmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start_units is not None:
            self.start_units = check_int(self.label, "start_units", self.start_units, 1)
        self.count = check_int(self.label, "count", self.count, 1)
        self.threshold = check_range(self.label, "threshold", self.threshold, 0.0, float("inf"), closed="left")
        if self.directions not in DIRECTIONS:
            raise ValueError(f"{self.label}: directions={self.directions!r}; valid: {', '.join(map(repr, DIRECTIONS))}")
        self._growth: GrowthWatch | None = None

    def check(self, watch: GradientWatch, units: UnitView) -> None:
        """Validate, attach the growth statistic to the layer and gate the units beyond ``start_units``."""
        from adaptgrad import growth  # here: rules load without TensorFlow

        super().check(watch, units)
        self.require_next_layer(units, "gives new units outgoing weights in the next layer")
        if self.start_units is not None and self.start_units > units.size:
            raise ValueError(
                f"{self.label}: start_units={self.start_units} exceeds the {units.size} units of layer {units.layer.name!r}; "
                f"valid: 1..{units.size} (build the layer as wide as it may grow: model.units)"
            )
        if self._growth is None:
            self._growth = growth.watch_growth(units.model, units.layer, next_layer=units.next_layer)
        if self.start_units is not None:
            units.gate(range(self.start_units, units.size))

    @staticmethod
    def top_directions(
        matrix: np.ndarray, *, count: int, scale: float, kappa: float, batches: int, threshold: float
    ) -> tuple[list[np.ndarray], list[float]]:
        """The outgoing weights ``scale·u_i`` of up to ``count`` new units and their predicted
        gradient norms ``kappa·scale·σ_i`` (those with σ_i > 0 and a norm per batch >= ``threshold``)."""
        left, sigma, _ = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
        norms = abs(kappa) * scale * sigma
        keep = [i for i in range(min(count, sigma.size)) if sigma[i] > 0 and norms[i] / max(batches, 1) >= threshold]
        return [scale * left[:, i] for i in keep], [float(norms[i]) for i in keep]

    @staticmethod
    def random_directions(
        matrix: np.ndarray, *, count: int, scale: float, kappa: float, batches: int, threshold: float, rng: np.random.Generator
    ) -> tuple[list[np.ndarray], list[float]]:
        """``count`` random outgoing weights of norm ``scale`` and their gradient norms ``kappa·‖wᵀM‖``
        (those with a norm per batch >= ``threshold`` and > 0).

        Example:
            >>> import numpy as np
            >>> vectors, norms = GradMax.random_directions(
            ...     np.eye(3), count=2, scale=2.0, kappa=0.5, batches=1, threshold=0.0, rng=np.random.default_rng(0))
            >>> [round(float(np.linalg.norm(v)), 6) for v in vectors], [round(n, 6) for n in norms]
            ([2.0, 2.0], [1.0, 1.0])
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        drawn = rng.normal(size=(count, matrix.shape[0]))
        vectors = scale * drawn / np.linalg.norm(drawn, axis=1, keepdims=True)
        norms = abs(kappa) * np.linalg.norm(vectors @ matrix, axis=1)
        keep = [i for i in range(count) if norms[i] > 0 and norms[i] / max(batches, 1) >= threshold]
        return [vectors[i] for i in keep], [float(norms[i]) for i in keep]

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        from adaptgrad import growth  # here: rules load without TensorFlow

        assert self._growth is not None, "GradMax.check attaches the growth statistic"
        candidates = np.flatnonzero(~units.active)
        if candidates.size == 0 or self._growth.batches == 0:
            return
        statistic = self._growth.statistic()
        self._growth.reset()
        allowed, outgoing = growth.feedable(statistic, units.active), self._outgoing(statistic)
        scale = float(np.mean(np.linalg.norm(outgoing[units.active][:, allowed], axis=1)))
        if not scale > 0:
            return
        settings = dict(
            count=min(self.count, candidates.size),
            scale=scale,
            kappa=statistic.linearisation.kappa,
            batches=statistic.batches,
            threshold=self.threshold,
        )
        if self.directions == "random":
            seed = np.random.SeedSequence([units.seed, epoch, int(units.active.sum())])
            vectors, norms = self.random_directions(statistic.matrix[allowed], rng=np.random.default_rng(seed), **settings)
        else:
            vectors, norms = self.top_directions(statistic.matrix[allowed], **settings)
        grown = candidates[: len(vectors)].tolist()
        full = {}
        for unit, vector in zip(grown, vectors):
            full[unit] = np.zeros(allowed.size)
            full[unit][allowed] = vector
        consumer, outputs = self._growth.consumer.kernel, statistic.outputs

        def values(unit: int, variable: Any, index: tuple[Any, ...]) -> np.ndarray:
            if variable is consumer:
                return full[unit][:outputs]
            return full[unit][outputs:][index[-1]]

        units.grow(grown, values, norms)

    def _outgoing(self, statistic: GrowthStatistic) -> np.ndarray:
        """Every unit's outgoing weights over M's rows (a unit's own recurrent columns set to 0)."""
        assert self._growth is not None
        outgoing = [np.asarray(self._growth.consumer.kernel.numpy(), dtype=np.float64)]
        if self._growth.recurrent:
            recurrent = np.array(self._growth.layer.cell.recurrent_kernel.numpy(), dtype=np.float64)
            size = recurrent.shape[0]
            for unit in range(size):
                recurrent[unit, unit + size * np.arange(statistic.linearisation.blocks)] = 0.0
            outgoing.append(recurrent)
        return np.concatenate(outgoing, axis=1)

    def get_state(self) -> dict[str, Any]:
        """M accumulated since the last growth step (a resumed run continues it)."""
        return {} if self._growth is None else self._growth.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        if self._growth is not None and state:
            self._growth.set_state(state)
