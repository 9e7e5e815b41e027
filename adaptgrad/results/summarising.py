"""Per-run metric values (last or best epoch) and their mean ± std per group of runs.

Example:
    >>> from adaptgrad.results.summarising import higher_is_better
    >>> higher_is_better("val_accuracy"), higher_is_better("val_loss"), higher_is_better("mae")
    (True, False, False)

:meth:`Results.summary <adaptgrad.results.Results.summary>` and
:meth:`Results.values <adaptgrad.results.Results.values>` are the public entry points.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pandas as pd

FINALS = ("last", "best")
"""Which epoch's value stands for a run: the last one, or the best one."""

_HIGHER_IS_BETTER = re.compile(r"acc|auc|precision|recall|f1|r2|iou")


class Tables(Protocol):
    """What the helpers of :class:`~adaptgrad.results.Results` read of it (they take the
    ``Results`` itself; this names its shape without importing it back)."""

    runs: pd.DataFrame
    history: pd.DataFrame
    oracle: pd.DataFrame
    config_columns: tuple[str, ...]

    def varying_keys(self) -> list[str]: ...

    def values(self, metric: str, final: str = "last") -> pd.Series: ...


def higher_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` are better: accuracy-like names (``accuracy``,
    ``auc``, ``precision``, ``recall``, ``f1``, ``r2``, ``iou``, with any prefix such as
    ``val_``); losses, errors and every other metric are better when smaller."""
    return bool(_HIGHER_IS_BETTER.search(metric.rsplit(".", 1)[-1].lower()))


def check_final(final: str) -> None:
    """Raise a ValueError unless ``final`` is ``"last"`` or ``"best"``."""
    if final not in FINALS:
        raise ValueError(f"final={final!r}; valid: {', '.join(FINALS)}")


def metric_columns(results: Tables, metrics: Sequence[str] | None) -> list[str]:
    """The :attr:`~Results.runs` columns named by ``metrics`` (default: every numeric ``final.*``
    column, then ``epochs`` and ``wall_time``)."""
    runs = results.runs
    if metrics is None:
        finals = [
            column for column in runs.columns if column.startswith("final.") and pd.api.types.is_numeric_dtype(runs[column])
        ]
        return [*finals, "epochs", "wall_time"]
    columns = []
    for name in metrics:
        column = name if name in runs.columns else f"final.{name.removeprefix('best.')}"
        if column not in runs.columns:
            known = ", ".join(metric_columns(results, None))
            raise ValueError(f"unknown metric {name!r}; known: {known}")
        if not pd.api.types.is_numeric_dtype(runs[column]):
            raise ValueError(f"metric {column!r} is not numeric (dtype {runs[column].dtype})")
        columns.append(column)
    return columns


def values(results: Tables, metric: str, final: str = "last") -> pd.Series:
    """See :meth:`Results.values <adaptgrad.results.Results.values>`."""
    check_final(final)
    name = metric.removeprefix("final.").removeprefix("best.")
    history = results.history[results.history["metric"] == name]
    if final == "best" and len(history):
        per_run = history.groupby("run_id")["value"]
        best = per_run.max() if higher_is_better(name) else per_run.min()
        return pd.Series(
            results.runs["run_id"].map(best).to_numpy(), index=results.runs.index, name=f"best.{name}", dtype="Float64"
        )
    if metric not in results.runs.columns and f"final.{name}" not in results.runs.columns and len(history):
        last = history.sort_values("epoch", kind="stable").drop_duplicates("run_id", keep="last").set_index("run_id")["value"]
        return pd.Series(
            results.runs["run_id"].map(last).to_numpy(), index=results.runs.index, name=f"final.{name}", dtype="Float64"
        )
    (column,) = metric_columns(results, [metric])
    return results.runs[column].astype("Float64")


def summary(results: Tables, metrics: Sequence[str] | None, by: Sequence[str] | None, final: str) -> pd.DataFrame:
    """See :meth:`Results.summary <adaptgrad.results.Results.summary>`."""
    check_final(final)
    frame = pd.DataFrame({"run_id": results.runs["run_id"]})
    for metric in metric_columns(results, None) if metrics is None else metrics:
        series = values(results, metric, final)
        frame[series.name] = series
    keys = group_keys(results, by)
    ok = results.runs["status"] == "ok"
    data = pd.concat([results.runs.loc[ok, keys], frame.loc[ok].drop(columns="run_id")], axis=1)
    columns = [column for column in frame.columns if column != "run_id"]
    grouping: list[str] | Callable[[Any], str] = keys if keys else (lambda _: "all")
    grouped = data.groupby(grouping, dropna=False, sort=True)
    counts = grouped.size()
    table = grouped[columns].agg(["mean", "std"]) if columns else pd.DataFrame(index=counts.index)
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    table.insert(0, "n", counts.to_numpy())
    return table.reset_index(drop=not keys)


def group_keys(results: Tables, by: Sequence[str] | None) -> list[str]:
    """``by`` (default: :meth:`~Results.varying_keys`), checked against the columns of ``runs``."""
    keys = results.varying_keys() if by is None else list(by)
    unknown = [key for key in keys if key not in results.runs.columns]
    if unknown:
        raise ValueError(f"unknown column(s) to group by: {', '.join(unknown)}; known: {', '.join(results.config_columns)}")
    return keys
