"""The files a job writes in its output dir (through :mod:`adaptgrad.atomic`) and its console lines.

Example:
    >>> from adaptgrad.recorder import edit_summary
    >>> edit_summary(["gate", "gate", "reinit", "gate"])
    'gate×3 reinit×1'

A job dir holds ``config.yaml`` (resolved config), ``history.csv`` (one row per epoch),
``units.parquet`` (epoch x unit statistics, active flag, scale), ``actions.csv`` (every edit;
both tables carry the optimizer ``step`` beside the ``epoch``)
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
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import pandas as pd

from adaptgrad import jobdir
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


def edit_summary(actions: Iterable[str]) -> str:
    """What the rules did in one epoch, for the console: ``gate×3 reinit×1`` or ``no edit``."""
    counts = Counter(actions)
    return " ".join(f"{action}×{count}" for action, count in counts.items()) or "no edit"


class JobFiles(keras.callbacks.Callback):
    """Writes ``history.csv``, ``units.parquet``, ``actions.csv`` after every epoch and logs one
    line per epoch (metrics, active units, what the rules did); stops training when the loss is
    NaN/inf, or any other loss or metric is
    (the job is then ``diverged``).

    Epochs are numbered from 0, as in Keras's callbacks, the rules' ``start_epoch`` and every file;
    the console line ``epoch 3 of 0..19`` says so. ``adapt`` is the job's :class:`~adaptgrad.Adapt`
    (or one per adapted layer: the tables are then their frames one under the other).

    Put :attr:`logs` first in ``fit``'s callbacks and this after the ``Adapt`` callbacks: when a
    rule raises (and ``fit`` stops before this callback sees the epoch),
    :meth:`record_failed_epoch` still writes the epoch's row and the rule's ``failed`` action.
    """

    def __init__(self, directory: Path, adapt: Adapt | Sequence[Adapt], epochs: int) -> None:
        super().__init__()
        self.directory = directory
        self.adapts = [adapt] if isinstance(adapt, keras.callbacks.Callback) else list(adapt)
        self.epochs = epochs
        self.rows: list[dict[str, float]] = []
        self.diverged_at: int | None = None
        self.nonfinite: list[str] = []
        self._started = time.perf_counter()
        self.logs = _EpochLogs()

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
        active = "  ".join(
            f"active{'' if len(self.adapts) == 1 else ' ' + a.watch.layer.name}={int(a.units.active.sum())}/{a.units.size}"
            for a in self.adapts
        )
        actions = self.actions_frame()
        edits = edit_summary(actions.loc[actions["epoch"] == epoch, "action"])
        log.info(
            "epoch %d of 0..%d  %s  %s  %s  (%.2fs)",
            epoch,
            self.epochs - 1,
            shown,
            active,
            edits,
            time.perf_counter() - self._started,
        )
        self.nonfinite = [k for k, v in row.items() if not math.isfinite(v)]
        if self.nonfinite:  # any loss or metric
            self.diverged_at = epoch
            self.model.stop_training = True

    def record_failed_epoch(self, epoch: int) -> None:
        """Write the tables after ``fit`` raised in ``epoch``: with the epoch's row when it trained
        to the end (the metrics that :attr:`logs` saw and the units active after the rules' undo)."""
        trained = self.logs.epoch == epoch and not any(row["epoch"] == epoch for row in self.rows)
        if trained:
            active = {f"active_units/{a.watch.layer.name}": float(a.units.active.sum()) for a in self.adapts}
            if len(self.adapts) == 1:  # as the Adapt adds them to the logs
                active["active_units"] = float(self.adapts[0].units.active.sum())
            self.rows.append({"epoch": epoch, **self.logs.values, **active})
        self.flush()

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def units_frame(self) -> pd.DataFrame:
        return pd.concat([a.units_frame() for a in self.adapts], ignore_index=True)

    def actions_frame(self) -> pd.DataFrame:
        return pd.concat([a.actions_frame() for a in self.adapts], ignore_index=True)

    def flush(self) -> None:
        write_frame(self.directory / jobdir.HISTORY, self.history())
        write_frame(self.directory / jobdir.UNITS, self.units_frame())
        write_frame(self.directory / jobdir.ACTIONS, self.actions_frame())
        oracle = pd.concat([a.oracle_frame() for a in self.adapts], ignore_index=True)
        if len(oracle):
            write_frame(self.directory / jobdir.ORACLE, oracle)


class _EpochLogs(keras.callbacks.Callback):
    """The logs of the last epoch end it saw (first among ``fit``'s callbacks: before any can raise)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch: int | None = None
        self.values: dict[str, float] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch, self.values = epoch, {k: float(v) for k, v in (logs or {}).items()}
