"""The files a job writes in its output dir, each written atomically (temp file + rename).

Example:
    >>> import tempfile, pathlib
    >>> from adaptgrad.recorder import write_json
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "result.json"
    >>> write_json(path, {"status": "ok"})
    >>> path.read_text().strip()
    '{\\n  "status": "ok"\\n}'

A job dir holds ``config.yaml`` (resolved config), ``history.csv`` (one row per epoch),
``units.parquet`` (epoch x unit statistics, active flag, scale), ``actions.csv`` (every edit)
and ``result.json`` (status, final metrics, wall time, versions, git commit, error). A killed job
never leaves a half-written file: readers see the previous complete version or none.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import pandas as pd

if TYPE_CHECKING:
    from adaptgrad.adapt import Adapt

log = logging.getLogger("adaptgrad")

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON atomically (NaN becomes null, inf a string)."""
    write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a DataFrame atomically as CSV or Parquet, by the file's suffix."""
    suffix = Path(path).suffix
    if suffix == ".csv":
        write_atomic(path, lambda temp: frame.to_csv(temp, index=False))
    elif suffix == ".parquet":
        write_atomic(path, lambda temp: frame.to_parquet(temp, index=False))
    else:
        raise ValueError(f"cannot write a table to {path}: use .csv or .parquet")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("adaptgrad", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "hydra-core", "omegaconf"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit(directory: str | os.PathLike) -> str | None:
    """The commit checked out in the git work tree containing ``directory`` (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class JobFiles(keras.callbacks.Callback):
    """Writes ``history.csv``, ``units.parquet``, ``actions.csv`` after every epoch and logs progress;
    stops training when the loss is NaN/inf (the job is then ``diverged``)."""

    def __init__(self, directory: Path, adapt: Adapt, epochs: int) -> None:
        super().__init__()
        self.directory = directory
        self.adapt = adapt
        self.epochs = epochs
        self.rows: list[dict[str, float]] = []
        self.diverged_at: int | None = None
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows.append(row)
        self.flush()
        shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "active_units"))
        log.info(
            "epoch %d/%d  %s  active=%d/%d  (%.2fs)",
            epoch + 1, self.epochs, shown, row.get("active_units", 0), self.adapt.units.size,
            time.perf_counter() - self._started,
        )
        if not math.isfinite(row.get("loss", 0.0)):
            self.diverged_at = epoch
            self.model.stop_training = True

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def flush(self) -> None:
        write_frame(self.directory / "history.csv", self.history())
        write_frame(self.directory / "units.parquet", self.adapt.units_frame())
        write_frame(self.directory / "actions.csv", self.adapt.actions_frame())
