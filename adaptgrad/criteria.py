"""Criteria: per-unit scores from the captured statistics, and how well they predict the oracle.

Example:
    >>> import numpy as np
    >>> from adaptgrad.criteria import evaluate
    >>> truth = np.array([0.5, 0.01, 0.2, 0.02])          # adaptgrad.oracle(...): loss change of each edit
    >>> table = evaluate(truth, {"good": np.array([9.0, 1.0, 5.0, 2.0]), "bad": np.array([1.0, 9.0, 2.0, 5.0])}, k=2)
    >>> print(table[["criterion", "spearman", "overlap", "cost_ratio"]].round(2).to_string(index=False))
    criterion  spearman  overlap  cost_ratio
         good       1.0      1.0        1.00
          bad      -1.0      0.0       23.33

A criterion scores how much each unit matters; a gating rule removes the units it scores lowest.
It is judged as Molchanov et al. (2017, 2019) judge theirs, against the *oracle* (the true loss
change of removing each unit alone, :func:`adaptgrad.oracle`): the rank correlation of the score
with ``|oracle|``, and what its ``k`` lowest picks cost against the best ``k``.

The named criteria (:data:`CRITERIA`), each a function of an
:class:`~adaptgrad.OutputGradientStats`, per unit j with ``a`` its output, ``g = dL/da``,
``b`` a batch, ``n`` an example and ``t`` a step of it:

======================  ==========================================  =================================
name                    score                                       source
======================  ==========================================  =================================
``taylor``              ``|sum a*g| / count``                       Molchanov 2017 as a total over data
``taylor_batch_sq``     ``sum_b (sum_{n,t in b} a*g)**2 / batches``  Molchanov 2019
``taylor_example_sq``   ``sum_n (sum_t a*g)**2 / batches``          Molchanov 2017, per example, squared
``taylor_example_abs``  ``sum_n |sum_t a*g| / batches``             Molchanov 2017, per example
``taylor_fisher``       ``|sum_b (fisher_b / 2 - sum a*g)| / batches``  second order: Taylor + empirical Fisher
``activation``          ``mean |a|``                                ReDo (Sokar et al. 2023)
``grad_abs``            ``mean |g|``                                GraMa (Liu et al. 2025)
``grad_rms``            ``sqrt(mean g**2)``                         RigL's gradient, per unit
``random``              uniform in [0, 1), drawn anew each window   the control: a rule without a criterion
======================  ==========================================  =================================

``taylor_fisher`` estimates the loss change of removing the unit to second order, the
empirical Fisher standing in for the Hessian (as in Optimal Brain Damage, with Molchanov et al.'s
per-example terms): ``act_grad_fisher_sum`` (:mod:`adaptgrad.stats`). Near a stationary point
the first-order total tends to 0 and the second-order term is what is left.

Through time (``watch(..., through_time=True)``) ``sum_t a*g`` over an example's steps is the
first-order loss change of gating the unit for that example (its output removed at every step
and from the recurrence, the oracle's ``"gate"`` edit); in output mode it describes zeroing the
output the next layer reads (``"zero_output"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from adaptgrad.stats import OutputGradientStats

__all__ = ["CRITERIA", "Criterion", "evaluate", "score"]


def _per_batch(total: np.ndarray, batches: int) -> np.ndarray:
    return np.asarray(total, np.float64) / batches if batches else np.zeros_like(total, dtype=np.float64)


def _random(stats: OutputGradientStats) -> np.ndarray:
    """Uniform scores seeded by the statistics themselves: a run gives the same draws again (and
    after a resume), a new window new ones, and no rule needs a random state of its own."""
    digest = hashlib.blake2b(repr((stats.batches, stats.count)).encode(), digest_size=8)
    for name in sorted(stats.fields):
        digest.update(np.ascontiguousarray(getattr(stats, name)).tobytes())
    return np.random.default_rng(int.from_bytes(digest.digest(), "little")).random(stats.units)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A named per-unit score: ``compute(stats)``, reading the sums ``reads``."""

    name: str
    reads: frozenset[str]
    compute: Callable[[OutputGradientStats], np.ndarray]


