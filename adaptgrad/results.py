"""Collect the files written by adaptgrad runs and sweeps into pandas tables.

Example::

    from adaptgrad.results import collect

    results = collect("multirun/2026-11-27/10-00-00")  # a sweep dir, a run dir, or any parent
    print(results.runs[["run_id", "status", *results.varying_keys()]])
    print(results.summary(["val_loss"]))  # mean/std of final.val_loss over seeds, per config

or, from the shell, ``adaptgrad-results multirun/2026-11-27/10-00-00 --plot plots``.

:func:`collect` reads what each job dir holds (``config.yaml``, ``result.json``,
``history.csv``, ``units.parquet``, ``actions.csv``; see :class:`Results`) and never
writes anything, so calling it twice on the same files gives equal tables. A missing file
leaves its part of the tables empty; an unreadable one does too, with a warning.

Decisions worth knowing:

* A *job dir* is a directory holding ``result.json`` or a ``.hydra/`` folder. The search
  does not descend into job dirs nor into hidden directories (``.hydra``, ``.submitit``).
* ``run_id`` is the job dir's path relative to the collected path in POSIX form
  (``"0"``, ``"2026-11-27/10-00-00/3"``), or the dir's own name when the collected path is
  itself a job dir. Runs are in natural order of that path (``"2"`` before ``"10"``). The
  ``run_id`` stored inside ``result.json`` is ignored.
* A job without ``result.json`` (Hydra made ``.hydra/`` but the job has not written yet)
  has status ``"running"``; one whose ``result.json`` cannot be read has ``"unknown"``.
* The config comes from ``config.yaml``, else from Hydra's ``.hydra/config.yaml``, whose
  interpolations are resolved where possible (one that needs Hydra's runtime stays text).
  Nested keys become dotted columns, lists become JSON text (``'["a", "b"]'``).
* ``runs`` column dtypes follow the values of all jobs: integers ``Int64``, other numbers
  ``Float64``, booleans ``boolean``, text ``string``, so missing values are ``pd.NA``
  whatever the type; a mix of types stays ``object``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adaptgrad.stats import DERIVED_FIELDS, SUM_FIELDS

PROG = "adaptgrad-results"

RESULT_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "status": "string",
    "epochs": "Int64",
    "wall_time": "Float64",
    "git_commit": "string",
}
"""Columns of :attr:`Results.runs` present in every collection, with their dtypes."""

HISTORY_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "epoch": "int64",
    "metric": "string",
    "value": "float64",
}
"""Columns and dtypes of :attr:`Results.history`."""

UNITS_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "epoch": "int64",
    "unit": "int64",
    "active": "bool",
    "scale": "float64",
    "batches": "int64",
    "count": "int64",
    **{name: "float64" for name in (*SUM_FIELDS, *DERIVED_FIELDS)},
}
"""Columns and dtypes of :attr:`Results.units` when no job wrote ``units.parquet``."""

ACTIONS_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "epoch": "Int64",
    "rule": "string",
    "action": "string",
    "unit": "Int64",
    "value": "float64",
}
"""Columns and dtypes of :attr:`Results.actions`."""


@dataclasses.dataclass(frozen=True, eq=False)
class Results:
    """The tables of a collection of jobs; build it with :func:`collect`.

    Attributes:
        runs: One row per job, in natural ``run_id`` order: ``run_id``, ``status``, the
            flattened config (dotted columns such as ``model.units``), the final metrics
            as ``final.<metric>`` (``Float64`` when numeric), ``epochs``, ``wall_time``,
            ``error.<field>`` (only when some job reported an error) and ``git_commit``.
        history: Long table of ``history.csv``: ``run_id``, ``epoch``, ``metric``,
            ``value``; one row per job, epoch and metric (NaN values are kept).
        units: The ``units.parquet`` tables, one row per (job, epoch, unit), with a
            leading ``run_id`` column.
        actions: The ``actions.csv`` tables with a leading ``run_id`` column.
        config_columns: The columns of ``runs`` that come from the config, in order.
    """

    runs: pd.DataFrame
    history: pd.DataFrame
    units: pd.DataFrame
    actions: pd.DataFrame
    config_columns: tuple[str, ...]

    def varying_keys(self) -> list[str]:
        """Config columns whose value differs between runs (a missing key counts as a value).

        Seeds (``seed`` and any ``*.seed``) and ``hydra.*`` keys are left out, as are jobs
        with no readable config at all, and keys that vary only along with their group's
        ``_target_`` (``rule.fraction`` when the sweep compares rule classes with their default
        parameters): the ``_target_`` column already tells those groups apart.
        """
        config = self.runs[list(self.config_columns)]
        config = config[config.notna().any(axis=1)]
        varying = [
            column
            for column in self.config_columns
            if not _is_replicate_key(column) and config[column].nunique(dropna=False) > 1
        ]
        return [column for column in varying if not _follows_target(config, column, varying)]

    def summary(
        self, metrics: Sequence[str] | None = None, by: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Mean and sample standard deviation of final metrics over the ok runs of each group.

        Args:
            metrics: Columns of :attr:`runs` to aggregate; a name that is not a column is
                looked up as ``final.<name>``. Default: every numeric ``final.*`` column,
                then ``epochs`` and ``wall_time``.
            by: Columns of :attr:`runs` to group by. Default: :meth:`varying_keys`. With
                no column, all ok runs form a single group.

        Returns:
            One row per group (sorted by the group keys, missing values last) with the
            ``by`` columns, ``n`` (the number of ok runs in the group), then
            ``<metric> mean`` and ``<metric> std`` for each metric; ``std`` is missing for a
            group of one run.

        Raises:
            ValueError: A metric or ``by`` column is unknown, or a metric is not numeric.
        """
        columns = self._metric_columns(metrics)
        keys = self.varying_keys() if by is None else list(by)
        unknown = [key for key in keys if key not in self.runs.columns]
        if unknown:
            raise ValueError(f"unknown column(s) to group by: {', '.join(unknown)}")
        ok = self.runs[self.runs["status"] == "ok"]
        grouping: list[str] | Callable[[Any], str] = keys if keys else (lambda _: "all")
        grouped = ok.groupby(grouping, dropna=False, sort=True)
        counts = grouped.size()
        table = grouped[columns].agg(["mean", "std"]) if columns else pd.DataFrame(index=counts.index)
        table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
        table.insert(0, "n", counts.to_numpy())
        return table.reset_index(drop=not keys)

    def _metric_columns(self, metrics: Sequence[str] | None) -> list[str]:
        """The :attr:`runs` columns named by ``metrics`` (see :meth:`summary`)."""
        if metrics is None:
            finals = [
                column
                for column in self.runs.columns
                if column.startswith("final.") and pd.api.types.is_numeric_dtype(self.runs[column])
            ]
            return [*finals, "epochs", "wall_time"]
        columns = []
        for name in metrics:
            column = name if name in self.runs.columns else f"final.{name}"
            if column not in self.runs.columns:
                known = ", ".join(self._metric_columns(None))
                raise ValueError(f"unknown metric {name!r}; known: {known}")
            if not pd.api.types.is_numeric_dtype(self.runs[column]):
                raise ValueError(f"metric {column!r} is not numeric (dtype {self.runs[column].dtype})")
            columns.append(column)
        return columns


