"""The TensorFlow runtime of a job: threads, logical CPU devices, distribution strategy.

Example:
    >>> from adaptgrad.runtime import strategy_for
    >>> strategy_for("none").num_replicas_in_sync
    1

:func:`configure` must run before TensorFlow starts in the process (the runner calls it first
thing in :func:`adaptgrad.config.prepare`); in a reused worker it accepts the same settings again.
"""

from __future__ import annotations

import functools

import tensorflow as tf


@functools.cache
def mirrored_strategy(devices: tuple[str, ...] | None = None) -> tf.distribute.MirroredStrategy:
    """One ``MirroredStrategy`` per device set and process. A second strategy would reuse the
    collective-op keys of the first, and TensorFlow rejects that once tensor shapes differ
    (joblib runs many jobs in one worker process)."""
    return tf.distribute.MirroredStrategy(list(devices) if devices else None)


def split_cpu(devices: int) -> None:
    """Expose the CPU as ``devices`` logical devices (to run MirroredStrategy without GPUs).

    Raises:
        RuntimeError: TensorFlow has already started with fewer logical CPUs.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) < devices:
            raise RuntimeError(f"trainer.cpu_devices={devices} must be set before TensorFlow starts in this process") from error


def limit_threads(threads: int) -> None:
    """Run TensorFlow's ops on ``threads`` threads (intra- and inter-op) in this process.

    Raises:
        RuntimeError: TensorFlow already runs with another number in this process.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as error:
        raise RuntimeError(
            f"trainer.threads={threads}: TensorFlow already runs with "
            f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads in this process; "
            f"use one value for every job of a sweep"
        ) from error


def configure(threads: int | None, cpu_devices: int | None) -> None:
    """Limit TensorFlow to ``threads`` threads and split the CPU into ``cpu_devices`` logical
    devices (None: leave as is): before TensorFlow starts in this process."""
    if threads is not None:
        limit_threads(threads)
    if cpu_devices is not None:
        split_cpu(cpu_devices)


def strategy_for(distribution: str, cpu_devices: int | None = None) -> tf.distribute.Strategy:
    """``mirrored``: a MirroredStrategy over ``cpu_devices`` logical CPUs when set, else over the
    visible GPUs; ``none``: the default strategy."""
    if distribution == "mirrored":
        devices = tuple(f"/cpu:{i}" for i in range(cpu_devices)) if cpu_devices else None
        return mirrored_strategy(devices)
    return tf.distribute.get_strategy()