CRITERIA: dict[str, Criterion] = {
    criterion.name: criterion
    for criterion in (
        Criterion("taylor", frozenset({"act_grad_sum"}), lambda s: s.taylor),
        Criterion(
            "taylor_batch_sq", frozenset({"act_grad_batch_sq_sum"}), lambda s: _per_batch(s.act_grad_batch_sq_sum, s.batches)
        ),
        Criterion(
            "taylor_example_sq",
            frozenset({"act_grad_example_sq_sum"}),
            lambda s: _per_batch(s.act_grad_example_sq_sum, s.batches),
        ),
        Criterion(
            "taylor_example_abs",
            frozenset({"act_grad_example_abs_sum"}),
            lambda s: _per_batch(s.act_grad_example_abs_sum, s.batches),
        ),
        Criterion(
            "taylor_fisher",
            frozenset({"act_grad_sum", "act_grad_fisher_sum"}),
            lambda s: np.abs(_per_batch(s.act_grad_fisher_sum / 2 - s.act_grad_sum, s.batches)),
        ),
        Criterion("activation", frozenset({"act_abs_sum"}), lambda s: s.mean_abs_act),
        Criterion("grad_abs", frozenset({"grad_abs_sum"}), lambda s: s.mean_abs_grad),
        Criterion("grad_rms", frozenset({"grad_sq_sum"}), lambda s: s.rms_grad),
        Criterion("random", frozenset(), lambda s: _random(s)),
    )
}
"""Every named criterion, by name (see the module docstring)."""


def check_criterion(owner: str, name: str) -> str:
    """``name`` if it names a criterion, else a ValueError that lists them."""
    if name not in CRITERIA:
        raise ValueError(f"{owner}: unknown criterion {name!r}; valid: {', '.join(map(repr, CRITERIA))}")
    return name


def score(name: str, stats: OutputGradientStats) -> np.ndarray:
    """The criterion ``name`` of ``stats``, per unit (float64).

    Example:
        >>> import numpy as np
        >>> from adaptgrad import OutputGradientStats
        >>> from adaptgrad.criteria import score
        >>> stats = OutputGradientStats(batches=2, count=8, act_grad_example_abs_sum=np.array([4.0, 1.0]))
        >>> score("taylor_example_abs", stats)
        array([2. , 0.5])
    """
    return np.asarray(CRITERIA[check_criterion("score", name)].compute(stats), dtype=np.float64)


def evaluate(
    oracle: np.ndarray, scores: Mapping[str, np.ndarray], *, k: int = 4, candidates: np.ndarray | None = None
) -> pd.DataFrame:
    """How well each criterion predicts the oracle: one row per criterion.

    Args:
        oracle: the true loss change of each unit's edit (:func:`adaptgrad.oracle`), ``(units,)``.
        scores: criterion name -> per-unit score (higher: the unit matters more).
        k: how many units a rule would pick (the ``k`` lowest scores).
        candidates: boolean ``(units,)``: the units that may be picked and are ranked (default:
            all), e.g. the active ones.

    Returns:
        DataFrame with ``criterion``; ``spearman`` and ``pearson`` of the score with
        ``|oracle|``; ``overlap``, the share of the criterion's ``k`` picks among the ``k`` units
        of smallest ``|oracle|``; ``cost``, the summed oracle of its ``k`` picks (the loss change of
        removing them one at a time); ``best_cost``, the same for the ``k`` units of smallest
        oracle; ``cost_ratio = cost / best_cost`` (NaN unless ``best_cost > 0``); ``units`` ranked.
    """
    from scipy import stats as scipy_stats

    truth = np.asarray(oracle, dtype=np.float64)
    chosen = np.ones(truth.size, bool) if candidates is None else np.asarray(candidates, bool)
    index = np.flatnonzero(chosen)
    k = min(int(k), index.size)
    magnitude = np.abs(truth[index])
    best = index[np.argsort(truth[index], kind="stable")[:k]]
    smallest = set(index[np.argsort(magnitude, kind="stable")[:k]].tolist())
    best_cost = float(truth[best].sum())
    rows = []
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)[index]
        picks = index[np.lexsort((index, values))[:k]]
        cost = float(truth[picks].sum())
        constant = np.ptp(values) == 0 or np.ptp(magnitude) == 0
        rows.append(
            {
                "criterion": name,
                "spearman": np.nan if constant else float(scipy_stats.spearmanr(values, magnitude).statistic),
                "pearson": np.nan if constant else float(np.corrcoef(values, magnitude)[0, 1]),
                "overlap": len(smallest & set(picks.tolist())) / k if k else np.nan,
                "cost": cost,
                "best_cost": best_cost,
                "cost_ratio": cost / best_cost if best_cost > 0 else np.nan,
                "units": index.size,
            }
        )
    return pd.DataFrame(rows, columns=["criterion", "spearman", "pearson", "overlap", "cost", "best_cost", "cost_ratio", "units"])