def collect(path: str | os.PathLike[str]) -> Results:
    """Read every job dir under ``path`` (``path`` included) into a :class:`Results`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` holds no job dir.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory")
    job_dirs = _find_job_dirs(root)
    if not job_dirs:
        raise ValueError(f"{root}: no job dir (a directory with result.json or .hydra/) found")
    if job_dirs == [root]:
        run_ids = [root.resolve().name]
    else:
        run_ids = [job_dir.relative_to(root).as_posix() for job_dir in job_dirs]

    rows: list[dict[str, Any]] = []
    config_columns: dict[str, None] = {}
    histories, units, actions = [], [], []
    for run_id, job_dir in zip(run_ids, job_dirs):
        config = _read_config(job_dir)
        fields = {"run_id": run_id, **_read_result(job_dir)}
        config_columns.update(dict.fromkeys(key for key in config if key not in fields))
        rows.append({**config, **fields})
        histories.append(_read_table(job_dir / "history.csv", run_id, _history_table))
        units.append(_read_table(job_dir / "units.parquet", run_id, pd.read_parquet))
        actions.append(_read_table(job_dir / "actions.csv", run_id, _actions_table))

    return Results(
        runs=_runs_table(rows, list(config_columns)),
        history=_concat(histories, HISTORY_COLUMNS),
        units=_concat(units, UNITS_COLUMNS),
        actions=_concat(actions, ACTIONS_COLUMNS),
        config_columns=tuple(config_columns),
    )


def _follows_target(config: pd.DataFrame, column: str, varying: list[str]) -> bool:
    """Whether ``column`` (say ``rule.fraction``) only varies because its group's ``_target_``
    does (each rule class has its own parameters): constant within every ``_target_`` value."""
    group, _, key = column.rpartition(".")
    target = f"{group}._target_"
    if not group or key == "_target_" or target not in varying:
        return False
    values = config[[target, column]].astype(str)
    return bool((values.groupby(target)[column].nunique() <= 1).all())


def _is_replicate_key(column: str) -> bool:
    """Whether a config column only names a replicate (a seed) or Hydra's own settings."""
    return column == "seed" or column.endswith(".seed") or column.startswith("hydra.")


def _is_job_dir(directory: Path) -> bool:
    """Whether ``directory`` is the output dir of one job."""
    return (directory / "result.json").is_file() or (directory / ".hydra").is_dir()


def _natural_key(run_id: str) -> tuple[tuple[tuple[int | str, ...], ...], str]:
    """Sort key comparing the digit runs of each path component as numbers ("2" < "10").

    Splitting at digit runs puts text at even and numbers at odd positions, so the parts
    compared with each other always have the same type; ``run_id`` itself breaks ties
    such as ``"01"``/``"1"``.
    """
    parts = tuple(
        tuple(int(chunk) if i % 2 else chunk for i, chunk in enumerate(re.split(r"([0-9]+)", part)))
        for part in run_id.split("/")
    )
    return parts, run_id


def _find_job_dirs(root: Path) -> list[Path]:
    """Job dirs at or below ``root``, in natural order of their relative path."""
    if _is_job_dir(root):
        return [root]
    found = []
    for directory, subdirs, _ in os.walk(root):
        if _is_job_dir(Path(directory)):
            found.append(Path(directory))
            subdirs.clear()
        else:
            subdirs[:] = [name for name in subdirs if not name.startswith(".")]
    return sorted(found, key=lambda job_dir: _natural_key(job_dir.relative_to(root).as_posix()))


def _warn(message: str) -> None:
    """Report a file that could not be read."""
    warnings.warn(message, UserWarning, stacklevel=4)


