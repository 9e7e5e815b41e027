"""Every arm of a sweep against a baseline arm: difference of means, 95 % CI, t-test p, Holm-adjusted p.

Example:
    >>> from adaptgrad.results.comparing import holm
    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]

:meth:`Results.compare <adaptgrad.results.Results.compare>` is the public entry point; see
:func:`compare` for what it computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from adaptgrad.results.summarising import Tables, check_final, group_keys

CONFIDENCE = 0.95
"""Level of the confidence interval of the difference."""

STAT_COLUMNS = ["n", "n_baseline", "test", "baseline_mean", "mean", "diff", "ci_low", "ci_high", "p", "p_adjusted"]
"""The columns of :func:`compare` after the group and arm keys."""


def compare(
    results: Tables, metric: str, baseline: Mapping[str, Any], *, by: Sequence[str] | None = None, final: str = "last"
) -> pd.DataFrame:
    """Compare every arm with the baseline arm on ``metric``, over the ok runs.

    Args:
        results: The collected runs.
        metric: A metric name (``val_loss``) or a column of ``runs``.
        baseline: Config keys and values that select the baseline arm, e.g. ``{"rule": "none"}``
            (values match by their text, so ``{"model.units": "8"}`` works too).
        by: Keys that split the runs into groups compared separately (e.g. ``["model.cell"]``).
            Default: the varying keys not named in ``baseline``, so that an arm is only ever
            compared with the baseline run on the same everything-else.
        final: ``"last"`` or ``"best"`` epoch's value (see :meth:`Results.summary`).

    Returns:
        One row per (group, arm) that is not the baseline: the ``by`` keys, the arm's keys
        (those of the baseline; runs that differ in keys neither in ``by`` nor in ``baseline`` are
        pooled), ``n`` (paired seeds, or the arm's
        runs when unpaired), ``n_baseline``, ``test`` (``"paired"`` when both arms have the
        same seeds, each once: a paired t-test on the per-seed differences; else ``"welch"``:
        Welch's unequal-variance t-test), ``baseline_mean``, ``mean``, ``diff`` (``mean -
        baseline_mean``), ``ci_low`` / ``ci_high`` (95 % t interval of the difference),
        ``p`` (two-sided) and ``p_adjusted`` (Holm's step-down correction over all rows).
        Statistics that need two runs per arm are missing with fewer.

    Raises:
        ValueError: An unknown metric, key or ``final``, an empty ``baseline``, or no ok run
            matches the baseline.
    """
    check_final(final)
    if not baseline:
        raise ValueError("baseline is empty; give the keys of the control arm, e.g. {'rule': 'none'}")
    group_keys(results, list(baseline))  # unknown keys fail here
    if by is not None and set(by) & set(baseline):
        raise ValueError(
            f"by={list(by)} names a baseline key ({', '.join(set(by) & set(baseline))}); the baseline's keys define the arms"
        )
    value = results.values(metric, final)
    varying = results.varying_keys()
    by_keys = group_keys(results, [key for key in varying if key not in baseline] if by is None else by)
    arm_keys = list(baseline)
    runs = results.runs.assign(_value=value)
    runs = runs[(runs["status"] == "ok") & runs["_value"].notna()]
    is_baseline = pd.concat([runs[key].astype(str) == str(wanted) for key, wanted in baseline.items()], axis=1).all(axis=1)
    if not is_baseline.any():
        wanted = ", ".join(f"{key}={value}" for key, value in baseline.items())
        raise ValueError(f"no ok run with a {metric} value matches the baseline {wanted}")

    rows = []
    groups = runs.groupby(by_keys, dropna=False, sort=True) if by_keys else [((), runs)]
    for group, members in groups:
        control = members[is_baseline.loc[members.index]]
        if control.empty:
            continue
        arms = members.drop(index=control.index)
        for arm, treated in arms.groupby(arm_keys, dropna=False, sort=True) if len(arms) else []:
            keys = dict(zip(by_keys, _tuple(group)))
            keys.update(zip(arm_keys, _tuple(arm)))
            rows.append({**keys, **_test(treated, control)})
    table = pd.DataFrame(rows, columns=[*by_keys, *arm_keys, *STAT_COLUMNS])
    table["p_adjusted"] = holm(table["p"].to_numpy(dtype=float))
    return table.astype({"n": "int64", "n_baseline": "int64"})


def _tuple(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _test(treated: pd.DataFrame, control: pd.DataFrame) -> dict[str, Any]:
    """The statistics of one arm against its control (paired by seed where possible)."""
    a = treated["_value"].to_numpy(dtype=float)
    b = control["_value"].to_numpy(dtype=float)
    paired = "seed" in treated.columns and _same_seeds(treated["seed"], control["seed"])
    row: dict[str, Any] = {"n_baseline": len(b), "baseline_mean": b.mean(), "mean": a.mean(), "diff": a.mean() - b.mean()}
    if paired:
        order = control.set_index("seed")["_value"]
        d = a - order.loc[treated["seed"]].to_numpy(dtype=float)
        n = len(d)
        se, df = (d.std(ddof=1) / math.sqrt(n), n - 1) if n > 1 else (math.nan, 0)
    else:
        n = len(a)
        va, vb = (a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)) if len(a) > 1 and len(b) > 1 else (math.nan, math.nan)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.float64(row["diff"]) / np.float64(se)
    p = 2 * stats.t.sf(abs(t), df) if df and df > 0 and not math.isnan(t) else math.nan
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * se if df and df > 0 else math.nan
    return {
        **row,
        "n": n,
        "test": "paired" if paired else "welch",
        "ci_low": row["diff"] - half,
        "ci_high": row["diff"] + half,
        "p": float(p),
        "p_adjusted": math.nan,
    }


def _same_seeds(treated: pd.Series, control: pd.Series) -> bool:
    """Whether both arms ran the same seeds, each seed once (so runs pair up by seed)."""
    if treated.isna().any() or control.isna().any() or treated.duplicated().any() or control.duplicated().any():
        return False
    return set(treated) == set(control)


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; NaN stays NaN
    and does not count towards the number of tests."""
    p = np.asarray(p, dtype=float)
    adjusted = np.full_like(p, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = len(order)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted
