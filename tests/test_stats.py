"""adaptgrad.stats: every derived mean against its definition, worked out by hand from the sums
(with ``count != batches`` and negative sums, so a mean over the wrong total or a lost sign
fails), and the sum of two snapshots against the snapshot of all their batches."""

from __future__ import annotations

import numpy as np
import pytest

from adaptgrad import OutputGradientStats

SUMS = dict(
    grad_sum=np.array([-6.0, 2.0, 0.0]),
    grad_abs_sum=np.array([12.0, 4.0, 1.0]),
    grad_sq_sum=np.array([36.0, 9.0, 0.25]),
    act_grad_sum=np.array([-3.0, 1.5, 0.0]),
    act_abs_sum=np.array([24.0, 0.0, 6.0]),
)


def test_every_derived_mean_is_its_definition_over_count_not_batches():
    stats = OutputGradientStats(batches=3, count=12, **SUMS)  # 3 batches of 4 positions
    want = {
        "mean_grad": np.array([-0.5, 2 / 12, 0.0]),  # signed
        "mean_abs_grad": np.array([1.0, 1 / 3, 1 / 12]),
        "rms_grad": np.array([np.sqrt(3.0), np.sqrt(0.75), np.sqrt(0.25 / 12)]),
        "taylor": np.array([0.25, 0.125, 0.0]),  # |sum H*G| / count: never negative
        "mean_abs_act": np.array([2.0, 0.0, 0.5]),
    }
    for name, expected in want.items():
        np.testing.assert_allclose(getattr(stats, name), expected, rtol=1e-15, err_msg=name)
    derived = {k: v for k, v in stats.as_dict().items() if k in want}
    assert derived.keys() == want.keys()
    for name, expected in want.items():
        np.testing.assert_allclose(derived[name], expected, rtol=1e-15, err_msg=name)


def test_means_of_no_position_are_zero():
    stats = OutputGradientStats(batches=0, count=0, **SUMS)
    for name in ("mean_grad", "mean_abs_grad", "rms_grad", "taylor", "mean_abs_act"):
        np.testing.assert_array_equal(getattr(stats, name), np.zeros(3), err_msg=name)


def test_two_snapshots_add_to_the_snapshot_of_all_their_batches():
    rng = np.random.default_rng(0)
    first = {name: rng.normal(size=3) for name in SUMS}
    second = {name: rng.normal(size=3) for name in SUMS}
    total = OutputGradientStats(batches=2, count=10, **first) + OutputGradientStats(batches=5, count=35, **second)
    assert (total.batches, total.count) == (7, 45)
    for name in SUMS:
        np.testing.assert_allclose(getattr(total, name), first[name] + second[name], rtol=1e-15, err_msg=name)
    np.testing.assert_allclose(total.mean_grad, (first["grad_sum"] + second["grad_sum"]) / 45, rtol=1e-15)


def test_finite_is_false_when_any_unit_of_any_sum_is_not():
    assert OutputGradientStats(batches=1, count=4, **SUMS).finite
    for bad in (np.nan, np.inf):
        sums = {**SUMS, "act_abs_sum": np.array([1.0, bad, 2.0])}
        assert not OutputGradientStats(batches=1, count=4, **sums).finite


def test_snapshots_are_read_only_copies():
    grad_sum = np.array([1.0, 2.0])
    stats = OutputGradientStats(batches=1, count=2, grad_sum=grad_sum)
    grad_sum[0] = 99.0
    assert stats.grad_sum[0] == 1.0
    with pytest.raises(ValueError):
        stats.grad_sum[0] = 5.0
    with pytest.raises(AttributeError, match="read-only"):
        stats.count = 3