def _flatten(mapping: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys; lists and tuples as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat


def _plain(node: Any) -> Any:
    """An OmegaConf node as plain Python, keeping the text of interpolations that fail."""
    if isinstance(node, DictConfig):
        raw = OmegaConf.to_container(node, resolve=False)
        plain = {}
        for key, raw_value in raw.items():
            try:
                plain[key] = _plain(node[key])
            except OmegaConfBaseException:
                plain[key] = raw_value
        return plain
    if isinstance(node, ListConfig):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException:
            return OmegaConf.to_container(node, resolve=False)
    return node


def _read_config(job_dir: Path) -> dict[str, Any]:
    """The job's flattened config: ``config.yaml``, else ``.hydra/config.yaml``, else empty."""
    for candidate in (job_dir / "config.yaml", job_dir / ".hydra" / "config.yaml"):
        if not candidate.is_file():
            continue
        try:
            config = OmegaConf.load(candidate)
        except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
            _warn(f"{candidate}: unreadable config ({error})")
            continue
        if isinstance(config, DictConfig):
            return _flatten(_plain(config))
        _warn(f"{candidate}: config is not a mapping")
    return {}


def _read_result(job_dir: Path) -> dict[str, Any]:
    """The ``runs`` fields from ``result.json``: status, final.*, epochs, wall_time, error.*, ..."""
    path = job_dir / "result.json"
    if not path.is_file():
        return {"status": "running"}
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        _warn(f"{path}: unreadable ({error}); status set to 'unknown'")
        return {"status": "unknown"}
    if not isinstance(result, dict):
        _warn(f"{path}: not a JSON object; status set to 'unknown'")
        return {"status": "unknown"}
    status = result.get("status")
    final = result.get("final")
    error = result.get("error")
    return {
        "status": status if isinstance(status, str) else "unknown",
        **_flatten(final if isinstance(final, Mapping) else {}, "final."),
        "epochs": result.get("epochs"),
        "wall_time": result.get("wall_time"),
        **_flatten(error if isinstance(error, Mapping) else {}, "error."),
        "git_commit": result.get("git_commit"),
    }


def _is_missing(value: Any) -> bool:
    """Whether a value read from JSON or YAML stands for "no value"."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _dtype(values: list[Any], usual: str | None = None) -> str:
    """The nullable pandas dtype that holds all ``values``, or ``object`` for a mix.

    ``usual``, the column's dtype when it has one, wins when no value is present and when
    it is ``Float64`` and the values happen to be whole numbers.
    """
    present = [value for value in values if not _is_missing(value)]
    if not present:
        return usual or "object"
    if all(isinstance(value, bool) for value in present):
        return "boolean"
    if all(isinstance(value, int) and not isinstance(value, bool) for value in present):
        return "Float64" if usual == "Float64" else "Int64"
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present):
        return "Float64"
    if all(isinstance(value, str) for value in present):
        return "string"
    return "object"


def _runs_table(rows: list[dict[str, Any]], config_columns: list[str]) -> pd.DataFrame:
    """The ``runs`` frame: fixed columns, config, final.*, error.*, each with its dtype."""
    result_columns: dict[str, None] = {}
    for row in rows:
        result_columns.update(dict.fromkeys(key for key in row if key not in config_columns))
    finals = [column for column in result_columns if column.startswith("final.")]
    errors = [column for column in result_columns if column.startswith("error.")]
    order = ["run_id", "status", *config_columns, *finals, "epochs", "wall_time", *errors, "git_commit"]
    data = {}
    for column in order:
        values = [row.get(column) for row in rows]
        dtype = _dtype(values, "Float64" if column.startswith("final.") else RESULT_COLUMNS.get(column))
        data[column] = pd.Series([None if _is_missing(v) else v for v in values], dtype=dtype)
    return pd.DataFrame(data)


def _history_table(path: Path) -> pd.DataFrame:
    """``history.csv`` in long format: ``epoch``, ``metric``, ``value``."""
    wide = pd.read_csv(path)
    if "epoch" not in wide.columns:
        raise ValueError("no 'epoch' column")
    metrics = wide.drop(columns="epoch").apply(pd.to_numeric, errors="coerce")
    long = metrics.assign(epoch=wide["epoch"]).melt("epoch", var_name="metric", value_name="value")
    dtypes = {column: dtype for column, dtype in HISTORY_COLUMNS.items() if column != "run_id"}
    return long.sort_values("epoch", kind="stable").astype(dtypes)


def _actions_table(path: Path) -> pd.DataFrame:
    """``actions.csv`` with the dtypes of :data:`ACTIONS_COLUMNS`."""
    actions = pd.read_csv(path)
    return actions.astype({c: t for c, t in ACTIONS_COLUMNS.items() if c in actions.columns})


def _read_table(
    path: Path, run_id: str, reader: Callable[[Path], pd.DataFrame]
) -> pd.DataFrame | None:
    """``reader(path)`` with a leading ``run_id`` column; ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        table = reader(path)
    except (OSError, ValueError) as error:
        _warn(f"{path}: unreadable, skipped ({error})")
        return None
    table.insert(0, "run_id", pd.Series([run_id] * len(table), index=table.index, dtype="string"))
    return table.reset_index(drop=True)


def _concat(tables: list[pd.DataFrame | None], schema: Mapping[str, str]) -> pd.DataFrame:
    """The non-empty ``tables`` one under the other, or an empty frame with ``schema``."""
    present = [table for table in tables if table is not None and len(table)]
    if not present:
        return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in schema.items()})
    return pd.concat(present, ignore_index=True)


# --- command line -----------------------------------------------------------------------


def _format_mean_std(mean: Any, std: Any) -> str:
    """``mean ± std`` rounded at the std's leading digit (two digits if that is a 1).

    Rounding never goes left of the units ("622 ± 865"). A missing std (a group of one
    run) shows the mean alone, to 4 significant digits.
    """
    if pd.isna(mean):
        return "n/a"
    mean = float(mean)
    if pd.isna(std) or not math.isfinite(mean):
        return f"{mean:.4g}"
    std = float(std)
    if std == 0:
        return f"{mean:.4g} ± 0"
    if not math.isfinite(std):
        return f"{mean:.4g} ± {std}"
    exponent = math.floor(math.log10(std))
    digits = 2 if f"{std:e}".startswith("1") else 1
    decimals = digits - 1 - exponent
    if decimals > 6 or abs(mean) >= 1e9:
        return f"{mean:.3g} ± {std:.{digits}g}"
    decimals = max(decimals, 0)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _cell(value: Any) -> str:
    """A group-key value as Markdown table text."""
    if pd.isna(value):
        return ""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def _markdown(table: pd.DataFrame, by: Sequence[str]) -> str:
    """The :meth:`Results.summary` ``table`` as a Markdown table with ``mean ± std`` cells."""
    metrics = [column.removesuffix(" mean") for column in table.columns if column.endswith(" mean")]
    header = [*by, "n", *metrics]
    body = [
        [
            *(_cell(row[key]) for key in by),
            str(row["n"]),
            *(_format_mean_std(row[f"{metric} mean"], row[f"{metric} std"]) for metric in metrics),
        ]
        for _, row in table.iterrows()
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = [False] * len(by) + [True] * (len(header) - len(by))

    def line(cells: Sequence[str]) -> str:
        padded = (cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right)) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)]) + "\n"


def _short(value: Any) -> str:
    """A label for a config value: the class name of a dotted ``_target_`` path."""
    text = _cell(value)
    return text.rsplit(".", 1)[-1] if isinstance(value, str) and "." in text and " " not in text else text


