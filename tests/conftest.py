"""Test session set-up: quiet TensorFlow, one thread per xdist worker, two logical CPUs (for
MirroredStrategy), a clean Keras session and op determinism off (a fresh process's state) at the
start of every test; and what the runner tests share: the one tiny job config, the ``adaptgrad``
command run in this process or in a fresh one (:func:`cli`), a user's model, rules and data
modules. The references and the small models the library tests share are in ``reference.py``."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

from adaptgrad.app import main  # noqa: E402 - neither imports TensorFlow
from adaptgrad.rules.base import REGISTRY  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """TensorFlow's set-up, in the process that runs the tests: not in pytest-xdist's
    controller, which runs none (importing TensorFlow there would hold up the workers' start by
    about 7 s)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import tensorflow as tf

    if hasattr(config, "workerinput"):  # one worker per core: a thread pool each would oversubscribe them
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


TINY = ("data=toy", "model.units=4", "trainer.epochs=2", "trainer.batch_size=1")
"""The smallest real job: the question's toy data, 4 units, 2 epochs (a second or two)."""


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every module is imported now and lives as long as the process: later garbage collections
    need not traverse its objects again."""
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
    import keras

    from adaptgrad import _keras

    keras.backend.clear_session(free_memory=False)  # gc.collect() costs ~0.2-0.8 s a test; Python collects anyway
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    _keras.set_op_determinism(False)
    yield
    keras.mixed_precision.set_global_policy("float32")


class Invocation(NamedTuple):
    """What ``adaptgrad ARGS`` did: its exit code and what it printed."""

    code: int
    out: str
    err: str


@pytest.fixture
def adaptgrad_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Invocation]]:
    """``adaptgrad ARGS`` run by ``app.main()``: exit code, stdout, stderr. Hydra leaves logging
    alone (``hydra/job_logging=none``: its set-up would close pytest's log handlers)."""
    registered = dict(REGISTRY)  # the user rules these tests import register their names

    def invoke(*args: str) -> Invocation:
        monkeypatch.setattr(sys, "argv", ["adaptgrad", *args, "hydra/job_logging=none", "hydra/hydra_logging=none"])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return Invocation(code, captured.out, captured.err)

    yield invoke
    REGISTRY.clear()
    REGISTRY.update(registered)


def tensorboard_steps(directory: Path) -> list[tuple[str, int]]:
    """``(tag, step)`` of every summary in the TensorBoard event files of ``directory``, sorted."""
    import tensorflow as tf

    return sorted(
        (value.tag, event.step)
        for path in directory.glob("events.out.tfevents.*")
        for record in tf.data.TFRecordDataset(str(path))
        for event in [tf.compat.v1.Event.FromString(record.numpy())]
        for value in event.summary.value
    )


@contextlib.contextmanager
def another_run_holding(directory: Path) -> Iterator[None]:
    """While the block runs, another process holds ``directory``'s job lock, as a second adaptgrad run would."""
    script = f"from adaptgrad.jobdir import lock\nwith lock({str(directory)!r}):\n    print('held', flush=True)\n    input()"
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("\n", timeout=30)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m adaptgrad ARGS`` in a fresh process, as a user would from a shell."""
    return subprocess.run(
        [sys.executable, "-m", "adaptgrad", *args],
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def on_path(directory: Path) -> dict[str, str]:
    """The environment that puts ``directory`` (a user's modules) on the path, before adaptgrad's."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))}


MY_MODELS = """
import keras

def stacked_lstm(input_shape, outputs, task, units=8):
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.LSTM(units, return_sequences=True, name="first"),
        keras.layers.LSTM(units, name="second"),
        keras.layers.Dense(outputs, name="head"),
    ])
"""


def own_model(tmp_path: Path) -> list[str]:
    """A user's model module and config dir outside the package; the overrides that select it."""
    (tmp_path / "my_models.py").write_text(MY_MODELS)
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "stacked.yaml").write_text("_target_: my_models.stacked_lstm\nunits: 4\n")
    return [
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "model=stacked",
        "data=toy",
        "trainer.epochs=2",
        "trainer.batch_size=1",
    ]


FAILING_RULES = """
import numpy as np
from adaptgrad import AdaptationRule

class Broken(AdaptationRule, name="broken"):
    def apply(self, stats, units, epoch):
        if epoch == 1:
            raise RuntimeError("this rule is broken on purpose")

class Exploding(AdaptationRule, name="exploding"):
    def apply(self, stats, units, epoch):
        units.scale(range(units.size), 1e30)
"""
"""A user's rules module: rule ``broken`` raises at epoch 1, rule ``exploding`` makes the loss inf."""


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (Hydra's records included) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


HUGE_DATA = """
import numpy as np
from adaptgrad.data import Dataset

def huge(scale_train=1e20, scale_val=1e20):  # (1e20)² overflows float32: the loss is inf, gradients finite
    x = np.ones((4, 5, 1), np.float32)
    y = np.ones((4, 1), np.float32)
    return Dataset("huge", x, y * scale_train, x, y * scale_val, task="regression", outputs=1)
"""
"""A user's data module (``my_data.py``) whose targets make the squared error overflow."""
HUGE = [
    *TINY,
    "data._target_=my_data.huge",
    "rule=none",
    "optimizer=sgd",
    "optimizer.learning_rate=1e-30",
    "optimizer.momentum=0.0",
]
"""A job on :data:`HUGE_DATA` whose loss is inf: a tiny plain-SGD step keeps the weights (and mae) finite."""
