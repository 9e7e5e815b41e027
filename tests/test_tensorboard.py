"""TensorBoard event files of a job: run names that fit a dir name, no epoch written twice."""

from __future__ import annotations

import tensorflow as tf
from conftest import tensorboard_steps

from adaptgrad.tensorboard import NAME_BYTES, keep_before, run_name


def test_a_long_command_line_gives_a_run_name_that_fits_a_dir_name(tmp_path):
    overrides = [f"+data.some_long_key_{i}=some_long_value_{i}" for i in range(18)]  # > 255 bytes joined
    name, other = run_name(overrides), run_name([*overrides[:-1], "+data.some_long_key_17=another"])
    assert len(",".join(overrides)) > 255 and len(name.encode()) == NAME_BYTES
    assert name != other and name.startswith("+data.some_long_key_0=some_long_value_0,")
    (tmp_path / name).mkdir()  # the file system takes it
    assert len(run_name(["é" * 300]).encode()) <= NAME_BYTES  # cut between characters, not inside one


def test_keep_before_drops_the_epochs_a_resumed_job_trains_again(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in range(4):
            tf.summary.write("loss", tf.constant(float(step)), step=step)
    writer.flush()
    keep_before(tmp_path, 2)
    assert tensorboard_steps(tmp_path) == [("loss", 0), ("loss", 1)]
    keep_before(tmp_path / "absent", 0)  # a job that wrote no events yet
