"""Test session set-up: quiet TensorFlow, two logical CPUs (for MirroredStrategy), a clean Keras
session and op determinism off (a fresh process's state) at the start of every test, and the one
tiny job config the runner tests share."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from adaptgrad import _keras  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

TINY = ("data=toy", "model.units=4", "trainer.epochs=2", "trainer.batch_size=1")
"""The smallest real job: the question's toy data, 4 units, 2 epochs (a second or two)."""


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every module is imported now and lives as long as the process: later garbage collections
    (``clear_session`` in every job's ``prepare``) need not traverse its objects again."""
    gc.freeze()


@pytest.fixture
def tiny() -> list[str]:
    """The overrides of :data:`TINY`, the job the runner tests share."""
    return list(TINY)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Every test starts from a clean Keras session, float32 policy and seed 0, with op
    determinism off as in a fresh process: ``config.prepare`` turns it on, and under it Keras
    silently compiles without XLA (the fallback warning is an error in pyproject.toml)."""
    keras.backend.clear_session(free_memory=False)  # gc.collect() costs ~0.2-0.8 s a test; Python collects anyway
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    _keras.set_op_determinism(False)
    yield
    keras.mixed_precision.set_global_policy("float32")
