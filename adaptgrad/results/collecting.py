"""Reading the files of adaptgrad jobs into the pandas tables of :class:`Results`.

Example:
    >>> import tempfile
    >>> from adaptgrad.results import collect
    >>> collect(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    ValueError: ...: no job dir (a directory with result.json or .hydra/) found

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
* ``rule`` is the rule's one name: the ``"rule"`` that ``result.json`` records (the config
  choice ``rule=NAME``, or the registered / class name of a ``rule._target_`` override); for a
  job that did not record one (written before adaptgrad recorded it, or still running) the
  registered name of the class in ``rule._target_``, else that class's name.
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

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adaptgrad import jobdir
from adaptgrad.results import comparing, judging, summarising
from adaptgrad.stats import DERIVED_FIELDS, SUM_FIELDS

RESULT_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "status": "string",
    "rule": "string",
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
    "step": "Int64",
    "unit": "int64",
    "active": "bool",
    "scale": "float64",
    "batches": "int64",
    "count": "int64",
    **{name: "float64" for name in (*SUM_FIELDS, *DERIVED_FIELDS)},
}
"""Columns and dtypes of :attr:`Results.units` when no job wrote ``units.parquet``
(jobs that record several layers add ``layer``, and ``age``). ``step``, the optimizer steps at
the epoch's end, is missing (``<NA>``) for jobs written before adaptgrad recorded it."""

ACTIONS_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "epoch": "Int64",
    "step": "Int64",
    "rule": "string",
    "action": "string",
    "unit": "Int64",
    "value": "float64",
}
"""Columns and dtypes of :attr:`Results.actions` (plus ``layer`` when the jobs wrote it); ``step``
is the optimizer step at which the rule acted (``<NA>`` for jobs written before it was recorded)."""


