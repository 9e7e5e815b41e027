"""Per-unit statistics of the loss gradient at a layer's output, accumulated over batches.

For batch b let ``L_b`` be the loss Keras minimises and ``H_b`` the watched output
(shape ``(B, units)`` or ``(B, T, units)``); ``G_b = dL_b/dH_b``. Sums run over batches and
over every batch/time position (n, t):

=========================  =====================================================
``grad_sum[j]``            sum G
``grad_abs_sum[j]``        sum |G|
``grad_sq_sum[j]``         sum G**2
``act_grad_sum[j]``        sum H*G  (first-order Taylor term, Molchanov et al. 2017)
``act_grad_batch_sq_sum``  sum_b (sum_{n,t in b} H*G)**2  (Molchanov et al. 2019)
``act_abs_sum[j]``         sum |H|  (activity, ReDo)
``batches``                number of batches accumulated
``count``                  number of (n, t) positions accumulated (masked steps excluded)
=========================  =====================================================
"""

from __future__ import annotations

import dataclasses

import numpy as np

SUM_FIELDS: tuple[str, ...] = (
    "grad_sum",
    "grad_abs_sum",
    "grad_sq_sum",
    "act_grad_sum",
    "act_grad_batch_sq_sum",
    "act_abs_sum",
)
"""Names of the per-unit sum arrays, in the order the accumulators store them."""

DERIVED_FIELDS: tuple[str, ...] = ("mean_grad", "mean_abs_grad", "rms_grad", "taylor", "mean_abs_act")


@dataclasses.dataclass(frozen=True)
class OutputGradientStats:
    """A snapshot of the gradient statistics of one layer's output over one or more batches.

    Example:
        >>> import numpy as np, adaptgrad
        >>> s = adaptgrad.OutputGradientStats.zeros(3)
        >>> s.units, s.batches, s.taylor
        (3, 0, array([0., 0., 0.]))

    All arrays are float64 copies of shape ``(units,)``: the snapshot never changes when
    training goes on. Means divide by ``count``; with ``count == 0`` they are all zero.
    """

    grad_sum: np.ndarray
    grad_abs_sum: np.ndarray
    grad_sq_sum: np.ndarray
    act_grad_sum: np.ndarray
    act_grad_batch_sq_sum: np.ndarray
    act_abs_sum: np.ndarray
    batches: int
    count: int

    def __post_init__(self) -> None:
        for name in SUM_FIELDS:
            array = np.array(getattr(self, name), dtype=np.float64, copy=True)
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "batches", int(self.batches))
        object.__setattr__(self, "count", int(self.count))

    @classmethod
    def zeros(cls, units: int) -> OutputGradientStats:
        """Statistics of no batches at all, for a layer of ``units`` units."""
        return cls(**{name: np.zeros(units) for name in SUM_FIELDS}, batches=0, count=0)

    @property
    def units(self) -> int:
        """Number of units (output features) of the watched layer."""
        return int(self.grad_sum.shape[0])

    def _mean(self, total: np.ndarray) -> np.ndarray:
        return total / self.count if self.count else np.zeros_like(total)

    @property
    def mean_grad(self) -> np.ndarray:
        """mean G per unit."""
        return self._mean(self.grad_sum)

    @property
    def mean_abs_grad(self) -> np.ndarray:
        """mean |G| per unit (GraMa's gradient magnitude)."""
        return self._mean(self.grad_abs_sum)

    @property
    def rms_grad(self) -> np.ndarray:
        """sqrt(mean G**2) per unit (RigL's regrowth score, at unit level)."""
        return np.sqrt(self._mean(self.grad_sq_sum))

    @property
    def taylor(self) -> np.ndarray:
        """|sum H*G| / count per unit: the first-order Taylor importance (Molchanov 2017)."""
        return np.abs(self._mean(self.act_grad_sum))

    @property
    def mean_abs_act(self) -> np.ndarray:
        """mean |H| per unit (ReDo's activity score)."""
        return self._mean(self.act_abs_sum)

    @property
    def finite(self) -> bool:
        """True when every accumulated sum is finite (no NaN or inf gradient was seen)."""
        return all(np.isfinite(getattr(self, name)).all() for name in SUM_FIELDS)

    def as_dict(self) -> dict[str, np.ndarray | int]:
        """Sums, derived means and counts as a plain dict (arrays per unit)."""
        out: dict[str, np.ndarray | int] = {name: getattr(self, name) for name in SUM_FIELDS}
        out.update({name: getattr(self, name) for name in DERIVED_FIELDS})
        out.update(batches=self.batches, count=self.count)
        return out
