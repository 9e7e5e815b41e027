"""XLA in the runner: ``trainer.jit_compile=true`` compiles the train step with XLA, which needs
TensorFlow's op determinism off (Keras otherwise compiles without XLA, with only a warning)."""

from __future__ import annotations

import re
import warnings

import keras
import numpy as np
import pytest
from conftest import cli

import adaptgrad
from adaptgrad import _keras
from adaptgrad.cells import MinimalRNNCell
from adaptgrad.composition import compose
from adaptgrad.config import prepare
from adaptgrad.run import run

FALLBACK = "Model doesn't support `jit_compile=True`"
"""The start of Keras's warning when it drops XLA."""


def test_a_jit_compile_job_compiles_with_xla(tiny, tmp_path, caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(compose([*tiny, "trainer.jit_compile=true"]), tmp_path)
    assert result["status"] == "ok", result
    assert not [w for w in caught if str(w.message).startswith(FALLBACK)]
    assert not _keras.op_determinism_enabled()
    assert "trainer.jit_compile=true turns op determinism off" in caplog.text


@pytest.mark.parametrize(
    "overrides, deterministic",
    [
        pytest.param([], True, id="default"),
        pytest.param(["trainer.deterministic=false"], False, id="not_deterministic", marks=pytest.mark.slow),
        pytest.param(["trainer.jit_compile=true"], False, id="jit_compile"),
    ],
)
def test_op_determinism_follows_the_trainer(tiny, overrides, deterministic):
    _keras.set_op_determinism(not deterministic)  # a previous job of this process left the other state
    prepare(compose([*tiny, *overrides]))
    assert _keras.op_determinism_enabled() is deterministic


@pytest.mark.slow
def test_a_jit_compile_job_in_a_fresh_process(tmp_path):
    """The bar of issue 14, as a user runs it."""
    proc = cli("data=toy", "trainer.epochs=1", "trainer.jit_compile=true", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\| status +\| ok +\|", proc.stdout), proc.stdout
    assert FALLBACK not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "stats",
    [
        pytest.param(None, id="all"),
        pytest.param(("grad_sum", "grad_sq_sum"), id="gradient", marks=pytest.mark.slow),
        pytest.param((), id="none", marks=pytest.mark.slow),
    ],
)
def test_through_time_capture_of_every_stats_set_compiles_with_xla(stats):
    """XLA on the CPU has no EuclideanNorm and rejects a TensorList that a loop carries unfilled:
    every set of statistics must compile, and capture what the same model captures without XLA
    (checked against the manual unroll: test_capture.py::test_through_time_matches_manual_unroll)."""
    x, y = np.random.default_rng(0).normal(size=(8, 5, 2)).astype("float32"), np.ones((8, 1), "float32")
    captured = {}
    for jit_compile in (True, False):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5, 2)), keras.layers.RNN(MinimalRNNCell(4), name="rnn"), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
        watch = adaptgrad.watch(model, "rnn", through_time=True, stats=stats)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
        assert model.jit_compile is jit_compile and not [w for w in caught if str(w.message).startswith(FALLBACK)]
        captured[jit_compile] = watch.stats()
    assert (captured[True].batches, captured[True].count) == (2, 40)
    assert set(captured[True].fields) == (set(stats) if stats is not None else set(adaptgrad.stats.SUM_FIELDS))
    for field in captured[True].fields:
        np.testing.assert_allclose(getattr(captured[True], field), getattr(captured[False], field), rtol=1e-5, err_msg=field)
