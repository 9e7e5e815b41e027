"""adaptgrad.criteria: each named criterion against its definition, evaluate() against numbers
worked out by hand, and the through-time Taylor terms against finite differences of the gating
edit in float64."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import adaptgrad
from adaptgrad import OutputGradientStats, _instrument
from adaptgrad.criteria import CRITERIA, evaluate, score

from reference import build, data

SUMS = dict(
    grad_sum=np.array([1.0, -2.0, 3.0]),
    grad_abs_sum=np.array([4.0, 2.0, 6.0]),
    grad_sq_sum=np.array([9.0, 4.0, 16.0]),
    act_grad_sum=np.array([-2.0, 1.0, 0.5]),
    act_grad_batch_sq_sum=np.array([8.0, 2.0, 4.0]),
    act_grad_example_sq_sum=np.array([6.0, 2.0, 10.0]),
    act_grad_example_abs_sum=np.array([4.0, 3.0, 2.0]),
    act_grad_fisher_sum=np.array([12.0, 0.0, 3.0]),
    act_abs_sum=np.array([8.0, 0.0, 4.0]),
)


def test_every_criterion_is_its_definition_with_batches_not_equal_to_count():
    stats = OutputGradientStats(batches=2, count=8, **SUMS)
    want = {
        "taylor": np.array([0.25, 0.125, 0.0625]),
        "taylor_batch_sq": np.array([4.0, 1.0, 2.0]),
        "taylor_example_sq": np.array([3.0, 1.0, 5.0]),
        "taylor_example_abs": np.array([2.0, 1.5, 1.0]),
        "taylor_fisher": np.abs((np.array([12.0, 0.0, 3.0]) / 2 - np.array([-2.0, 1.0, 0.5])) / 2),  # [4, 0.5, 0.5]
        "activation": np.array([1.0, 0.0, 0.5]),
        "grad_abs": np.array([0.5, 0.25, 0.75]),
        "grad_rms": np.sqrt([9 / 8, 4 / 8, 16 / 8]),
    }
    assert set(want) | {"random"} == set(CRITERIA)
    for name, expected in want.items():
        np.testing.assert_allclose(score(name, stats), expected, rtol=1e-15, err_msg=name)
        assert CRITERIA[name].reads <= stats.fields
        OutputGradientStats(batches=2, count=8, **{f: SUMS[f] for f in CRITERIA[name].reads})  # reads nothing else
        score(name, OutputGradientStats(batches=2, count=8, **{f: SUMS[f] for f in CRITERIA[name].reads}))


def test_random_criterion_repeats_for_the_same_window_and_changes_with_it():
    first = OutputGradientStats(batches=2, count=8, **SUMS)
    again = OutputGradientStats(batches=2, count=8, **SUMS)
    later = OutputGradientStats(batches=3, count=12, **SUMS)
    np.testing.assert_array_equal(score("random", first), score("random", again))
    assert not np.array_equal(score("random", first), score("random", later))
    draws = np.concatenate([score("random", OutputGradientStats(batches=b, count=b, units=50)) for b in range(1, 41)])
    assert 0 <= draws.min() and draws.max() < 1 and abs(draws.mean() - 0.5) < 0.03


def test_evaluate_by_hand():
    truth = np.array([0.30, -0.05, 0.02, 0.10, 0.01])
    scores = {"s": np.array([5.0, 1.0, 4.0, 3.0, 2.0])}  # picks (k=2): units 1 and 4
    row = evaluate(truth, scores, k=2).iloc[0]
    # ranks of |oracle| by unit: 5, 3, 2, 4, 1; of the scores: 5, 1, 4, 3, 2
    d = np.array([5, 3, 2, 4, 1]) - np.array([5, 1, 4, 3, 2])
    assert row.spearman == pytest.approx(1 - 6 * (d**2).sum() / (5 * 24))
    assert row.pearson == pytest.approx(np.corrcoef(scores["s"], np.abs(truth))[0, 1])
    assert row.overlap == 0.5  # smallest |oracle|: units 4, 2; picks 1, 4
    assert row.cost == pytest.approx(-0.05 + 0.01) and row.best_cost == pytest.approx(-0.05 + 0.01)
    assert np.isnan(row.cost_ratio)  # the best picks lower the loss: no ratio
    only = evaluate(truth, scores, k=2, candidates=np.array([True, False, True, True, True])).iloc[0]
    assert only.units == 4 and only.cost == pytest.approx(0.01 + 0.10)  # picks 4 and 3
    assert only.best_cost == pytest.approx(0.01 + 0.02) and only.cost_ratio == pytest.approx(0.11 / 0.03)


@pytest.mark.parametrize("cell", ["gru", "minimal"])
def test_through_time_taylor_terms_are_derivatives_of_gating_by_finite_differences(cell):
    """Shrink unit j to (1 - s) times itself at every step and in the recurrence (s = 1: gated).
    In float64, central differences of the loss in s give: dL/ds = -act_grad_sum_j, and per example
    n, dl_n/ds = -B e_n, so act_grad_example_abs_sum = sum_n |dl_n/ds| / B and act_grad_fisher_sum =
    sum_n (dl_n/ds)**2 / B (one batch of B examples)."""
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    try:
        keras.utils.set_random_seed(6)
        model, rnn, _ = build("functional", cell, 4)
        x, y = (part.astype(np.float64) for part in data(16, seed=4))
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # weights frozen while measuring
        watch = adaptgrad.watch(model, "rnn", through_time=True)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        stats = watch.stats()
        watch.remove()
        eps, examples = 1e-6, 16
        with _instrument.unit_mask(rnn, inside_recurrence=True) as slot:

            def losses(unit: int, s: float) -> np.ndarray:
                shrink = np.ones(4)
                shrink[unit] = 1.0 - s
                slot.mask = tf.constant(np.tile(shrink, (examples, 1)))
                return np.mean((np.asarray(model(x)) - y) ** 2, axis=-1)

            slopes = np.array([(losses(j, eps) - losses(j, -eps)) / (2 * eps) for j in range(4)])  # (units, examples)
        np.testing.assert_allclose(-slopes.mean(axis=1), stats.act_grad_sum, rtol=1e-6)
        np.testing.assert_allclose(np.abs(slopes).sum(axis=1) / examples, stats.act_grad_example_abs_sum, rtol=1e-6)
        np.testing.assert_allclose((slopes**2).sum(axis=1) / examples, stats.act_grad_fisher_sum, rtol=1e-6)
    finally:
        keras.config.set_floatx(previous)
