"""Criteria judged against the oracle across runs: :meth:`Results.criteria`.

Example:
    >>> import pandas as pd
    >>> from adaptgrad.results.collecting import Results
    >>> from adaptgrad.results.judging import criteria
    >>> oracle = pd.DataFrame({"run_id": "0", "epoch": 1, "layer": "gru", "unit": range(4), "active": True,
    ...                        "oracle": [0.5, 0.01, 0.2, 0.02], "oracle_zero_output": 0.0,
    ...                        "taylor": [9.0, 1.0, 5.0, 2.0]})
    >>> runs = pd.DataFrame({"run_id": ["0"], "status": ["ok"], "rule": ["none"]})
    >>> empty = pd.DataFrame()
    >>> results = Results(runs, empty, empty, empty, ("rule",), oracle=oracle)
    >>> criteria(results, ["rule"], k=2)[["rule", "criterion", "spearman", "cost_ratio", "n"]]
       rule criterion  spearman  cost_ratio  n
    0  none    taylor       1.0         1.0  1
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from adaptgrad.criteria import evaluate
from adaptgrad.results.summarising import Tables

EDIT_COLUMNS = {"gate": "oracle", "zero_output": "oracle_zero_output"}
_FIXED = ("run_id", "epoch", "layer", "unit", "active", *EDIT_COLUMNS.values())


def criteria(results: Tables, by: Sequence[str], *, k: int = 4, edit: str = "gate") -> pd.DataFrame:
    """See :meth:`Results.criteria`."""
    if edit not in EDIT_COLUMNS:
        raise ValueError(f"edit={edit!r}; valid: {', '.join(EDIT_COLUMNS)}")
    unknown = [key for key in by if key not in results.runs.columns]
    if unknown:
        raise ValueError(f"unknown --by key(s) {unknown}; valid: {', '.join(results.config_columns)}")
    oracle = results.oracle
    if oracle.empty:
        raise ValueError("no job recorded the oracle: run with oracle=N (every N epochs) to write oracle.parquet")
    names = [column for column in oracle.columns if column not in _FIXED]
    judged = []
    for (run_id, epoch, layer), group in oracle.groupby(["run_id", "epoch", "layer"], sort=True):
        scores = {name: group[name].to_numpy() for name in names if group[name].notna().all()}
        table = evaluate(group[EDIT_COLUMNS[edit]].to_numpy(), scores, k=k, candidates=group["active"].to_numpy(bool))
        judged.append(table.assign(run_id=run_id, epoch=epoch, layer=layer))
    table = pd.concat(judged, ignore_index=True).merge(results.runs[["run_id", *by]], on="run_id")
    metrics = ["spearman", "pearson", "overlap", "cost_ratio"]
    grouped = table.groupby([*by, "criterion"], sort=True, dropna=False)
    out = grouped[metrics].mean().join(grouped.size().rename("n")).reset_index()
    return out
