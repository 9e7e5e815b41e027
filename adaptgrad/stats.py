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
``act_grad_example_sq_sum``   sum_n (sum_t H*G)**2  (per example: one sequence's steps, Molchanov et al. 2017)
``act_grad_example_abs_sum``  sum_n |sum_t H*G|
``act_grad_fisher_sum``       sum_b B_b * sum_{n in b} (sum_t H*G)**2  (B_b: the examples of batch b)
``act_abs_sum[j]``         sum |H|  (activity, ReDo)
``weight_grad_sq_sum[j]``  sum_b ||dL_b/dW_j||**2 over unit j's incoming weights W_j (LARS)
``batches``                number of batches accumulated
``count``                  number of (n, t) positions accumulated (masked steps excluded)
=========================  =====================================================

The per-example sums square (or take the absolute value of) each example's Taylor term
``sum_t H[n,t]*G[n,t]`` *before* summing over examples, as the papers do: near a stationary
point the plain total ``act_grad_sum`` tends to 0 for every unit and stops ranking them. Through
time, that term is the first-order loss change of gating the unit for that example (its output
removed at every step and from the recurrence). ``act_grad_fisher_sum`` is the second-order
term: with ``e_n = B_b * sum_t H*G`` the first-order change of example n's own loss, removing the
unit changes batch b's mean loss by about ``-sum_{n,t in b} H*G + (1/2B_b) sum_{n in b} e_n**2``
(the diagonal of the empirical Fisher in place of the Hessian), so
``(act_grad_fisher_sum / 2 - act_grad_sum) / batches`` estimates the mean change over batches.

``weight_grad_sq_sum`` is the one sum not made from G: W_j is unit j's slice along the last
axis of every weight that feeds it (kernel, recurrent kernel, bias, in every gate block; see
:func:`adaptgrad.units.incoming_weights`), and ``dL_b/dW_j`` the gradient the model's optimizer
receives for them on batch b (captured where it applies it), so ``sqrt(weight_grad_sq_sum / batches)``
is the RMS over batches of the per-batch gradient norm that LARS divides by.

A watch may capture only some of the sums (``adaptgrad.watch(..., stats=[...])``); the others
are absent from its snapshots, and reading one is an error that says how to ask for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

SUM_FIELDS: tuple[str, ...] = (
    "grad_sum",
    "grad_abs_sum",
    "grad_sq_sum",
    "act_grad_sum",
    "act_grad_batch_sq_sum",
    "act_grad_example_sq_sum",
    "act_grad_example_abs_sum",
    "act_grad_fisher_sum",
    "act_abs_sum",
    "weight_grad_sq_sum",
)
"""Names of the per-unit sum arrays, in the order the accumulators store them."""

ACTIVATION_FIELDS: frozenset[str] = frozenset(
    {
        "act_grad_sum",
        "act_grad_batch_sq_sum",
        "act_grad_example_sq_sum",
        "act_grad_example_abs_sum",
        "act_grad_fisher_sum",
        "act_abs_sum",
    }
)
"""The sums that need the layer's output H, not only its gradient G."""

WEIGHT_FIELDS: frozenset[str] = frozenset({"weight_grad_sq_sum"})
"""The sums made from the gradient of the layer's incoming weights (captured from the optimizer)."""

DERIVED_FROM: dict[str, str] = {
    "mean_grad": "grad_sum",
    "mean_abs_grad": "grad_abs_sum",
    "rms_grad": "grad_sq_sum",
    "taylor": "act_grad_sum",
    "mean_abs_act": "act_abs_sum",
}
"""Each derived per-unit mean -> the sum it is computed from."""

DERIVED_FIELDS: tuple[str, ...] = tuple(DERIVED_FROM)


def requested_fields(stats: Iterable[str] | None) -> frozenset[str]:
    """The sum fields a ``stats=`` argument asks for (None: all of them).

    Example:
        >>> sorted(requested_fields(["grad_sum", "act_grad_sum"]))
        ['act_grad_sum', 'grad_sum']
        >>> requested_fields(["taylor"])
        Traceback (most recent call last):
        ...
        ValueError: unknown statistic 'taylor' in stats=['taylor']; valid: 'grad_sum', 'grad_abs_sum', \
'grad_sq_sum', 'act_grad_sum', 'act_grad_batch_sq_sum', 'act_grad_example_sq_sum', 'act_grad_example_abs_sum', \
'act_grad_fisher_sum', 'act_abs_sum', 'weight_grad_sq_sum' (taylor is derived from act_grad_sum), or stats=None for all
    """
    if stats is None:
        return frozenset(SUM_FIELDS)
    if isinstance(stats, str):
        raise ValueError(f"stats must be a collection of field names, not the string {stats!r}; e.g. stats=[{stats!r}]")
    names = list(stats)
    for name in names:
        if name not in SUM_FIELDS:
            hint = f" ({name} is derived from {DERIVED_FROM[name]})" if name in DERIVED_FROM else ""
            valid = ", ".join(repr(field) for field in SUM_FIELDS)
            raise ValueError(f"unknown statistic {name!r} in stats={names!r}; valid: {valid}{hint}, or stats=None for all")
    return frozenset(names)


class OutputGradientStats:
    """A snapshot of the gradient statistics of one layer's output over one or more batches.

    Example:
        >>> import numpy as np, adaptgrad
        >>> s = adaptgrad.OutputGradientStats.zeros(3)
        >>> s.units, s.batches, s.taylor
        (3, 0, array([0., 0., 0.]))
        >>> g = adaptgrad.OutputGradientStats.zeros(3, fields=["grad_sum"])
        >>> sorted(g.as_dict())
        ['batches', 'count', 'grad_sum', 'mean_grad']
        >>> g.taylor
        Traceback (most recent call last):
        ...
        AttributeError: taylor needs act_grad_sum, which was not captured (captured: ['grad_sum']); \
ask for it with adaptgrad.watch(model, layer, stats=[..., 'act_grad_sum']), or stats=None for all

    Args:
        batches: number of batches accumulated.
        count: number of (n, t) positions accumulated.
        units: number of units; needed only when no sum is given (it is their length otherwise).
        **sums: the captured sums (names in :data:`SUM_FIELDS`), each of shape ``(units,)``.

    All arrays are read-only float64 copies: the snapshot never changes when training goes on.
    Means divide by ``count``; with ``count == 0`` they are all zero.
    """

    __slots__ = ("_sums", "_units", "batches", "count")

    def __init__(self, *, batches: int, count: int, units: int | None = None, **sums: Any) -> None:
        requested_fields(sums)  # names
        arrays = {}
        for name in SUM_FIELDS:
            if name in sums:
                array = np.array(sums[name], dtype=np.float64, copy=True)
                array.setflags(write=False)
                arrays[name] = array
        shapes = {array.shape for array in arrays.values()}
        if units is None and not arrays:
            raise ValueError("OutputGradientStats needs units= when no sum is given")
        expected = (int(units),) if units is not None else next(iter(shapes))
        if shapes - {expected} or len(expected) != 1:
            raise ValueError(f"every sum must have shape {expected} (units,), got { ({k: a.shape for k, a in arrays.items()}) }")
        object.__setattr__(self, "_sums", arrays)
        object.__setattr__(self, "_units", expected[0])
        object.__setattr__(self, "batches", int(batches))
        object.__setattr__(self, "count", int(count))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"OutputGradientStats is read-only; cannot set {name!r}")

    @classmethod
    def zeros(cls, units: int, fields: Iterable[str] | None = None) -> OutputGradientStats:
        """Statistics of no batches at all, for a layer of ``units`` units (``fields``: the sums
        present, None: all)."""
        return cls(**{name: np.zeros(units) for name in requested_fields(fields)}, units=units, batches=0, count=0)

    @property
    def fields(self) -> frozenset[str]:
        """The sums present in this snapshot."""
        return frozenset(self._sums)

    @property
    def units(self) -> int:
        """Number of units (output features) of the watched layer."""
        return self._units

    def _sum(self, name: str, needed_by: str | None = None) -> np.ndarray:
        if name not in self._sums:
            what = f"{needed_by} needs {name}, which was" if needed_by else f"{name} was"
            where = (
                " (it is captured where model.optimizer applies the gradients: compile the model with the "
                "optimizer that trains it)"
                if name in WEIGHT_FIELDS
                else ""
            )
            raise AttributeError(
                f"{what} not captured (captured: {sorted(self._sums)}); ask for it with "
                f"adaptgrad.watch(model, layer, stats=[..., {name!r}]), or stats=None for all{where}"
            )
        return self._sums[name]

    @property
    def grad_sum(self) -> np.ndarray:
        """sum G per unit."""
        return self._sum("grad_sum")

    @property
    def grad_abs_sum(self) -> np.ndarray:
        """sum |G| per unit."""
        return self._sum("grad_abs_sum")

    @property
    def grad_sq_sum(self) -> np.ndarray:
        """sum G**2 per unit."""
        return self._sum("grad_sq_sum")

    @property
    def act_grad_sum(self) -> np.ndarray:
        """sum H*G per unit."""
        return self._sum("act_grad_sum")

    @property
    def act_grad_batch_sq_sum(self) -> np.ndarray:
        """sum over batches of (sum H*G within the batch)**2, per unit."""
        return self._sum("act_grad_batch_sq_sum")

    @property
    def act_grad_example_sq_sum(self) -> np.ndarray:
        """sum over examples of (sum over the example's steps of H*G)**2, per unit."""
        return self._sum("act_grad_example_sq_sum")

    @property
    def act_grad_example_abs_sum(self) -> np.ndarray:
        """sum over examples of |sum over the example's steps of H*G|, per unit."""
        return self._sum("act_grad_example_abs_sum")

    @property
    def act_grad_fisher_sum(self) -> np.ndarray:
        """sum over batches of the batch size times sum over its examples of (sum_t H*G)**2, per unit."""
        return self._sum("act_grad_fisher_sum")

    @property
    def act_abs_sum(self) -> np.ndarray:
        """sum |H| per unit."""
        return self._sum("act_abs_sum")

    @property
    def weight_grad_sq_sum(self) -> np.ndarray:
        """sum over batches of the squared norm of the gradient of unit j's incoming weights."""
        return self._sum("weight_grad_sq_sum")

    def _mean(self, derived: str) -> np.ndarray:
        total = self._sum(DERIVED_FROM[derived], needed_by=derived)
        return total / self.count if self.count else np.zeros_like(total)

    @property
    def mean_grad(self) -> np.ndarray:
        """mean G per unit."""
        return self._mean("mean_grad")

    @property
    def mean_abs_grad(self) -> np.ndarray:
        """mean |G| per unit (GraMa's gradient magnitude)."""
        return self._mean("mean_abs_grad")

    @property
    def rms_grad(self) -> np.ndarray:
        """sqrt(mean G**2) per unit (RigL's regrowth score, at unit level)."""
        return np.sqrt(self._mean("rms_grad"))

    @property
    def taylor(self) -> np.ndarray:
        """|sum H*G| / count per unit: the first-order Taylor importance (Molchanov 2017)."""
        return np.abs(self._mean("taylor"))

    @property
    def mean_abs_act(self) -> np.ndarray:
        """mean |H| per unit (ReDo's activity score)."""
        return self._mean("mean_abs_act")

    @property
    def finite(self) -> bool:
        """True when every captured sum is finite (no NaN or inf gradient was seen)."""
        return all(np.isfinite(array).all() for array in self._sums.values())

    def __add__(self, other: OutputGradientStats) -> OutputGradientStats:
        """The statistics of both snapshots' batches together (same units, same fields).

        Example:
            >>> import numpy as np, adaptgrad
            >>> a = adaptgrad.OutputGradientStats(grad_sum=np.array([1.0, 2.0]), batches=1, count=4)
            >>> (a + a).grad_sum, (a + a).batches, (a + a).count
            (array([2., 4.]), 2, 8)
        """
        if not isinstance(other, OutputGradientStats):
            return NotImplemented
        if (other.units, other.fields) != (self.units, self.fields):
            raise ValueError(
                f"cannot add statistics of {other.units} units with fields {sorted(other.fields)} to {self.units} units "
                f"with fields {sorted(self.fields)}"
            )
        sums = {name: self._sums[name] + other._sums[name] for name in self._sums}
        return OutputGradientStats(**sums, units=self.units, batches=self.batches + other.batches, count=self.count + other.count)

    def as_dict(self) -> dict[str, np.ndarray | int]:
        """The captured sums, the means derived from them, and the counts, as a plain dict."""
        out: dict[str, np.ndarray | int] = dict(self._sums)
        out.update({name: getattr(self, name) for name, source in DERIVED_FROM.items() if source in self._sums})
        out.update(batches=self.batches, count=self.count)
        return out

    def __repr__(self) -> str:
        fields = [name for name in SUM_FIELDS if name in self._sums]
        return f"OutputGradientStats(units={self.units}, batches={self.batches}, count={self.count}, fields={fields})"
