"""A job's output dir before the job runs: what an earlier attempt left there, and a lock.

Example:
    >>> import tempfile, pathlib
    >>> from adaptgrad.jobdir import lock, plan
    >>> directory = pathlib.Path(tempfile.mkdtemp())
    >>> plan(directory, "seed: 0\\n")
    'run'
    >>> with lock(directory):
    ...     _ = (directory / "config.yaml").write_text("seed: 0\\n")
    ...     _ = (directory / "result.json").write_text('{"status": "ok"}')
    >>> plan(directory, "seed: 0\\n"), plan(directory, "seed: 1\\n")
    ('skip', 'refuse')

Needs no TensorFlow: the app decides here, before Hydra writes its records into the dir and
before a worker imports TensorFlow, whether a job is new, completed earlier (skip), interrupted
or failed (run again, resuming from a checkpoint when there is one) or another config's (refuse).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK = ".adaptgrad.lock"
"""The lock file in a job's (or a sweep's) dir."""

_held: dict[Path, int] = {}


class Busy(RuntimeError):
    """Another process holds the dir's lock."""


def previous(directory: Path) -> tuple[str, dict[str, Any]] | None:
    """``(config text, result)`` of an earlier attempt in ``directory``, if there was one."""
    try:
        config = (Path(directory) / "config.yaml").read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        result = json.loads((Path(directory) / "result.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        result = {}
    return config, result


def plan(directory: Path, config_text: str) -> str:
    """What a job with this resolved config does in ``directory``: ``run`` (new, interrupted,
    failed or diverged), ``skip`` (completed with this config) or ``refuse`` (another config's)."""
    found = previous(directory)
    if found is None:
        return "run"
    if found[0] != config_text:
        return "refuse"
    return "skip" if found[1].get("status") == "ok" else "run"


def refusal(directory: Path) -> str:
    """The one-line message of a refused job."""
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
