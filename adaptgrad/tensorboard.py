"""TensorBoard event files of a job: per-epoch scalars and per-unit histograms of the statistics.

Example:
    >>> from adaptgrad.tensorboard import run_name
    >>> run_name(["rule=taylor_prune", "seed=1"]), run_name([])
    ('rule=taylor_prune,seed=1', 'default')
    >>> long = run_name([f"+data.key_{i}=a_value_{i}" for i in range(18)])
    >>> len(long.encode()), long[-25:]
    (200, ',+data.key_8=a_val~df1387')

Written with TensorFlow's own ``tf.summary.write`` in TensorBoard's formats (no ``tensorboard``
package needed to write; install it to view). The runner adds a :class:`TensorBoardLog` to every job; it writes into
``<job dir>/tb/<overrides>/``, so that ``tensorboard --logdir SWEEP`` lists each job of a sweep
as ``<job number>/tb/<its overrides>``. Steps are epochs, numbered from 0 as in every file, except
for the ``edits_by_step/`` tags, whose steps are optimizer steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from adaptgrad.atomic import write_atomic
from adaptgrad.stats import DERIVED_FIELDS, SUM_FIELDS

if TYPE_CHECKING:
    from adaptgrad.adapt import Adapt

STATISTICS = (*SUM_FIELDS, *DERIVED_FIELDS)
"""Per-unit statistics written as histograms (those with at least one finite value)."""


BINS = 30
"""Buckets of a histogram (TensorBoard's default)."""


NAME_BYTES = 200
"""The longest run name (a dir name: file systems allow 255 bytes)."""


def run_name(overrides: Sequence[str]) -> str:
    """The name of a job's TensorBoard run: its overrides joined by commas (``/`` becomes ``_``);
    a name longer than :data:`NAME_BYTES` is cut to fit, ending with ``~`` and 6 hex digits of
    its full text's hash (so that two long names still differ)."""
    name = ",".join(overrides).replace("/", "_") or "default"
    if len(name.encode()) <= NAME_BYTES:
        return name
    tail = "~" + hashlib.sha256(name.encode()).hexdigest()[:6]
    return name.encode()[: NAME_BYTES - len(tail)].decode(errors="ignore") + tail


def keep_before(directory: Path, epoch: int) -> None:
    """Drop the events of epoch ``epoch`` and later from the event files in ``directory`` (a
    resumed job trains them again: TensorBoard would show each of those steps twice)."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("events.out.tfevents.*")):
        events = [tf.compat.v1.Event.FromString(record.numpy()) for record in tf.data.TFRecordDataset(str(path))]
        kept = [event for event in events if not event.HasField("summary") or event.step < epoch]
        if len(kept) == len(events):
            continue

        def write(temp: Path, kept: list[tf.compat.v1.Event] = kept) -> None:
            with tf.io.TFRecordWriter(str(temp)) as writer:
                for event in kept:
                    writer.write(event.SerializeToString())

        write_atomic(path, write)


class TensorBoardLog(keras.callbacks.Callback):
    """Writes, at each epoch end, TensorBoard events into ``directory``.

    Scalars: every value of the epoch logs (``loss``, ``val_loss``, metrics, ``active_units``
    and ``active_units/<layer>``), and ``edits/<action>``: how many edits of each kind the rules
    made that epoch (0 for a kind seen in an earlier epoch), and ``edits_by_step/<action>``: the
    edits of each kind at the optimizer step at which they were made (the ``step`` column of
    ``actions.csv``: between batches for rules on the step clock, the epoch's last step for the
    others), written only where there were some. Histograms ``<layer>/<statistic>``:
    the epoch's per-unit statistics of each adapted layer. Put it after the ``Adapt`` callbacks,
    whose epoch-end work it reports.

    Args:
        directory: where the event files go (created).
        adapt: the job's :class:`~adaptgrad.Adapt`, or one per adapted layer.
    """

    def __init__(self, directory: Path, adapt: Adapt | Sequence[Adapt]) -> None:
        super().__init__()
        self.adapts = [adapt] if isinstance(adapt, keras.callbacks.Callback) else list(adapt)
        self.writer = tf.summary.create_file_writer(str(directory))
        self._actions: dict[str, None] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        with self.writer.as_default(step=epoch):
            for key, value in (logs or {}).items():
                _scalar(key, float(value))
            actions = pd.concat([adapt.actions_frame() for adapt in self.adapts], ignore_index=True)
            actions = actions[actions["epoch"] == epoch]
            counts = actions["action"].value_counts()
            self._actions.update(dict.fromkeys(counts.index))
            for action in self._actions:
                _scalar(f"edits/{action}", float(counts.get(action, 0)))
            for adapt in self.adapts:
                units = adapt.units_frame()
                units = units[units["epoch"] == epoch]
                for statistic in STATISTICS:
                    values = units[statistic].to_numpy(dtype=np.float64) if statistic in units else np.array([])
                    values = values[np.isfinite(values)]
                    if len(values):
                        _histogram(f"{adapt.watch.layer.name}/{statistic}", values)
        for (step, action), count in actions.groupby(["step", "action"]).size().items():
            with self.writer.as_default(step=int(step)):
                _scalar(f"edits_by_step/{action}", float(count))
        self.writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.writer.flush()


def _metadata(plugin: str) -> tf.compat.v1.SummaryMetadata:
    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    return metadata


def _scalar(tag: str, value: float) -> None:
    """A scalar in TensorBoard's format, written with TensorFlow's own ``tf.summary.write``
    (``tf.summary.scalar`` needs the ``tensorboard`` package, which TensorFlow no longer installs)."""
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_metadata("scalars"))


def _histogram(tag: str, values: np.ndarray) -> None:
    """A histogram in TensorBoard's format: rows ``[left edge, right edge, count]``, :data:`BINS`
    equal buckets from the minimum to the maximum (one bucket when all values are equal)."""
    low, high = float(values.min()), float(values.max())
    if low == high:
        buckets = np.array([[low, high, len(values)]], dtype=np.float64)
    else:
        counts, edges = np.histogram(values, bins=BINS, range=(low, high))
        buckets = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
    tf.summary.write(tag, tf.constant(buckets), metadata=_metadata("histograms"))
