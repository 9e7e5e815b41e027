"""Scoring and selection helpers shared by the rules: pure functions of per-unit arrays.

Example:
    >>> import numpy as np
    >>> from adaptgrad.rules.scoring import lowest_active, highest
    >>> lowest_active(np.array([3.0, 1.0, 2.0, 0.0]), np.array([True, True, True, False]), 0.5)
    [1, 2]
    >>> highest(np.array([5.0, 1.0, 3.0, 3.0]), np.array([1, 2, 3]), 2)
    [2, 3]

Every function takes plain NumPy arrays of shape ``(units,)`` (scores, the ``active`` mask),
except :func:`scale_active`, which edits a :class:`~adaptgrad.UnitView`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from adaptgrad.units import UnitView

__all__ = ["highest", "lowest_active", "per_batch", "relative_to_active", "scale_active"]


def lowest_active(scores: np.ndarray, active: np.ndarray, fraction: float) -> list[int]:
    """The ``round(fraction * n_active)`` (at least one) active units with the lowest scores,
    lowest first; ties broken by unit index. Empty if no unit is active."""
    candidates = np.flatnonzero(active)
    if candidates.size == 0:
        return []
    count = max(1, int(round(fraction * candidates.size)))
    order = candidates[np.lexsort((candidates, np.asarray(scores, dtype=np.float64)[candidates]))]
    return order[:count].tolist()


def highest(scores: np.ndarray, candidates: np.ndarray, count: int, ties: np.ndarray | None = None) -> list[int]:
    """The ``count`` candidate units with the highest scores, highest first; ties broken by the
    highest ``ties`` value (if given), then by unit index."""
    candidates = np.asarray(candidates, dtype=np.int64)
    second = np.zeros(candidates.size) if ties is None else -np.asarray(ties, dtype=np.float64)[candidates]
    order = candidates[np.lexsort((candidates, second, -np.asarray(scores, dtype=np.float64)[candidates]))]
    return order[: max(int(count), 0)].tolist()


def relative_to_active(
    scores: np.ndarray, active: np.ndarray, reference: Callable[[np.ndarray], float] = np.mean
) -> np.ndarray | None:
    """``scores / reference(scores[active])``; None if no unit is active or the reference is
    not a finite positive number (then no unit can be judged relative to the others).

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules.scoring import relative_to_active
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


def per_batch(total: np.ndarray, batches: int) -> np.ndarray:
    """``total / batches`` as float64 (all zeros when no batch was accumulated).

    The statistics sum over batches; dividing by ``batches`` rather than ``count`` gives a
    per-batch mean, the scale of a per-batch gradient (of a unit gain, of a weight).

    Example:
        >>> import numpy as np
        >>> from adaptgrad.rules.scoring import per_batch
        >>> per_batch(np.array([2.0, -4.0]), 4), per_batch(np.array([2.0, -4.0]), 0)
        (array([ 0.5, -1. ]), array([0., 0.]))
    """
    total = np.asarray(total, dtype=np.float64)
    return total / batches if batches > 0 else np.zeros_like(total)


def scale_active(units: UnitView, factors: np.ndarray, *, outgoing: bool = False) -> list[int]:
    """Scale every active unit whose factor is finite and not exactly 1; return those units.

    ``outgoing=False`` multiplies the units' incoming weights (:meth:`~adaptgrad.UnitView.scale`),
    ``outgoing=True`` the next layer's weights that read them
    (:meth:`~adaptgrad.UnitView.scale_outgoing`).
    """
    factors = np.asarray(factors, dtype=np.float64)
    chosen = np.flatnonzero(units.active & np.isfinite(factors) & (factors != 1.0))
    if chosen.size:
        edit = units.scale_outgoing if outgoing else units.scale
        edit(chosen.tolist(), factors[chosen])
    return chosen.tolist()