ORACLE_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "epoch": "int64",
    "layer": "string",
    "unit": "int64",
    "active": "bool",
    "oracle": "float64",
    "oracle_zero_output": "float64",
}
"""Columns and dtypes of :attr:`Results.oracle` when no job wrote ``oracle.parquet`` (jobs that
did add one column per criterion and per rule score)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Results:
    """The tables of a collection of jobs; build it with :func:`collect`.

    Epochs are numbered from 0 in every table, as in the job's files, its console lines and
    its TensorBoard events.

    Attributes:
        runs: One row per job, in natural ``run_id`` order: ``run_id``, ``status``, ``rule``
            (the rule's name; see :func:`collect`), the flattened config (dotted columns such
            as ``model.units``), the final metrics as ``final.<metric>`` (``Float64`` when
            numeric), ``epochs``, ``wall_time``, ``error.<field>`` (only when some job
            reported an error) and ``git_commit``.
        history: Long table of ``history.csv``: ``run_id``, ``epoch``, ``metric``,
            ``value``; one row per job, epoch and metric (NaN values are kept).
        units: The ``units.parquet`` tables, one row per (job, epoch, unit), with a
            leading ``run_id`` column.
        actions: The ``actions.csv`` tables with a leading ``run_id`` column.
        oracle: The ``oracle.parquet`` tables (runs with ``oracle=N``) with a leading
            ``run_id``: per oracle epoch and unit, the true loss change of gating it
            (``oracle``) and of zeroing its output, beside every criterion's score.
        config_columns: The columns of ``runs`` that describe a job's config, in order:
            ``rule`` first, then the config's dotted keys.
    """

    runs: pd.DataFrame
    history: pd.DataFrame
    units: pd.DataFrame
    actions: pd.DataFrame
    config_columns: tuple[str, ...]
    oracle: pd.DataFrame = dataclasses.field(default_factory=lambda: _concat([], ORACLE_COLUMNS))

    def varying_keys(self) -> list[str]:
        """Config columns whose value differs between runs (a missing key counts as a value).

        Seeds (``seed`` and any ``*.seed``) and ``hydra.*`` keys are left out, as are jobs
        with no readable config at all, and keys that vary only along with what names their
        group: ``rule.fraction`` or ``rule._target_`` when the sweep compares rules with their
        default parameters (``rule`` already tells them apart), ``data.length`` along with
        ``data._target_``.
        """
        config = self.runs[list(self.config_columns)]
        config = config[config.drop(columns="rule", errors="ignore").notna().any(axis=1)]
        varying = [
            column for column in self.config_columns if not _is_replicate_key(column) and config[column].nunique(dropna=False) > 1
        ]
        return [column for column in varying if not _follows_identity(config, column, varying)]

    def summary(
        self, metrics: Sequence[str] | None = None, by: Sequence[str] | None = None, *, final: str = "last"
    ) -> pd.DataFrame:
        """Mean and sample standard deviation of final metrics over the ok runs of each group.

        Args:
            metrics: Metrics to aggregate: a column of :attr:`runs` or a metric name
                (``val_loss`` for ``final.val_loss``). Default: every numeric ``final.*``
                column, then ``epochs`` and ``wall_time``.
            by: Columns of :attr:`runs` to group by. Default: :meth:`varying_keys`. With
                no column, all ok runs form a single group.
            final: ``"last"`` (the last epoch's value, ``final.<metric>``) or ``"best"``
                (the best epoch's value, ``best.<metric>``: the minimum for losses and errors,
                the maximum for accuracy-like metrics; see :func:`higher_is_better`).
                ``epochs``, ``wall_time`` and metrics without a history are the same for both.

        Returns:
            One row per group (sorted by the group keys, missing values last) with the
            ``by`` columns, ``n`` (the number of ok runs in the group), then
            ``<metric> mean`` and ``<metric> std`` for each metric; ``std`` is missing for a
            group of one run.

        Raises:
            ValueError: A metric or ``by`` column is unknown, a metric is not numeric, or
                ``final`` is neither ``"last"`` nor ``"best"``.
        """
        return summarising.summary(self, metrics, by, final)

    def compare(
        self, metric: str, baseline: Mapping[str, Any], *, by: Sequence[str] | None = None, final: str = "last"
    ) -> pd.DataFrame:
        """Every arm against the baseline arm: difference of means, 95 % CI, p, Holm-adjusted p.

        See :func:`adaptgrad.results.comparing.compare`.
        """
        return comparing.compare(self, metric, baseline, by=by, final=final)

    def criteria(self, by: Sequence[str] | None = None, *, k: int = 4, edit: str = "gate") -> pd.DataFrame:
        """How well each recorded criterion predicted the oracle, per group and criterion.

        Every (run, oracle epoch, layer) of :attr:`oracle` is judged by
        :func:`adaptgrad.criteria.evaluate` over its active units (``edit="gate"``: against
        ``oracle``; ``"zero_output"``: against ``oracle_zero_output``); the rows are the means over
        them, with ``n`` the number judged.

        Args:
            by: Columns of :attr:`runs` to group by (default: :meth:`varying_keys`).
            k: the number of units a rule picks.
            edit: ``"gate"`` or ``"zero_output"``.
        """
        return judging.criteria(self, self.varying_keys() if by is None else list(by), k=k, edit=edit)

    def values(self, metric: str, final: str = "last") -> pd.Series:
        """One value of ``metric`` per run (aligned with :attr:`runs`): its ``final`` value.

        ``metric`` is a column of :attr:`runs` or a metric name (``val_loss``); ``final`` is
        ``"last"`` or ``"best"`` (see :meth:`summary`). A metric that ``result.json`` does not
        report but ``history.csv`` holds takes its last epoch's value. The series is named after
        the column (``final.val_loss``, ``best.val_loss``, ``wall_time``).
        """
        return summarising.values(self, metric, final)


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
    config_columns: dict[str, None] = {"rule": None}
    histories, units, actions, oracles = [], [], [], []
    for run_id, job_dir in zip(run_ids, job_dirs):
        config = _read_config(job_dir)
        fields = {"run_id": run_id, **_read_result(job_dir)}
        if not isinstance(fields.get("rule"), str):
            fields["rule"] = rule_name_of_target(config.get("rule._target_"))
        config_columns.update(dict.fromkeys(key for key in config if key not in fields))
        rows.append({**config, **fields})
        if fields["status"] == "ok":
            missing = [name for name in jobdir.TABLES if not (job_dir / name).is_file()]
            if missing:
                _warn(f"{job_dir}: status ok but {', '.join(missing)} missing; its part of the tables is empty")
        histories.append(_read_table(job_dir / jobdir.HISTORY, run_id, _history_table))
        units.append(_read_table(job_dir / jobdir.UNITS, run_id, _units_table))
        actions.append(_read_table(job_dir / jobdir.ACTIONS, run_id, _actions_table))
        oracles.append(_read_table(job_dir / jobdir.ORACLE, run_id, pd.read_parquet))

    return Results(
        runs=_runs_table(rows, list(config_columns)),
        history=_concat(histories, HISTORY_COLUMNS),
        units=_concat(units, UNITS_COLUMNS, ("step",)),
        actions=_concat(actions, ACTIONS_COLUMNS, ("step",)),
        config_columns=tuple(config_columns),
        oracle=_concat(oracles, ORACLE_COLUMNS),
    )


def rule_name_of_target(target: Any) -> str | None:
    """The name of the rule class at ``target`` (a ``module.Class`` path): its registered name
    when a class of that name is registered, else the class name.

    Example:
        >>> rule_name_of_target("adaptgrad.rules.TaylorPrune"), rule_name_of_target("my_rules.Mine")
        ('taylor_prune', 'Mine')
    """
    from adaptgrad.rules import REGISTRY

    if not isinstance(target, str) or not target:
        return None
    class_name = target.rsplit(".", 1)[-1]
    return next((name for name, cls in REGISTRY.items() if cls.__name__ == class_name), class_name)


def _follows_identity(config: pd.DataFrame, column: str, varying: list[str]) -> bool:
    """Whether ``column`` (say ``rule.fraction``) only varies because what names its group does
    (the ``rule`` column for ``rule.*``, else ``<group>._target_``): constant within each name."""
    group, _, _ = column.rpartition(".")
    if not group:
        return False
    identity = group if group in config.columns else f"{group}._target_"
    if identity == column or identity not in varying:
        return False
    values = config[[identity, column]].astype(str)
    return bool((values.groupby(identity)[column].nunique() <= 1).all())


def _is_replicate_key(column: str) -> bool:
    """Whether a config column only names a replicate (a seed) or Hydra's own settings."""
    return column == "seed" or column.endswith(".seed") or column.startswith("hydra.")


def _is_job_dir(directory: Path) -> bool:
    """Whether ``directory`` is the output dir of one job."""
    return (directory / jobdir.RESULT).is_file() or (directory / ".hydra").is_dir()


def _natural_key(run_id: str) -> tuple[tuple[tuple[int | str, ...], ...], str]:
    """Sort key comparing the digit runs of each path component as numbers ("2" < "10").

    Splitting at digit runs puts text at even and numbers at odd positions, so the parts
    compared with each other always have the same type; ``run_id`` itself breaks ties
    such as ``"01"``/``"1"``.
    """
    parts = tuple(
        tuple(int(chunk) if i % 2 else chunk for i, chunk in enumerate(re.split(r"([0-9]+)", part))) for part in run_id.split("/")
    )
    return parts, run_id


def _find_job_dirs(root: Path) -> list[Path]:
    """Job dirs at or below ``root``, in natural order of their relative path."""
    if _is_job_dir(root):
        return [root]
    found = []
    for directory, subdirs, files in os.walk(root):
        if _is_job_dir(Path(directory)):
            found.append(Path(directory))
            subdirs.clear()
            continue
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        tables = sorted(set(files) & set(jobdir.TABLES))
        if tables:
            _warn(
                f"{directory}: holds {', '.join(tables)} but no result.json nor .hydra/ (a job of another tool or version?); skipped"
            )
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
    for candidate in (job_dir / jobdir.CONFIG, job_dir / ".hydra" / "config.yaml"):
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
    path = job_dir / jobdir.RESULT
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
    rule = result.get("rule")
    return {
        "status": status if isinstance(status, str) else "unknown",
        "rule": rule if isinstance(rule, str) else None,
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
    actions = _with_columns(pd.read_csv(path), {c: t for c, t in ACTIONS_COLUMNS.items() if c != "step"})  # step: newer files
    return actions.astype({c: t for c, t in ACTIONS_COLUMNS.items() if c in actions.columns})


def _units_table(path: Path) -> pd.DataFrame:
    """``units.parquet``, checked to have the columns every job writes."""
    return _with_columns(pd.read_parquet(path), {c: t for c, t in UNITS_COLUMNS.items() if c in ("epoch", "unit", "active")})


def _with_columns(table: pd.DataFrame, schema: Mapping[str, str]) -> pd.DataFrame:
    """``table`` if it has every column of ``schema`` but ``run_id`` (ValueError naming those it lacks)."""
    missing = [column for column in schema if column != "run_id" and column not in table.columns]
    if missing:
        raise ValueError(f"no {', '.join(map(repr, missing))} column; is it a file of an adaptgrad job?")
    return table


def _read_table(path: Path, run_id: str, reader: Callable[[Path], pd.DataFrame]) -> pd.DataFrame | None:
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


def _concat(tables: list[pd.DataFrame | None], schema: Mapping[str, str], keep: Sequence[str] = ()) -> pd.DataFrame:
    """The non-empty ``tables`` one under the other, or an empty frame with ``schema``; the
    ``keep`` columns of the schema are present, after ``epoch``, with its dtype even when some or
    all tables lack them (files of older jobs)."""
    present = [table for table in tables if table is not None and len(table)]
    if not present:
        return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in schema.items()})
    table = pd.concat(present, ignore_index=True)
    for column in keep:
        if column not in table:
            table.insert(table.columns.get_loc("epoch") + 1, column, pd.NA)
        table[column] = table[column].astype(schema[column])
    return table
