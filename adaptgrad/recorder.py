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

import logging
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import pandas as pd

from adaptgrad.atomic import write_atomic, write_frame, write_json, write_text  # noqa: F401 - also importable from here

if TYPE_CHECKING:
    from adaptgrad.adapt import Adapt

log = logging.getLogger("adaptgrad")


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
    stops training when a loss or metric is NaN/inf (the job is then ``diverged``). With several
    adapted layers, the tables are their Adapts' one after another (column ``layer``) and the
    history has ``active_units/<layer>`` per layer."""

    def __init__(self, directory: Path, adapts: list[Adapt], epochs: int) -> None:
        super().__init__()
        self.directory = directory
        self.adapts = list(adapts)
        self.epochs = epochs
        self.rows: list[dict[str, float]] = []
        self.diverged_at: int | None = None
        self.nonfinite: list[str] = []
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        if len(self.adapts) > 1:  # the active count of each layer, none for the model as a whole
            row.pop("active_units", None)
            row.update({f"active_units/{a.watch.layer.name}": float(a.units.active.sum()) for a in self.adapts})
        self.rows.append(row)
        self.flush()
        shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch" and not k.startswith("active_units"))
        log.info(
            "epoch %d/%d  %s  active=%d/%d  (%.2fs)",
            epoch + 1, self.epochs, shown, sum(int(a.units.active.sum()) for a in self.adapts),
            sum(a.units.size for a in self.adapts), time.perf_counter() - self._started,
        )
        self.nonfinite = [k for k, v in row.items() if not math.isfinite(v)]
        if self.nonfinite:  # any loss or metric
            self.diverged_at = epoch
            self.model.stop_training = True

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def flush(self) -> None:
        write_frame(self.directory / "history.csv", self.history())
        write_frame(self.directory / "units.parquet", _by_layer(self.adapts, "units_frame"))
        write_frame(self.directory / "actions.csv", _by_layer(self.adapts, "actions_frame"))


def _by_layer(adapts: list[Adapt], frame: str) -> pd.DataFrame:
    """The Adapts' frames one after another, each with its ``layer`` column first."""
    frames = []
    for adapt in adapts:
        part = getattr(adapt, frame)()
        if "layer" not in part.columns:
            part.insert(0, "layer", adapt.watch.layer.name)
        frames.append(part)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
