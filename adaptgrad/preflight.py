"""Every job of an ``adaptgrad`` invocation checked before Hydra starts any (no TensorFlow).

Example:
    >>> from adaptgrad.preflight import check_invocation
    >>> points = check_invocation(["data=toy", "rule=taylor_prune", "rule.fraction=0.1,1.5"], multirun=True)
    >>> [(p.number, p.overrides[-1], p.error) for p in points]  # doctest: +NORMALIZE_WHITESPACE
    [(0, 'rule.fraction=0.1', None),
     (1, 'rule.fraction=1.5', 'taylor_prune: fraction=1.5 is out of range; valid: (0.0, 1.0)')]

The app composes each sweep point the way Hydra's basic sweeper expands it (command-line sweeps
and ``hydra.sweeper.params``; :mod:`adaptgrad.composition`), turns it into plain objects
(:func:`adaptgrad.config.check`), loads its data once per distinct data config, and works out the
job's output dir. So a typo or a bad value anywhere in a sweep of 70 jobs stops the sweep within
seconds, before any job trains, with the point's overrides and a one-line message, whatever the
launcher. With another sweeper (Optuna) the command line's fixed part is checked; the points it
chooses are checked by each job.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from adaptgrad.checks import first_line
from adaptgrad.composition import Composer, explain, given_keys, session
from adaptgrad.config import check, job_config, load_data


@dataclasses.dataclass
class Point:
    """One job of the invocation: its number, overrides, output dir (and the run's or sweep's
    dir, ``root``), resolved config, or the one-line error that stops the invocation."""

    number: int
    overrides: list[str]
    directory: Path | None = None
    root: Path | None = None
    config_text: str | None = None
    error: str | None = None
    records: Path | None = None
    """Where Hydra writes the job's records (``.hydra``), if it does."""


def check_invocation(overrides: list[str], *, multirun: bool, composer: Composer | None = None) -> list[Point]:
    """Compose and check every job that ``adaptgrad [-m] OVERRIDES`` would run (with the
    ``composer`` that pinned the output dir, if one did: see :meth:`Composer.pin_dir`).

    Returns an empty list when the points cannot be known here (a sweep syntax only another
    sweeper understands): Hydra then reports or runs them as usual.
    """
    composer = composer or Composer()
    with session():
        jobs = composer.expand(overrides, multirun)
        if jobs is None:
            return []
        data: dict[str, str | None] = {}
        return [_point(i, job, composer, multirun, data) for i, job in enumerate(jobs)]


def _point(number: int, overrides: list[str], composer: Composer, multirun: bool, data: dict[str, str | None]) -> Point:
    point = Point(number, list(overrides))
    try:
        job = composer(number, overrides, multirun)
    except Exception as error:  # noqa: BLE001 - any composition error stops the invocation
        point.error = explain(error, overrides)
        return point
    point.root, point.directory, point.records = job.root, job.directory, job.records
    try:
        task = job_config(job.config, given_keys(overrides), job.rule_preset)
        point.config_text = OmegaConf.to_yaml(task, resolve=True)
        check(task, job.rule_preset)
        point.error = _data_error(task.data, data)
    except Exception as error:  # noqa: BLE001
        point.error = first_line(error)
    return point


def _data_error(data_cfg: DictConfig, seen: dict[str, str | None]) -> str | None:
    """The error loading this data config gives (each distinct config loaded once)."""
    key = OmegaConf.to_yaml(data_cfg, resolve=True)
    if key not in seen:
        try:
            load_data(data_cfg)
            seen[key] = None
        except Exception as error:  # noqa: BLE001
            seen[key] = first_line(error)
    return seen[key]
