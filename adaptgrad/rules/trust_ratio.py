"""Per-unit trust ratio turned into a rescale (LARS, You et al. 2017; LAMB, You et al. ICLR 2020)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from adaptgrad.rules.base import AdaptationRule, LayerKind, check_range
from adaptgrad.rules.fold import checked_fold, exact_mode, gain_fold
from adaptgrad.rules.scoring import per_batch, relative_to_active, scale_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.capture import GradientWatch
    from adaptgrad.units import UnitView


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class TrustRatio(AdaptationRule, name="trust_ratio"):
    """Rescale units by their LARS/LAMB trust ratio relative to the layer's median.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import TrustRatio
        >>> lam = TrustRatio.ratios(np.array([8.0, 2.0, 1.0]), batches=2, norms=np.array([2.0, 1.0, 1.0]))
        >>> lam                                 # ||W|| / (|mean_b x_b| / ||W||) = ||W||**2 / |m1|
        array([1., 1., 2.])
        >>> TrustRatio.factors(lam, np.ones(3, bool), power=1.0, max_factor=1.5).round(4)
        array([1.    , 1.    , 0.6667])

    LARS (You, Gitman, Ginsburg: "Large Batch Training of Convolutional Networks", 2017) and
    LAMB (You et al., ICLR 2020) scale a layer's step by the trust ratio
    ``lambda = c * ||W|| / (||grad W|| + beta * ||W||)``. Here per unit j, with W_j the weights
    its gain is folded into (:func:`adaptgrad.rules.fold.gain_fold`, chosen by :meth:`check`
    from the capture mode): in output mode the next layer's input rows that read unit j
    (:meth:`~adaptgrad.UnitView.outgoing_norms`), through time (positively homogeneous cells
    only) the unit's incoming weights (:meth:`~adaptgrad.UnitView.incoming_norms`).

    The statistics hold output gradients, not weight gradients, so ``||grad W_j||`` is
    estimated through the identity ``sum_{w in W_j} w * dL/dw = dL/dlog gamma_j``, which the
    watch's ``x_b = sum_{n,t in b} a*g`` is exactly, per batch b, for that choice of W_j::

        r_j = |act_grad_sum_j| / batches / ||W_j||  =  |<mean_b grad_b W_j, W_j / ||W_j||>|

    the radial component of the mean per-batch weight gradient, a lower bound of its norm (the
    tangential part is not observable from output statistics). Then::

        lambda_j = c * ||W_j|| / (r_j + beta * ||W_j||)
        s_j = clip((median_{k active} lambda_k / lambda_j) ** power, 1/max_factor, max_factor)

    and each active unit's W_j is multiplied by ``s_j``. LARS equalises the relative step
    ``||step|| / ||W||`` across layers through the learning rate; as an edit of the weights,
    the same aim pulls every unit's ratio toward the layer's median: scaling W_j by s scales
    ``lambda_j`` by about s, so units with a large weight norm relative to their gradient
    shrink and the others grow, gently (``power``) and within ``max_factor``. ``c`` cancels in
    the ratio (kept for fidelity to the formula). Units with ``||W_j|| = 0`` are left alone; a
    unit with ``r_j = 0`` and ``beta = 0`` has ``lambda_j = inf`` and gets ``1/max_factor``; if
    the median is not finite and positive (e.g. no batch accumulated) the rule does nothing.
    Units with ``s_j = 1`` are not edited.

    Args:
        c: trust coefficient, > 0.
        beta: weight-decay-like term of the denominator, >= 0.
        power: exponent of the relative ratio, in (0, 1].
        max_factor: bound on the factor, > 1 (factors lie in [1/max_factor, max_factor]).
        start_epoch, every, stop_epoch, min_active: see :class:`~adaptgrad.rules.AdaptationRule`.
    """

    reads: ClassVar[frozenset[str]] = frozenset({"act_grad_sum"})

    c: float = 1.0
    beta: float = 0.0
    power: float = 0.1
    max_factor: float = 1.5
    fold: str | None = dataclasses.field(default=None, init=False)
    """``"outgoing"`` or ``"incoming"``: which weights W_j are; set by :meth:`check`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.c = check_range(self.label, "c", self.c, 0.0, math.inf)
        self.beta = check_range(self.label, "beta", self.beta, 0.0, math.inf, closed="left")
        self.power = check_range(self.label, "power", self.power, 0.0, 1.0, closed="right")
        self.max_factor = check_range(self.label, "max_factor", self.max_factor, 1.0, math.inf)

    def through_time(self, layer: LayerKind) -> bool | None:
        return exact_mode(layer)

    def check(self, watch: GradientWatch, units: UnitView) -> None:
        self.fold = gain_fold(self.label, watch, units)  # first: its message says why and what to do
        super().check(watch, units)

    @staticmethod
    def ratios(act_grad_sum: np.ndarray, batches: int, norms: np.ndarray, *, c: float = 1.0, beta: float = 0.0) -> np.ndarray:
        """lambda_j = c ||W_j|| / (r_j + beta ||W_j||), r_j = |act_grad_sum_j| / batches / ||W_j||;
        NaN where ``||W_j|| = 0`` (no ratio), inf where the denominator is 0."""
        norms = np.asarray(norms, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            radial = np.abs(per_batch(act_grad_sum, batches)) / norms
            lam = c * norms / (radial + beta * norms)
        return np.where(norms > 0, lam, np.nan)

    @staticmethod
    def factors(ratios: np.ndarray, active: np.ndarray, *, power: float, max_factor: float) -> np.ndarray:
        """s_j = clip((median of active finite-norm lambda / lambda_j) ** power, 1/max_factor,
        max_factor); 1 for inactive units, units without a ratio, or when the median is unusable."""
        ratios = np.asarray(ratios, dtype=np.float64)
        judged = np.asarray(active, dtype=bool) & ~np.isnan(ratios)
        relative = relative_to_active(ratios, judged, np.median)
        if relative is None:
            return np.ones_like(ratios)
        with np.errstate(divide="ignore"):
            scaled = np.clip(relative ** (-power), 1.0 / max_factor, max_factor)
        return np.where(judged, scaled, 1.0)

    def apply(self, stats: OutputGradientStats, units: UnitView, epoch: int) -> None:
        outgoing = checked_fold(self) == "outgoing"
        norms = units.outgoing_norms() if outgoing else units.incoming_norms()
        lam = self.ratios(stats.act_grad_sum, stats.batches, norms, c=self.c, beta=self.beta)
        scale_active(units, self.factors(lam, units.active, power=self.power, max_factor=self.max_factor), outgoing=outgoing)