def _plot(results: Results, by: Sequence[str], directory: Path) -> list[Path]:
    """Write ``val_loss.png`` and ``active_units.png`` (mean ± std over the ok runs of each group).

    With two or more grouping keys, the first one with at most four values gets one panel per
    value (e.g. one per model) and the others one line each (e.g. one per rule).

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ok = results.runs[results.runs["status"] == "ok"]
    facet = next((key for key in by if len(by) > 1 and ok[key].nunique(dropna=False) <= 4), None)
    lines = [key for key in by if key != facet]
    panel = pd.Series([_short(v) for v in ok[facet]] if facet else ["all runs"] * len(ok), index=ok["run_id"].to_numpy())
    label = pd.Series(
        [", ".join(_short(row[key]) for key in lines if not pd.isna(row[key])) or "all runs" for _, row in ok.iterrows()],
        index=ok["run_id"].to_numpy(),
    )
    history = results.history[results.history["run_id"].isin(label.index)]
    history = history.assign(panel=history["run_id"].map(panel), line=history["run_id"].map(label))
    available = set(history["metric"])
    loss = "val_loss" if "val_loss" in available else "loss"
    panels = list(dict.fromkeys(panel))
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(label))}
    written = []
    for metric, filename in ((loss, "val_loss.png"), ("active_units", "active_units.png")):
        if metric not in available:
            continue
        figure = Figure(figsize=(5.5 * len(panels), 4.5))
        FigureCanvasAgg(figure)
        axes_list = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for axes, name in zip(axes_list, panels):
            rows = history[(history["metric"] == metric) & (history["panel"] == name)]
            for line, group in rows.groupby("line", sort=False):
                stats = group.groupby("epoch")["value"].agg(["mean", "std"])
                epochs = stats.index.to_numpy()
                mean, std = stats["mean"].to_numpy(), stats["std"].fillna(0.0).to_numpy()
                axes.plot(epochs, mean, marker="o", markersize=2, label=line, color=colours[line])
                axes.fill_between(epochs, mean - std, mean + std, alpha=0.15, color=colours[line])
            if "loss" in metric and (rows["value"] > 0).all():
                axes.set_yscale("log")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_xlabel("epoch")
            axes.set_title(f"{facet}={name}" if facet else f"{metric}: mean ± std over seeds")
        axes_list[0].set_ylabel(f"{metric} (mean ± std over seeds)")
        handles, labels_ = axes_list[0].get_legend_handles_labels()
        figure.legend(handles, labels_, fontsize="small", loc="lower center", ncol=min(4, len(labels_)), bbox_to_anchor=(0.5, -0.02))
        figure.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels_) // 4), 1, 1))
        directory.mkdir(parents=True, exist_ok=True)
        figure.savefig(directory / filename, dpi=100, bbox_inches="tight")
        written.append(directory / filename)
    return written


def _error(message: str) -> int:
    """Print a command-line error on stderr; return the exit code 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _collect_reporting_warnings(path: str) -> Results:
    """:func:`collect`, printing each of its warnings as one plain stderr line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return collect(path)
        finally:
            for warning in caught:
                print(f"{PROG}: warning: {warning.message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    """The argument parser of ``adaptgrad-results``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Summarise adaptgrad runs: final metrics as mean ± std over seeds, grouped by the "
        "config keys that vary between runs. Jobs that are not ok are listed on stderr.",
    )
    parser.add_argument("path", help="a sweep dir, a run dir, or any directory above them")
    parser.add_argument(
        "--format", choices=("markdown", "csv", "parquet"), default="markdown", help="output format"
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="write the table to FILE (needed for parquet)"
    )
    parser.add_argument(
        "--plot", type=Path, metavar="DIR", help="write val_loss.png and active_units.png into DIR"
    )
    parser.add_argument(
        "--metric",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="final metrics to summarise (NAME or final.NAME); default: all, plus epochs and wall_time",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``adaptgrad-results`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    The summary table goes to stdout or ``--output``; warnings, the written plot files and
    one ``run_id status error.message`` line per job that is not ok go to stderr, so that
    stdout stays machine-readable. Returns 0, or 2 (with a message, no traceback) for bad
    arguments, a path without jobs, an unknown metric, a missing matplotlib or an
    unwritable output.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.format == "parquet" and args.output is None:
        return _error("--format parquet needs --output FILE")
    try:
        results = _collect_reporting_warnings(args.path)
        by = results.varying_keys()
        table = results.summary(args.metric, by)
    except (OSError, ValueError) as error:
        return _error(str(error))

    if args.plot is not None:
        try:
            written = _plot(results, by, args.plot)
        except ImportError:
            return _error("--plot needs matplotlib: pip install 'adaptgrad[plot]'")
        except OSError as error:
            return _error(f"cannot write plots: {error}")
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        if not written:
            print(f"{PROG}: no ok run has a val_loss, loss or active_units history", file=sys.stderr)

    try:
        if args.format == "parquet":
            table.to_parquet(args.output, index=False)
        else:
            text = _markdown(table, by) if args.format == "markdown" else table.to_csv(index=False)
            if args.output is None:
                sys.stdout.write(text)
            else:
                args.output.write_text(text, encoding="utf-8")
    except OSError as error:
        return _error(f"cannot write {args.output}: {error}")

    for _, run in results.runs[results.runs["status"] != "ok"].iterrows():
        message = run.get("error.message")
        message = "" if pd.isna(message) else " ".join(str(message).split())
        print(f"{run['run_id']} {run['status']} {message}".rstrip(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
