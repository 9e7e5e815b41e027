"""Per-unit trust ratio turned into a rescale (LARS, You et al. 2017; LAMB, You et al. ICLR 2020)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from adaptgrad.rules.base import AdaptationRule, check_range
from adaptgrad.rules.scoring import per_batch, relative_to_active, scale_active
from adaptgrad.stats import OutputGradientStats

if TYPE_CHECKING:
    from adaptgrad.units import UnitView


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class TrustRatio(AdaptationRule, name="trust_ratio"):
    """Rescale units' incoming weights by their LARS trust ratio relative to the layer's median.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules import TrustRatio
        >>> lam = TrustRatio.ratios(np.array([8.0, 2.0, 0.5]), batches=2, norms=np.array([4.0, 2.0, 1.0]))
        >>> lam                                 # ||W_j|| / sqrt(weight_grad_sq_sum_j / batches)
        array([2., 2., 2.])
        >>> TrustRatio.factors(np.array([1.0, 2.0, 4.0]), np.ones(3, bool), power=1.0, max_factor=1.5)
        array([1.5       , 1.        , 0.66666667])

    LARS (You, Gitman, Ginsburg: "Large Batch Training of Convolutional Networks", 2017) and
    LAMB (You et al., ICLR 2020) scale a layer's step by the trust ratio
    ``lambda = c * ||W|| / (||grad W|| + beta * ||W||)``. Here per unit j, with W_j its incoming
    weights (its slice along the last axis of the kernel, recurrent kernel and bias, in every
    gate block of a GRU or LSTM: :func:`adaptgrad.units.incoming_weights`), over the epoch's B
    batches, from the watch's ``weight_grad_sq_sum`` (the true gradient of W_j on each batch,
    as the optimizer receives it)::

        g_j      = sqrt(weight_grad_sq_sum_j / B)            RMS over batches of ||dL_b/dW_j||
        lambda_j = c * ||W_j|| / (g_j + beta * ||W_j||)      ||W_j|| at the end of the epoch
        s_j      = clip((median_k lambda_k / lambda_j) ** power, 1/max_factor, max_factor)
        W_j     <- s_j * W_j

    the median over active units with ``||W_k|| > 0``. LARS equalises the relative step
    ``||step|| / ||W||`` across layers through the learning rate; as an edit of the weights the
    same aim pulls every unit's ratio toward the layer's median: ``||W_j||`` grows by s_j, so
    units whose weights are large relative to their gradient (large lambda_j) shrink and the
    others grow, gently (``power``) and within ``max_factor``. How the gradient then changes
    depends on the cell (for a positively homogeneous one, as MinimalRNN or a relu SimpleRNN,
    ``g_j`` becomes ``g_j / s_j`` and lambda_j about ``s_j**2 * lambda_j``). Any supported
    layer, any capture mode. ``c`` cancels in the ratio (kept for fidelity to the formula).
    Units with ``||W_j|| = 0`` (gated) are left alone; a unit with ``g_j = 0`` and ``beta = 0``
    has ``lambda_j = inf`` and gets ``1/max_factor``; if the median is not finite and positive
    (e.g. no batch accumulated) the rule does nothing. Units with ``s_j = 1`` are not edited.

    Args:
        c: trust coefficient, > 0.
        beta: weight-decay-like term of the denominator, >= 0.
        power: exponent of the relative ratio, in (0, 1].
        max_factor: bound on the factor, > 1 (factors lie in [1/max_factor, max_factor]).
        start_epoch, every, stop_epoch, min_active: see :class:`~adaptgrad.rules.AdaptationRule`.
    """

    reads: ClassVar[frozenset[str]] = frozenset({"weight_grad_sq_sum"})

    c: float = 1.0
    beta: float = 0.0
    power: float = 0.1
    max_factor: float = 1.5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.c = check_range(self.label, "c", self.c, 0.0, math.inf)
        self.beta = check_range(self.label, "beta", self.beta, 0.0, math.inf, closed="left")
        self.power = check_range(self.label, "power", self.power, 0.0, 1.0, closed="right")
        self.max_factor = check_range(self.label, "max_factor", self.max_factor, 1.0, math.inf)

    @staticmethod
    def ratios(
        weight_grad_sq_sum: np.ndarray, batches: int, norms: np.ndarray, *, c: float = 1.0, beta: float = 0.0
    ) -> np.ndarray:
        """lambda_j = c ||W_j|| / (g_j + beta ||W_j||), g_j = sqrt(weight_grad_sq_sum_j / batches);
        NaN where ``||W_j|| = 0`` (no ratio), inf where the denominator is 0."""
        norms = np.asarray(norms, dtype=np.float64)
        gradient = np.sqrt(per_batch(weight_grad_sq_sum, batches))
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = c * norms / (gradient + beta * norms)
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
        lam = self.ratios(stats.weight_grad_sq_sum, stats.batches, units.incoming_norms(), c=self.c, beta=self.beta)
        scale_active(units, self.factors(lam, units.active, power=self.power, max_factor=self.max_factor))
