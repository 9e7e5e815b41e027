"""A job's output dir: the names of its files, how to read its ``result.json``, what an earlier
attempt left there, and a lock.

Example:
    >>> import tempfile, pathlib
    >>> from adaptgrad.jobdir import lock, plan
    >>> directory = pathlib.Path(tempfile.mkdtemp())
    >>> plan(directory, "seed: 0\\n")
    'run'
    >>> with lock(directory):
    ...     _ = (directory / "config.yaml").write_text("seed: 0\\n")
    ...     _ = (directory / "result.json").write_text('{"status": "ok", "model_saved": false}')
    ...     for name in ("history.csv", "units.parquet", "actions.csv"):
    ...         _ = (directory / name).write_text("epoch\\n0\\n")
    >>> plan(directory, "seed: 0\\n"), plan(directory, "seed: 1\\n")
    ('skip', 'refuse')
    >>> (directory / "history.csv").unlink()  # a completed job's table is gone: run again (resume)
    >>> plan(directory, "seed: 0\\n")
    'run'

Needs no TensorFlow: the app decides here, before Hydra writes its records into the dir and
before a worker imports TensorFlow, whether a job is new, completed earlier (skip), interrupted,
failed or incomplete (run again, resuming from a checkpoint when there is one) or another
config's (refuse: also a dir that holds a job's files but no ``config.yaml``, whose config
cannot be known).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
"""The resolved config of the job (written first: it says whose the dir's other files are)."""
RESULT = "result.json"
"""Status, rule, final metrics, epochs, wall time, versions, error (see :func:`read_result`)."""
HISTORY = "history.csv"
UNITS = "units.parquet"
ACTIONS = "actions.csv"
TABLES = (HISTORY, UNITS, ACTIONS)
"""The tables every job writes after each epoch."""
ORACLE = "oracle.parquet"
"""The oracle beside every criterion, every ``oracle=N`` epochs (only jobs that ask for it)."""
MODEL = "model.keras"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
JOB_FILES = (CONFIG, RESULT, *TABLES, ORACLE, MODEL, CHECKPOINTS, TENSORBOARD)
"""Everything a job writes into its dir (Hydra's ``.hydra/`` and the lock are not the job's)."""
LOCK = ".adaptgrad.lock"
"""The lock file in a job's (or a sweep's) dir."""

_held: dict[Path, int] = {}


class Busy(RuntimeError):
    """Another process holds the dir's lock."""


def read_result(directory: Path) -> dict[str, Any] | None:
    """The job's ``result.json`` as a dict: None when there is none, ``{}`` when it cannot be read
    or is not a JSON object (its status is then unknown)."""
    try:
        result = json.loads((Path(directory) / RESULT).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        return {}
    return result if isinstance(result, dict) else {}


def previous(directory: Path) -> tuple[str, dict[str, Any]] | None:
    """``(config text, result)`` of an earlier attempt in ``directory``, if there was one (a
    ``config.yaml`` that is not UTF-8 is read with replacement characters: no config matches it)."""
    try:
        config = (Path(directory) / CONFIG).read_bytes().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return config, read_result(directory) or {}


def _orphans(directory: Path) -> list[str]:
    """The job files in ``directory`` although it has no ``config.yaml``."""
    return [name for name in JOB_FILES if (Path(directory) / name).exists()]


def complete(directory: Path, result: dict[str, Any]) -> bool:
    """Whether the job that wrote ``result`` left all its files: status ``ok``, every table
    non-empty, and ``model.keras`` unless the result records that Keras could not save the model."""
    if result.get("status") != "ok":
        return False
    needed = [*TABLES] if result.get("model_saved") is False else [*TABLES, MODEL]
    return all(_non_empty(Path(directory) / name) for name in needed)


def _non_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0 or path.is_dir()
    except OSError:
        return False


def plan(directory: Path, config_text: str) -> str:
    """What a job with this resolved config does in ``directory``: ``run`` (new, interrupted,
    failed, diverged or with a file missing), ``skip`` (completed with this config, every file
    there) or ``refuse`` (another config's, or a job's files without their ``config.yaml``)."""
    found = previous(directory)
    if found is None:
        return "refuse" if _orphans(directory) else "run"
    if found[0] != config_text:
        return "refuse"
    return "skip" if complete(directory, found[1]) else "run"


def refusal(directory: Path) -> str:
    """The one-line message of a refused job."""
    if not (Path(directory) / CONFIG).exists():
        return (
            f"output dir {directory} holds a job's files ({', '.join(_orphans(directory))}) but no {CONFIG}, so whose "
            f"they are is unknown; choose another dir (hydra.run.dir / hydra.sweep.dir) or move them away - nothing was overwritten"
        )
    return (
        f"output dir {directory} holds a run of a different config; choose another dir "
        f"(hydra.run.dir / hydra.sweep.dir) - nothing was overwritten"
    )


@contextlib.contextmanager
def lock(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock (made if needed) for the block; re-entrant within a process.

    Raises:
        Busy: another process holds it.
    """
    key = Path(directory).resolve()
    if key in _held:
        yield
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(f"another adaptgrad run is writing to {directory}; wait for it to end or choose another dir") from None
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # releases the lock
