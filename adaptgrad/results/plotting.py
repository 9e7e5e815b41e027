"""Plots of metrics over epochs, one line per arm, written as PNG files (needs matplotlib).

Example:
    >>> from adaptgrad.results.plotting import plot_name
    >>> plot_name("active_units/gru")
    'active_units_gru.png'

:func:`plot` draws, for each metric, the mean over seeds of each arm with a ±1 std band. Figures
are titled with the metric, what varies between the lines and what the runs have in common
(task, model); legends name the arms by their config values (the rule's name for ``rule``).
With a ``baseline``, every arm gets its own panel against the baseline in grey, so that many
arms stay readable; without one, all arms share a panel and the bands get lighter as arms add up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from adaptgrad.results.markdown import cell_text

if TYPE_CHECKING:
    from adaptgrad.results.collecting import Results

DEFAULT_METRICS = ("val_loss", "active_units")
"""What :func:`plot` draws when no metric is given (``loss`` stands in for a missing ``val_loss``,
and ``active_units/<layer>`` of each layer for the ``active_units`` of jobs that adapt several)."""

DESCRIBING = ("data._target_", "model._target_", "model.cell", "model.units", "layer", "rule")
"""Config columns that say what the runs are; the title names those every run shares."""


def plot_name(metric: str) -> str:
    """The file name of ``metric``'s plot."""
    return metric.replace("/", "_") + ".png"


def short(value: Any) -> str:
    """A label for a config value: the last part of a dotted ``_target_`` path."""
    text = cell_text(value)
    return text.rsplit(".", 1)[-1] if isinstance(value, str) and "." in text and " " not in text else text


def plot(
    results: Results,
    by: Sequence[str],
    directory: Path,
    metrics: Sequence[str] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write one ``<metric>.png`` per metric (default :data:`DEFAULT_METRICS`) into ``directory``.

    Lines are the groups of ``by``; with two or more keys, the first one with at most four values
    that is neither ``rule`` nor a baseline key becomes the panel rows (e.g. one row per model). Metrics no ok run recorded are skipped.

    Returns:
        The files written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ok = results.runs[results.runs["status"] == "ok"]
    named = set(baseline or ()) | {"rule"}  # what the lines are about: never the panel rows
    facet = next((key for key in by if len(by) > 1 and key not in named and ok[key].nunique(dropna=False) <= 4), None)
    lines = [key for key in by if key != facet]
    ids = ok["run_id"].to_numpy()
    row_of = pd.Series([short(v) for v in ok[facet]] if facet else [""] * len(ok), index=ids)
    label_of = pd.Series(
        [", ".join(short(row[key]) for key in lines if not pd.isna(row[key])) or "all runs" for _, row in ok.iterrows()],
        index=ids,
    )
    control = None
    if baseline and set(baseline) <= set(lines):
        match = ok[pd.concat([ok[k].astype(str) == str(v) for k, v in baseline.items()], axis=1).all(axis=1)]
        control = label_of.get(match["run_id"].iloc[0]) if len(match) else None
    history = results.history[results.history["run_id"].isin(ids)]
    history = history.assign(row=history["run_id"].map(row_of), line=history["run_id"].map(label_of))
    available = set(history["metric"])
    wanted = list(metrics or DEFAULT_METRICS)
    if metrics is None and "val_loss" not in available:
        wanted[0] = "loss"
    if metrics is None:  # several adapted layers: one plot of active units per layer
        wanted[1:] = [wanted[1]] if wanted[1] in available else sorted(m for m in available if m.startswith("active_units/"))
    rows = sorted(set(row_of))
    labels = list(dict.fromkeys(label_of.sort_values()))
    colours = {name: f"C{i % 10}" for i, name in enumerate(label for label in labels if label != control)}
    columns = [label for label in labels if label != control] if control is not None else [None]
    title = _title(ok, by)
    written = []
    for metric in wanted:
        if metric not in available:
            continue
        data = history[history["metric"] == metric]
        figure = Figure(figsize=(min(max(4.0 * len(columns), 6.5), 24.0), 3.4 * len(rows) + 1.2), layout="constrained")
        FigureCanvasAgg(figure)
        grid = figure.subplots(len(rows), len(columns), squeeze=False, sharex=True, sharey=True)
        for i, row in enumerate(rows):
            for j, column in enumerate(columns):
                axes = grid[i][j]
                shown = [control, column] if control is not None else labels
                alpha = 0.2 if len(shown) <= 3 else max(0.04, 0.4 / len(shown))
                for name in shown:
                    group = data[(data["row"] == row) & (data["line"] == name)]
                    if group.empty:
                        continue
                    stats = group.groupby("epoch")["value"].agg(["mean", "std"])
                    epochs, mean, std = stats.index.to_numpy(), stats["mean"].to_numpy(), stats["std"].fillna(0.0).to_numpy()
                    colour = "0.45" if name == control else colours[name]
                    axes.plot(epochs, mean, marker="o", markersize=2, linewidth=1.2, label=name, color=colour)
                    axes.fill_between(epochs, mean - std, mean + std, alpha=alpha, color=colour, linewidth=0)
                if "loss" in metric and (data["value"] > 0).all():
                    axes.set_yscale("log")
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
                heading = [f"{facet}={row}" if facet else "", f"{column} vs {control}" if control is not None else ""]
                axes.set_title(" · ".join(h for h in heading if h), fontsize="medium")
                if control is not None and i == 0:
                    axes.legend(fontsize="small")
                if i == len(rows) - 1:
                    axes.set_xlabel("epoch (from 0)")
                if j == 0:
                    axes.set_ylabel(metric)
        figure.suptitle(f"{metric}, mean ± std over seeds\n{title}", fontsize="medium")
        if control is None:
            handles, names = grid[0][0].get_legend_handles_labels()
            figure.legend(handles, names, fontsize="small", loc="outside lower center", ncol=min(4, len(names)))
        directory.mkdir(parents=True, exist_ok=True)
        figure.savefig(directory / plot_name(metric), dpi=100)
        written.append(directory / plot_name(metric))
    return written


def _title(ok: pd.DataFrame, by: Sequence[str]) -> str:
    """``varies: rule`` and ``fixed: data=toy, model.cell=gru`` (two lines) for the plotted runs: a
    key of ``by`` that has one value among them is fixed, not varying."""
    varies = [key for key in by if ok[key].nunique(dropna=False) > 1]
    fixed = []
    for column in [*(key for key in by if key not in varies), *(c for c in DESCRIBING if c not in by)]:
        if column not in ok.columns or ok[column].isna().all():
            continue
        values = ok[column].dropna().unique()
        if len(values) == 1:
            fixed.append(f"{column.removesuffix('._target_')}={short(values[0])}")
    return "\n".join(
        part for part in (f"varies: {', '.join(varies)}" if varies else "", f"fixed: {', '.join(fixed)}" if fixed else "") if part
    )
