"""Adaptation rules: decisions on hand-made statistics, validation, schedules, state, configs, fit."""

from __future__ import annotations

import json
import math
import pathlib

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from cases import representative
from omegaconf import OmegaConf

import adaptgrad
from adaptgrad import rules
from adaptgrad.cells import MinimalRNNCell
from adaptgrad.config import build_rule
from adaptgrad.rules import (
    DormantReset,
    DropRegrow,
    GainRescale,
    NoOp,
    TaylorGateEMA,
    TaylorPrune,
    TrustRatio,
)
from adaptgrad.rules.fold import LayerKind
from adaptgrad.rules.scoring import scale_active
from adaptgrad.stats import SUM_FIELDS, OutputGradientStats

from reference import data, small_model, weights

SIZE = 6
CONF_RULES = pathlib.Path(__file__).resolve().parents[1] / "conf" / "rule"
SHIPPED = {name: cls for name, cls in rules.REGISTRY.items() if cls.__module__.startswith("adaptgrad.rules.")}


# -- helpers -------------------------------------------------------------------------------------


def gru_view(epochs: int = 4):
    """A built GRU(6) -> Dense(1) model and a unit view on the GRU whose units are ``epochs`` old
    (past the rules' default grace)."""
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.GRU(SIZE, name="rnn"), keras.layers.Dense(1, name="head")])
    units = adaptgrad.unit_view(model, "rnn")
    for _ in range(epochs):
        units.tick()
    return model, units


def checked(rule, model, units, through_time=False):
    """``rule`` after the build-time check Adapt runs, against a watch in the given mode."""
    probe = adaptgrad.watch(model, units.layer, through_time=through_time)
    rule.check(probe, units)
    probe.remove()
    return rule


def make_stats(batches: int = 4, count: int = 40, **sums) -> OutputGradientStats:
    fields = {name: np.zeros(SIZE) for name in SUM_FIELDS}
    fields.update({k: np.asarray(v, dtype=np.float64) for k, v in sums.items()})
    return OutputGradientStats(**fields, batches=batches, count=count)


def run(rule, stats, units, epoch: int = 0):
    """What Adapt does around one rule: set the floor, clear the edits, apply, return the edits."""
    units.min_active = rule.floor(units.size)
    units.edits.clear()
    rule.apply(stats, units, epoch)
    return [(e.action, e.unit) for e in units.edits]


def assert_scaled(before, after, factors):
    """GRU kernel / recurrent kernel / bias: column j of every gate block times factor j; the
    head untouched."""
    per_column = np.tile(factors, 3)  # columns j, j + 6, j + 12 belong to unit j
    for path, array in before.items():
        expected = array * per_column if path.startswith("rnn/") else array
        np.testing.assert_allclose(after[path], expected, rtol=1e-6, err_msg=path)


def gate_by_hand(units, gated):
    units.min_active = 1
    assert units.gate(gated) == list(gated)
    units.edits.clear()


# -- taylor_prune and the min_active floor -------------------------------------------------------


def test_taylor_prune_gates_lowest_normalised_taylor_and_respects_min_active():
    model, units = gru_view()
    act_grad_sum = np.array([0.5, -0.1, 2.0, 0.05, -3.0, 0.3])
    stats = make_stats(act_grad_sum=act_grad_sum)
    before = weights(model)
    assert run(TaylorPrune(fraction=0.34, criterion="taylor"), stats, units) == [("gate", 3), ("gate", 1)]  # round(0.34*6) = 2
    assert units.active.tolist() == [True, False, True, False, True, True]
    units.ungate([1, 3])  # gating zeroed the units' weights and saved them; ungating restores them exactly
    for path, array in weights(model).items():
        np.testing.assert_array_equal(array, before[path])

    model, units = gru_view()
    assert run(TaylorPrune(fraction=0.9, min_active=5, criterion="taylor"), stats, units) == [("gate", 3)]
    assert int(units.active.sum()) == 5


def test_min_active_floor_for_every_gating_rule():
    stats = make_stats(act_grad_sum=np.arange(1.0, 7.0), act_grad_batch_sq_sum=np.arange(1.0, 7.0))
    for rule in [
        TaylorGateEMA(fraction=0.9, min_active=5, criterion="taylor_batch_sq"),
        DropRegrow(fraction=0.9, end_epoch=5, min_active=5, criterion="taylor"),
    ]:
        keras.backend.clear_session(free_memory=False)
        _, units = gru_view()
        assert run(rule, stats, units) == [("gate", 0)], rule
        assert int(units.active.sum()) == 5


# -- taylor_gate_ema -----------------------------------------------------------------------------


def test_taylor_gate_ema_scores_smoothing_and_state_over_two_calls():
    _, units = gru_view()
    rule = TaylorGateEMA(fraction=0.34, momentum=0.8, criterion="taylor_batch_sq")
    first = np.array([9.0, 1.0, 6.0, 4.0, 2.0, 8.0])  # sum_b (sum a*g)^2
    second = np.array([0.0, 50.0, 100.0, 0.5, 60.0, 90.0])
    assert run(rule, make_stats(batches=2, act_grad_batch_sq_sum=first), units) == [("gate", 1), ("gate", 4)]
    ema1 = first / 2
    np.testing.assert_allclose(rule.get_state()["ema"], ema1)

    state = json.loads(json.dumps(rule.get_state()))  # plain values: survives JSON
    restored = TaylorGateEMA(fraction=0.34, momentum=0.8, criterion="taylor_batch_sq")
    restored.set_state(state)
    _, units_b = gru_view()
    gate_by_hand(units_b, [1, 4])

    ema2 = 0.8 * ema1 + 0.2 * second / 2  # [3.6, 5.4, 12.4, 1.65, 6.8, 12.2]
    # active: 0, 2, 3, 5; round(0.34 * 4) = 1 unit; the raw score would pick unit 0, the EMA picks 3
    assert int(np.argmin(np.where(units.active, ema2, np.inf))) == 3
    assert run(rule, make_stats(batches=2, act_grad_batch_sq_sum=second), units) == [("gate", 3)]
    np.testing.assert_allclose(rule.get_state()["ema"], ema2)
    assert run(restored, make_stats(batches=2, act_grad_batch_sq_sum=second), units_b) == [("gate", 3)]
    np.testing.assert_allclose(restored.get_state()["ema"], ema2)

    fresh = TaylorGateEMA(criterion="taylor_batch_sq")
    assert fresh.get_state() == {"ema": None}
    fresh.set_state({"ema": [1.0, 2.0]})
    with pytest.raises(ValueError, match="2 units"):
        fresh.apply(make_stats(act_grad_batch_sq_sum=first), units, 0)


# -- gain_rescale --------------------------------------------------------------------------------


def test_gain_rescale_scales_active_units_by_normalised_gain_step():
    """Output mode: the gain goes into the head's input rows; the GRU itself is untouched."""
    model, units = gru_view()
    gate_by_hand(units, [2])
    batches = 4
    act_grad_sum = np.array([4.0, -2.0, 3.0, 0.0, 8.0, -1.0])
    batch_sq = np.array([4.0, 16.0, 9.0, 0.0, 16.0, 1.0])
    rule = checked(GainRescale(lr=0.6, max_step=0.5), model, units)
    assert rule.fold == "outgoing"
    before = weights(model)
    edits = run(rule, make_stats(batches=batches, act_grad_sum=act_grad_sum, act_grad_batch_sq_sum=batch_sq), units)

    expected = np.ones(SIZE)
    for j in [0, 1, 4, 5]:  # unit 2 is gated, unit 3 has a zero step
        step = 0.6 * (act_grad_sum[j] / batches) / (math.sqrt(batch_sq[j] / batches) + 1e-8)
        expected[j] = math.exp(-min(max(step, -0.5), 0.5))
    assert expected[0] == pytest.approx(math.exp(-0.5))  # 0.6 * 1/1 clipped to 0.5
    assert expected[1] == pytest.approx(math.exp(0.15))
    assert edits == [("scale_outgoing", 0), ("scale_outgoing", 1), ("scale_outgoing", 4), ("scale_outgoing", 5)]
    np.testing.assert_allclose([e.value for e in units.edits], expected[[0, 1, 4, 5]])
    after = weights(model)
    for path, array in before.items():
        want = array * expected[:, None] if path == "head/kernel" else array
        np.testing.assert_allclose(after[path], want, rtol=1e-6, err_msg=path)
    np.testing.assert_allclose(units.scales, expected)  # the gain is the unit's, wherever it was folded


def test_gain_rescale_through_time_folds_into_incoming_weights_of_a_homogeneous_cell():
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.RNN(MinimalRNNCell(SIZE), name="rnn"), keras.layers.Dense(1)])
    units = adaptgrad.unit_view(model, "rnn")
    rule = checked(GainRescale(lr=0.2), model, units, through_time=True)
    assert rule.fold == "incoming"
    kernel = units.weights[0][0].numpy().copy()
    run(rule, make_stats(batches=1, act_grad_sum=np.full(SIZE, 1.0), act_grad_batch_sq_sum=np.full(SIZE, 1.0)), units)
    np.testing.assert_allclose(units.weights[0][0].numpy(), kernel * math.exp(-0.2), rtol=1e-6)
    np.testing.assert_allclose(units.scales, math.exp(-0.2))


def test_gain_rescale_refuses_through_time_capture_of_non_homogeneous_cells():
    model, units = gru_view()
    with pytest.raises(ValueError, match=r"through-time capture on layer 'rnn' \(GRUCell\).*through_time=False"):
        checked(GainRescale(), model, units, through_time=True)
    with pytest.raises(RuntimeError, match="call rule.check"):
        GainRescale().apply(make_stats(), units, 0)


# -- dormant_reset -------------------------------------------------------------------------------


def test_dormant_reset_reinitialises_units_below_tau_of_the_active_mean():
    model, units = gru_view()
    gate_by_hand(units, [5])
    units.scale([0], 2.0)
    units.edits.clear()
    grad_abs_sum = np.array([1.0, 20.0, 30.0, 5.0, 24.0, 0.0])
    stats = make_stats(count=10, grad_abs_sum=grad_abs_sum, act_abs_sum=np.array([9.0, 9.0, 9.0, 9.0, 0.1, 9.0]))
    before = weights(model)

    ratio = grad_abs_sum[:5] / grad_abs_sum[:5].mean()  # mean over active units 0..4 = 16
    assert np.flatnonzero(ratio <= 0.35).tolist() == [0, 3]
    edits = run(DormantReset(tau=0.35, criterion="grad_abs"), stats, units)
    assert edits == [("reinit", 0), ("reinit", 3), ("zero_outgoing", 0), ("zero_outgoing", 3)]
    assert units.scales.tolist() == [1.0] * SIZE  # reinit resets the cumulative scale
    assert units.active.tolist() == [True] * 5 + [False]

    after = weights(model)
    reset = [0, 3]
    owned = np.concatenate([np.array(reset) + SIZE * k for k in range(3)])
    kept = np.setdiff1d(np.arange(3 * SIZE), owned)
    for path in ["rnn/gru_cell/kernel", "rnn/gru_cell/recurrent_kernel"]:
        assert not np.allclose(after[path][:, owned], before[path][:, owned]), path  # fresh draws
    np.testing.assert_array_equal(after["rnn/gru_cell/bias"][:, owned], 0.0)  # GRU bias initialiser: zeros
    others = [r for r in range(SIZE) if r not in reset]
    for path in ["rnn/gru_cell/kernel", "rnn/gru_cell/bias"]:
        np.testing.assert_array_equal(after[path][:, kept], before[path][:, kept])
    recurrent_before, recurrent_after = before["rnn/gru_cell/recurrent_kernel"], after["rnn/gru_cell/recurrent_kernel"]
    np.testing.assert_array_equal(recurrent_after[np.ix_(others, kept)], recurrent_before[np.ix_(others, kept)])
    for unit in reset:  # outgoing recurrent row zero except the unit's own (fresh) columns
        not_own = np.setdiff1d(np.arange(3 * SIZE), unit + SIZE * np.arange(3))
        np.testing.assert_array_equal(recurrent_after[unit, not_own], 0.0)
    np.testing.assert_array_equal(after["head/kernel"][reset], 0.0)
    np.testing.assert_array_equal(after["head/kernel"][others], before["head/kernel"][others])

    # ReDo's activity score picks unit 4 instead; zero_outgoing=False leaves the head alone
    head = after["head/kernel"].copy()
    assert run(DormantReset(tau=0.35, criterion="activation", zero_outgoing=False), stats, units) == [("reinit", 4)]
    np.testing.assert_array_equal(weights(model)["head/kernel"], head)
    # no gradient at all over the active units: nothing can be judged, nothing happens
    assert run(DormantReset(tau=0.9), make_stats(), units) == []


# -- drop_regrow ---------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 1, 3, 5, 9, 10, 14])
def test_drop_regrow_cosine_schedule(epoch):
    expected = 0.3 / 2 * (1 + math.cos(math.pi * epoch / 10)) if epoch < 10 else 0.0
    assert DropRegrow.drop_fraction(epoch, fraction=0.3, end=10) == pytest.approx(expected, abs=1e-15)
    assert DropRegrow.drop_fraction(0, fraction=0.3, end=10) == pytest.approx(0.3)
    assert DropRegrow.drop_fraction(5, fraction=0.3, end=10) == pytest.approx(0.15)


def fitted_drop_regrow(rule, gated):
    """``gru_view``'s model with ``gated`` units gated and ``rule`` checked (its growth statistic
    attached), after one epoch of SGD(0) on random data (the weights stay put)."""
    model, units = gru_view()
    gate_by_hand(units, gated)
    rule = checked(rule, model, units, through_time=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 4, 2)), rng.normal(size=(8, 1)), batch_size=4, verbose=0)
    return model, units, rule


def test_drop_regrow_drops_lowest_taylor_and_regrows_highest_regrowth_score_among_previously_gated():
    act_grad_sum = np.array([5.0, 9.0, 0.5, 9.0, 9.0, 0.2])  # lowest active Taylor: 5 then 2
    stats = make_stats(count=10, act_grad_sum=act_grad_sum)
    # epoch 1 of 8: f = 0.45 * (1 + cos(pi/8)) = 0.866; n = round(0.866 * 3) = 3:
    # regrow all 3 of {1, 3, 4} (highest score first), then drop the 3 previously active 5, 2, 0
    model, units, rule = fitted_drop_regrow(DropRegrow(fraction=0.9, end_epoch=8, criterion="taylor"), [1, 3, 4])
    scores = rule.regrowth_scores(units)
    assert np.all(scores[[1, 3, 4]] > 0) and np.all(scores[[0, 2, 5]] == 0)
    order = [int(u) for u in np.array([1, 3, 4])[np.argsort(-scores[[1, 3, 4]], kind="stable")]]
    assert round(0.45 * (1 + math.cos(math.pi / 8)) * 3) == 3
    edits = run(rule, stats, units, epoch=1)
    assert edits[:3] == [("ungate", u) for u in order]
    assert edits[3:6] == [("zero_outgoing", u) for u in order]
    assert edits[6:] == [("gate", 5), ("gate", 2), ("gate", 0)]
    assert units.active.tolist() == [False, True, False, True, True, False]

    # a smaller step: 3 active (1, 3, 4), 3 gated; n = round(0.3 * 3) = 1
    keras.backend.clear_session(free_memory=False)
    model, units, rule = fitted_drop_regrow(DropRegrow(fraction=0.3, end_epoch=10, criterion="taylor"), [1, 3, 4])
    best = int(np.argmax(rule.regrowth_scores(units)))
    before = weights(model)
    assert run(rule, stats, units, epoch=0) == [("ungate", best), ("zero_outgoing", best), ("gate", 5)]
    after = weights(model)
    np.testing.assert_array_equal(after["head/kernel"][best], 0.0)  # regrown unit starts with no outgoing weight
    np.testing.assert_array_equal(after["head/kernel"][5], 0.0)  # a gated unit's outgoing weights are 0
    kept = [u for u in range(SIZE) if u not in (best, 5)]
    np.testing.assert_array_equal(after["head/kernel"][kept], before["head/kernel"][kept])
    assert units.scales.tolist() == [1.0] * SIZE


def test_drop_regrow_score_is_the_revived_units_outgoing_gradient():
    """In a linear Dense layer the first-order score is exact: a tape on the revived unit's outgoing weights."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, name="h"), keras.layers.Dense(2, name="head")])
    units = adaptgrad.unit_view(model, "h")
    units.gate([1, 3])
    rule = checked(DropRegrow(), model, units)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False)
    scores = rule.regrowth_scores(units)
    units.ungate([1, 3], zero_outgoing=True)
    head = model.get_layer("head")
    reference = 0.0
    for start in (0, 4):
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(y[start : start + 4], model(x[start : start + 4]))
        reference = reference + tape.gradient(loss, head.kernel).numpy().astype(np.float64)
    np.testing.assert_allclose(scores[[1, 3]], np.linalg.norm(reference[[1, 3]], axis=1), rtol=1e-5)
    assert np.all(scores[[1, 3]] > 0) and np.all(scores[[0, 2, 4]] == 0)


def test_drop_regrow_first_step_only_drops_and_stops_at_end_epoch():
    _, units = gru_view()
    stats = make_stats(count=10, act_grad_sum=np.array([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]), grad_sq_sum=np.ones(SIZE))
    rule = DropRegrow(fraction=0.3, end_epoch=4, criterion="taylor")
    assert run(rule, stats, units, epoch=0) == [("gate", 1), ("gate", 2)]  # round(0.3 * 6) = 2
    assert run(rule, stats, units, epoch=4) == []  # t >= T_end: f_t = 0
    assert run(rule, stats, units, epoch=3) == []  # round(0.0439 * 4) = 0
    # at the min_active floor a swap still happens (regrow before drop)
    keras.backend.clear_session(free_memory=False)
    _, units, rule = fitted_drop_regrow(DropRegrow(fraction=0.5, end_epoch=4, min_active=4, criterion="taylor"), [1, 2])
    scores = rule.regrowth_scores(units)
    order = [1, 2] if scores[1] >= scores[2] else [2, 1]
    regrown = [("ungate", u) for u in order] + [("zero_outgoing", u) for u in order]
    # n = round(0.5 * 4) = 2; the floor (4) does not block a swap
    assert run(rule, stats, units, epoch=0) == [*regrown, ("gate", 0), ("gate", 5)]
    assert int(units.active.sum()) == 4


# -- trust_ratio ---------------------------------------------------------------------------------


def test_trust_ratio_scales_incoming_weights_by_relative_lars_ratio():
    """W_j are unit j's incoming weights (all three GRU gate blocks), in either capture mode."""
    model, units = gru_view()
    gate_by_hand(units, [4])
    units.scale(np.arange(SIZE), 1.0 + 0.4 * np.arange(SIZE))  # distinct weight norms
    units.edits.clear()
    norms = units.incoming_norms()
    batches, beta, power, max_factor = 5, 0.5, 0.5, 1.2
    weight_grad_sq_sum = np.array([1.0, 30.0, 4.0, 0.2, 7.0, 10.0])
    before = weights(model)
    rule = checked(TrustRatio(beta=beta, power=power, max_factor=max_factor), model, units, through_time=True)
    edits = run(rule, make_stats(batches=batches, weight_grad_sq_sum=weight_grad_sq_sum), units)

    lam = np.array([n / (math.sqrt(q / batches) + beta * n) for q, n in zip(weight_grad_sq_sum, norms)])
    active = [0, 1, 2, 3, 5]  # unit 4 is gated: norm 0, no ratio
    expected = np.ones(SIZE)
    expected[active] = np.clip((np.median(lam[active]) / lam[active]) ** power, 1 / max_factor, max_factor)
    assert np.isclose(expected, max_factor).any() and np.isclose(expected, 1 / max_factor).any()  # both clips
    assert edits == [("scale", j) for j in range(SIZE) if expected[j] != 1.0]
    np.testing.assert_allclose([e.value for e in units.edits], expected[expected != 1.0], rtol=1e-6)
    assert_scaled(before, weights(model), expected)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def lars_reference(layer: str, epochs: int, beta: float):
    """(trust_ratio's lambda after each epoch of fit, LARS's lambda from tape gradients of a twin
    model trained by hand on the same batches): digits, 256 examples, batches of 32, Adam."""
    from adaptgrad.data import digits

    from reference import unit_norms_sq

    dataset = digits(seed=0)
    x, y = dataset.x_train[:256].astype(np.float32), dataset.y_train[:256]
    if layer == "dense":
        x = x.reshape(len(x), -1)

    def make() -> keras.Model:
        keras.utils.set_random_seed(0)
        hidden = keras.layers.Dense(16, activation="tanh", name="rnn") if layer == "dense" else rnn(layer, units=16)
        return keras.Sequential([keras.Input(x.shape[1:]), hidden, keras.layers.Dense(10, name="head")])

    model, twin = make(), make()
    twin.set_weights(model.get_weights())
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss=loss)
    probe = adaptgrad.watch(model, "rnn", stats=TrustRatio.reads)
    units = adaptgrad.unit_view(model, "rnn")
    optimizer = keras.optimizers.Adam(0.005)
    own = [i for i, v in enumerate(twin.trainable_variables) if any(v is w for w in twin.get_layer("rnn").weights)]
    got, want = [], []
    for _ in range(epochs):
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        stats = probe.stats()
        got.append(TrustRatio.ratios(stats.weight_grad_sq_sum, stats.batches, units.incoming_norms(), beta=beta))
        squares = np.zeros(16)
        for start in range(0, len(x), 32):
            with tf.GradientTape() as tape:
                batch_loss = loss(y[start : start + 32], twin(x[start : start + 32], training=True))
            grads = tape.gradient(batch_loss, twin.trainable_variables)
            squares += unit_norms_sq([grads[i].numpy() for i in own], 16)
            optimizer.apply_gradients(zip(grads, twin.trainable_variables))
        norm = np.sqrt(unit_norms_sq([twin.trainable_variables[i].numpy() for i in own], 16))
        want.append(norm / (np.sqrt(squares / stats.batches) + beta * norm))
        probe.reset()
    return np.array(got), np.array(want)


@pytest.mark.parametrize("layer", representative(["dense", "gru", "lstm", "simple", "minimal"], "dense", "gru"))
def test_trust_ratio_is_lars_ratio_from_the_true_weight_gradient_of_fit(layer):
    got, want = lars_reference(layer, epochs=2, beta=0.01)
    assert want.max() / want.min() > 1.5  # units differ: ranks mean something
    for epoch_got, epoch_want in zip(got, want):
        assert spearman(epoch_got, epoch_want) >= 0.99
        np.testing.assert_allclose(epoch_got, epoch_want, rtol=1e-5)


def test_trust_ratio_factors_edge_cases():
    active = np.array([True, True, True, False])
    lam = TrustRatio.ratios(np.array([4.0, 0.0, 1.0, 1.0]), 1, np.array([1.0, 1.0, 0.0, 1.0]))
    assert lam[0] == 0.5 and math.isinf(lam[1]) and math.isnan(lam[2])  # zero weight norm: no ratio
    factors = TrustRatio.factors(np.array([1.0, 4.0, 0.25, 9.0]), active, power=1.0, max_factor=2.0)
    np.testing.assert_allclose(factors, [1.0, 0.5, 2.0, 1.0])  # clipped both ways; inactive unit alone
    factors = TrustRatio.factors(np.array([1.0, np.inf, 2.0, 1.0]), active, power=1.0, max_factor=3.0)
    np.testing.assert_allclose(factors, [2.0, 1 / 3, 1.0, 1.0])  # median 2; zero gradient: 1/max_factor
    np.testing.assert_array_equal(TrustRatio.factors(np.full(4, np.inf), active, power=0.1, max_factor=1.5), 1.0)
    np.testing.assert_array_equal(TrustRatio.factors(np.full(4, np.nan), active, power=0.1, max_factor=1.5), 1.0)

    model, units = gru_view()
    units.scale([2], 0.0)  # unit 2 has no incoming weight at all
    units.edits.clear()
    rule = checked(TrustRatio(power=1.0), model, units)
    run(rule, make_stats(weight_grad_sq_sum=np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), units)
    assert 2 not in [e.unit for e in units.edits]


# -- validation, registry, configs ---------------------------------------------------------------

BAD_ARGS = [
    (TaylorPrune, {"fraction": 1.0}, "fraction=1.0"),
    (TaylorGateEMA, {"fraction": 0.0}, "fraction=0.0"),
    (TaylorGateEMA, {"momentum": 1.0}, r"momentum=1\.0.*\[0\.0, 1\.0\)"),
    (TaylorGateEMA, {"min_active": 0}, "min_active=0"),
    (GainRescale, {"lr": 0.0}, r"lr=0\.0.*\(0\.0, inf\)"),
    (GainRescale, {"lr": float("nan")}, "lr=nan"),
    (GainRescale, {"eps": -1.0}, "eps=-1.0"),
    (GainRescale, {"max_step": -0.1}, "max_step=-0.1"),
    (DormantReset, {"tau": 1.0}, r"tau=1\.0.*\[0\.0, 1\.0\)"),
    (DormantReset, {"tau": -0.1}, "tau=-0.1"),
    (DormantReset, {"criterion": "weights"}, "unknown criterion 'weights'; valid: 'taylor'.*'activation'"),
    (DormantReset, {"zero_outgoing": "yes"}, "zero_outgoing='yes'"),
    (DropRegrow, {"fraction": 1.5}, "fraction=1.5"),
    (DropRegrow, {"end_epoch": 0}, "end_epoch=0"),
    (DropRegrow, {"end_epoch": 2.5}, "end_epoch=2.5"),
    (DropRegrow, {"end_epoch": None}, "end_epoch=None"),
    (DropRegrow, {"every": 0}, "every=0"),
    (TrustRatio, {"c": 0.0}, "c=0.0"),
    (TrustRatio, {"beta": -1.0}, "beta=-1.0"),
    (TrustRatio, {"power": 0.0}, r"power=0\.0.*\(0\.0, 1\.0\]"),
    (TrustRatio, {"power": 1.5}, "power=1.5"),
    (TrustRatio, {"max_factor": 1.0}, "max_factor=1.0"),
    (TaylorPrune, {"max_sparsity": 0.0}, r"max_sparsity=0\.0.*\(0\.0, 1\.0\]"),
    (TaylorGateEMA, {"max_sparsity": 1.5}, "max_sparsity=1.5"),
    (DormantReset, {"grace": -1}, "grace=-1 must be an integer >= 0"),
    (DropRegrow, {"grace": 1.5}, "grace=1.5"),
    (TaylorPrune, {"start_epoch": -1}, "start_epoch=-1"),
    (TaylorPrune, {"stop_epoch": 0, "start_epoch": 2}, "stop_epoch=0 must be an integer >= 2"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD_ARGS, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD_ARGS])
def test_bad_arguments_raise_value_error_naming_the_value(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_arguments_are_keyword_only():
    for cls in SHIPPED.values():
        with pytest.raises(TypeError):
            cls(0.5)


def test_get_builds_every_registered_rule_and_lists_names_of_unknown():
    assert set(SHIPPED) == {
        "none",
        "random_gate",
        "taylor_prune",
        "taylor_gate_ema",
        "gain_rescale",
        "dormant_reset",
        "drop_regrow",
        "gradmax",
        "trust_ratio",
    }
    for name, cls in SHIPPED.items():
        rule = rules.get(name)
        assert type(rule) is cls and rule.label == name
        assert type(rules.get(name, **rule.get_config())) is cls
    assert rules.get("trust_ratio", power=0.5).power == 0.5
    with pytest.raises(ValueError, match="unknown rule 'nope'.*dormant_reset.*trust_ratio"):
        rules.get("nope")


@pytest.mark.parametrize("path", sorted(CONF_RULES.glob("*.yaml")), ids=lambda p: p.stem)
def test_rule_config_instantiates_with_every_default(path):
    assert path.read_text().startswith("# "), "first line: a comment naming the rule and its source"
    cfg = OmegaConf.load(path)
    assert "name" not in cfg
    rule = build_rule(cfg, path.stem)
    cls = SHIPPED[path.stem]
    assert type(rule) is cls
    assert set(cfg) - {"_target_"} == set(rule.get_config())
    assert rule.get_config() == cls().get_config()  # the YAML holds the code's defaults


def test_every_shipped_rule_has_a_config():
    assert {p.stem for p in CONF_RULES.glob("*.yaml")} == set(SHIPPED)


# -- end to end ----------------------------------------------------------------------------------

END_TO_END = {  # name: (rule, cell, through_time, the actions it must record over 3 epochs)
    "none": (lambda: NoOp(), "simple", False, set()),
    "taylor_prune": (lambda: TaylorPrune(fraction=0.2), "gru", True, {"gate"}),
    "taylor_gate_ema": (lambda: TaylorGateEMA(fraction=0.2), "lstm", True, {"gate"}),
    "gain_rescale": (lambda: GainRescale(), "gru", False, {"scale_outgoing"}),  # through time: scale
    "dormant_reset": (lambda: DormantReset(tau=0.9, grace=1), "simple", True, {"reinit", "zero_outgoing"}),
    # epoch 0: drop round(0.3*6) = 2; epoch 1: swap round(0.225*4) = 1; epoch 2: round(0.075*4) = 0
    "drop_regrow": (lambda: DropRegrow(end_epoch=3, grace=0), "gru", True, {"gate", "ungate", "zero_outgoing"}),
    "trust_ratio": (lambda: TrustRatio(), "gru", True, {"scale"}),
}


def rnn(cell: str, name: str = "rnn", units: int = SIZE) -> keras.layers.Layer:
    if cell == "simple":
        return keras.layers.SimpleRNN(units, name=name)
    if cell == "gru":
        return keras.layers.GRU(units, name=name)
    if cell == "lstm":
        return keras.layers.LSTM(units, name=name)
    cell = MinimalRNNCell(units, kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal")
    return keras.layers.RNN(cell, name=name)


# none: every other; taylor_prune: test_default_pruning_run_keeps_at_least_half_the_units;
# taylor_gate_ema: test_taylor_gate_ema_scores_smoothing_and_state_over_two_calls (its scores) and
# the drop_regrow case here (the same gating through the same Adapt, through time);
# gain_rescale and trust_ratio: test_gain_statistic_is_the_derivative_of_the_rules_own_edit and
# test_trust_ratio_is_lars_ratio_from_the_true_weight_gradient_of_fit
@pytest.mark.parametrize("name", representative(sorted(END_TO_END), "dormant_reset", "drop_regrow"))
def test_end_to_end_fit(name):
    make_rule, cell, through_time, expected_actions = END_TO_END[name]
    x, y = data(32)
    model = keras.Sequential([keras.Input(x.shape[1:]), rnn(cell), keras.layers.Dense(y.shape[-1], name="head")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rule = make_rule()
    probe = adaptgrad.watch(model, "rnn", through_time=through_time)
    adapt = adaptgrad.Adapt(probe, [rule])
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[adapt])

    assert np.all(np.isfinite(history.history["loss"]))
    actions = adapt.actions_frame()
    assert set(actions.action) == expected_actions, actions
    assert set(actions.rule) <= {name}
    # replaying the action table from a fresh layer gives the final unit state; a unit's scale is its
    # gain in its incoming weights (new after reinit) times its gain in the next layer's rows (zeroed)
    active, incoming, outgoing = np.ones(6, bool), np.ones(6), np.ones(6)
    for row in actions.itertuples():
        if row.action in ("gate", "ungate"):
            active[row.unit] = row.action == "ungate"
        elif row.action in ("scale", "scale_outgoing"):
            (incoming if row.action == "scale" else outgoing)[row.unit] *= row.value
        else:
            assert row.action in ("reinit", "zero_outgoing"), row
            (incoming if row.action == "reinit" else outgoing)[row.unit] = 1.0
    np.testing.assert_array_equal(adapt.units.active, active)
    np.testing.assert_allclose(adapt.units.scales, incoming * outgoing)
    last = adapt.units_frame().query("epoch == 2")
    np.testing.assert_array_equal(last.active.to_numpy(), active)
    np.testing.assert_allclose(last.scale.to_numpy(), incoming * outgoing)  # units.parquet's scale column
    assert history.history["active_units"][-1] == int(active.sum())
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(model(x))))


def test_every_rule_declares_what_it_reads_and_runs_on_exactly_that():
    rng = np.random.default_rng(0)
    for name, cls in SHIPPED.items():
        assert cls().reads <= set(SUM_FIELDS), name
        keras.backend.clear_session(free_memory=False)
        model, units = gru_view()
        rule = checked(cls(), model, units, through_time=bool(cls().through_time(LayerKind.of(units.layer))))
        only = OutputGradientStats(batches=4, count=40, units=SIZE, **{f: rng.random(SIZE) for f in cls().reads})
        run(rule, only, units)  # reading any other field would raise


# -- grace: the failures, reproduced and gone -----------------------------------------------


def test_grace_protects_new_units():
    """A unit at most ``grace`` epochs old is neither dropped nor reset, however low its score."""
    _, units = gru_view()
    units.reinit([0])  # age 0, like a unit just reset or regrown
    units.edits.clear()
    low_first = make_stats(act_grad_sum=np.arange(SIZE) + 0.0, act_abs_sum=np.array([0.0, 0.1, 9, 9, 9, 9]))
    rule = DropRegrow(fraction=0.3, end_epoch=10, grace=1, criterion="taylor")
    assert run(rule, low_first, units) == [("gate", 1), ("gate", 2)]  # unit 0 is the lowest but new
    units.tick()
    assert run(DormantReset(tau=0.1, grace=1, criterion="activation"), low_first, units) == []  # unit 0 (age 1): not judged
    units.tick()
    assert run(DormantReset(tau=0.1, grace=1, zero_outgoing=False, criterion="activation"), low_first, units) == [("reinit", 0)]


SCENARIO_STEPS = 10


def scenario(cell: str, rule, *, epochs: int, units: int = 16, samples: int = 256, seed: int = 0):
    """Issue #10's setting: ``cell`` (16 units) -> Dense(1), through-time capture, Adam 0.01, 256
    sequences of 10 steps (target: 0.3 * sum of feature 0 + last value of feature 1), batches of 32."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, SCENARIO_STEPS, 2)).astype("float32")
    y = (0.3 * x[:, :, 0].sum(1) + x[:, -1, 1])[:, None].astype("float32")
    model = keras.Sequential([keras.Input(x.shape[1:]), rnn(cell, "rnn", units), keras.layers.Dense(1, name="head")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rules = rule if isinstance(rule, list) else [rule]
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=True, stats=set().union(*(r.reads for r in rules))), rules)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[adapt], shuffle=False)
    return adapt.actions_frame()


def soonest_repeat(actions, first: str, then: str) -> list[int]:
    """For each ``first`` action (epoch t, unit u): epochs until the next ``then`` action on u."""
    delays = []
    for row in actions.query("action == @first").itertuples():
        later = actions.query("action == @then and unit == @row.unit and epoch > @row.epoch").epoch
        if len(later):
            delays.append(int(later.min()) - row.epoch)
    return delays


@pytest.mark.slow  # faster twins: test_grace_protects_new_units, test_grace_holds_on_real_runs
def test_drop_regrow_without_grace_drops_regrown_units_at_once_and_grace_stops_it():
    rule = dict(fraction=0.3, end_epoch=8)
    ungrace = scenario("gru", DropRegrow(**rule, grace=0), epochs=6)
    regrown = ungrace.query("action == 'ungate'")
    assert len(regrown) >= 6 and soonest_repeat(ungrace, "ungate", "gate").count(1) >= len(regrown) // 2  # the failure
    graced = scenario("gru", DropRegrow(**rule), epochs=6)
    assert len(graced.query("action == 'gate'")) > 0
    assert all(delay > DropRegrow().grace for delay in soonest_repeat(graced, "ungate", "gate"))


@pytest.mark.slow  # faster twins: test_grace_protects_new_units, test_grace_holds_on_real_runs
def test_dormant_reset_grad_score_without_grace_loops_and_the_defaults_do_not():
    looping = scenario("gru", DormantReset(tau=0.3, criterion="grad_abs", grace=0), epochs=6)
    per_unit = looping.query("action == 'reinit'").unit.value_counts()
    assert per_unit.max() == 6  # one unit re-initialised at every epoch: the failure
    for rule in [DormantReset(tau=0.3, criterion="grad_abs"), DormantReset(tau=0.3)]:
        actions = scenario("gru", rule, epochs=6)
        assert all(delay > rule.grace for delay in soonest_repeat(actions, "reinit", "reinit")), rule


@pytest.mark.parametrize("cell", representative(["gru", "lstm", "minimal"], "gru"))
def test_grace_holds_on_real_runs(cell):
    """Both rules on one layer, a small grace so that they act often: the property, read from the table."""
    drop, reset = DropRegrow(fraction=0.5, end_epoch=8, grace=1), DormantReset(tau=0.5, criterion="grad_abs", grace=1)
    actions = scenario(cell, [drop, reset], epochs=6, units=8, samples=64)
    assert len(actions.query("action == 'ungate'")) > 0 and len(actions.query("action == 'reinit'")) > 0
    assert all(delay > drop.grace for delay in soonest_repeat(actions, "ungate", "gate"))
    assert all(delay > reset.grace for delay in soonest_repeat(actions, "reinit", "reinit"))


# -- scaling rules: the statistic is the derivative of the edit -------------------------------------


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.mixed_precision.set_global_policy("float32")


def gain_derivative(cell: str, through_time: bool, *, units: int = 12, eps: float = 1e-4):
    """(the watch's act_grad_sum, a central finite difference of the batch loss under the rule's own
    edit of each unit's log gain), on one batch of 32 sequences of 10 steps, learning rate 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 10, 2))
    y = (0.3 * x[:, :, 0].sum(1) + x[:, -1, 1])[:, None]
    model = keras.Sequential([keras.Input(x.shape[1:]), rnn(cell, "rnn", units), keras.layers.Dense(1, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    probe = adaptgrad.watch(model, "rnn", through_time=through_time)
    view = adaptgrad.unit_view(model, "rnn")
    rule = GainRescale()
    rule.check(probe, view)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    statistic = probe.stats().act_grad_sum

    def loss_with_gain(unit: int, log_gain: float) -> float:
        saved = [w.numpy() for w in model.weights]
        factors = np.ones(units)
        factors[unit] = math.exp(log_gain)
        scale_active(view, factors, outgoing=rule.fold == "outgoing")  # what the rule does
        loss = float(np.mean((keras.ops.convert_to_numpy(model(x)) - y) ** 2))
        for weight, value in zip(model.weights, saved):
            weight.assign(value)
        return loss

    finite = [(loss_with_gain(j, eps) - loss_with_gain(j, -eps)) / (2 * eps) for j in range(units)]
    return statistic, np.array(finite)


@pytest.mark.parametrize(
    "cell, through_time",
    representative([("minimal", True), ("minimal", False), ("gru", False), ("lstm", False)], ("minimal", True), ("gru", False)),
)
def test_gain_statistic_is_the_derivative_of_the_rules_own_edit(float64, cell, through_time):
    statistic, finite = gain_derivative(cell, through_time)
    assert np.abs(finite).max() > 1e-3
    np.testing.assert_allclose(statistic, finite, rtol=1e-3)


@pytest.mark.parametrize(
    "cell, through_time", representative([("minimal", True), ("minimal", False), ("gru", False)], ("minimal", True))
)
def test_gain_rescale_step_lowers_the_loss_of_its_batch(float64, cell, through_time):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 10, 2))
    y = (0.3 * x[:, :, 0].sum(1) + x[:, -1, 1])[:, None]
    model = keras.Sequential([keras.Input(x.shape[1:]), rnn(cell, "rnn", 12), keras.layers.Dense(1, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=through_time), [GainRescale(lr=0.05)])
    before = model.evaluate(x, y, batch_size=32, verbose=0)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=[adapt])
    assert len(adapt.actions_frame()) > 0
    assert model.evaluate(x, y, batch_size=32, verbose=0) < before


# -- safe defaults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", representative(["taylor_prune", "taylor_gate_ema"], "taylor_prune"))
def test_default_pruning_run_keeps_at_least_half_the_units(tmp_path, rule):
    from adaptgrad.composition import compose
    from adaptgrad.run import run as run_job

    overrides = [f"rule={rule}", "data=toy", "model.units=8", "trainer.epochs=20", "trainer.checkpoint=false"]
    result = run_job(compose(overrides), tmp_path, rule_preset=rule)
    assert result["status"] == "ok", result
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.active_units.min() == 4 and history.active_units.iloc[-1] == 4  # the floor, reached and held


def test_a_rule_that_removes_units_refuses_statistics_of_another_edit():
    """Output-mode statistics of a recurrent layer describe zeroing its last output, not gating."""
    for rule in [TaylorPrune(), TaylorGateEMA(), DropRegrow(), DormantReset()]:
        keras.backend.clear_session(free_memory=False)
        model, _, _ = small_model()
        probe = adaptgrad.watch(model, "rnn")
        with pytest.raises(ValueError, match=rf"{rule.label} needs statistics captured through time.*through_time=True"):
            adaptgrad.Adapt(probe, [rule])
        probe.remove()
        assert rule.through_time(LayerKind.of(model.get_layer("rnn"))) is True
        assert rule.through_time(LayerKind.of(model.get_layer("head"))) is None  # a Dense layer: its output is the unit


def test_each_rule_scores_units_by_its_criterion():
    stats = make_stats(
        count=20,
        act_grad_sum=np.array([1.0, -4.0, 2.0, 0.0, 3.0, -1.0]),
        act_grad_example_abs_sum=np.array([4.0, 8.0, 2.0, 6.0, 10.0, 12.0]),
        act_grad_batch_sq_sum=np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        act_abs_sum=np.array([2.0, 4.0, 6.0, 8.0, 10.0, 12.0]),
    )
    per_batch = np.array([4.0, 8.0, 2.0, 6.0, 10.0, 12.0]) / 4  # taylor_example_abs: sum_n |sum_t a*g| / batches
    for rule in [TaylorPrune(), TaylorGateEMA(criterion="taylor_example_abs"), DropRegrow()]:
        np.testing.assert_array_equal(rule.score(stats, None), per_batch)
    np.testing.assert_array_equal(TaylorPrune(criterion="taylor").score(stats, None), np.abs(stats.act_grad_sum) / 20)
    np.testing.assert_array_equal(TaylorGateEMA(criterion="taylor_batch_sq").score(stats, None), np.arange(1.0, 7.0) / 4)
    np.testing.assert_array_equal(DormantReset().score(stats, None), per_batch)
    np.testing.assert_array_equal(DormantReset(criterion="activation").score(stats, None), np.arange(2.0, 13.0, 2.0) / 20)
    with pytest.raises(NotImplementedError, match="gain_rescale ranks no units"):
        GainRescale().score(stats, None)


def test_dormant_reset_counts_a_unit_exactly_at_tau_as_dormant():
    scores = np.array([0.5, 1.0, 1.5])  # the active mean is 1: ratios 0.5, 1, 1.5
    active = np.ones(3, dtype=bool)
    assert rules.DormantReset.dormant(scores, active, tau=0.5) == [0]  # r_j <= tau, as documented
    assert rules.DormantReset.dormant(scores, active, tau=0.25) == []
    assert rules.DormantReset.dormant(scores, np.array([True, True, False]), tau=0.75) == [0]  # mean of 0.5, 1


def test_schedule_fires_at_start_plus_multiples_of_every_up_to_stop_inclusive():
    from adaptgrad.rules.schedule import Schedule

    for every, start, stop in [(1, 0, None), (2, 1, 5), (3, 2, 11), (4, 0, 8)]:
        schedule = Schedule("epoch", every=every, start=start, stop=stop)
        want = {start + k * every for k in range(60) if stop is None or start + k * every <= stop}
        assert {t for t in range(40) if schedule.fires(t - 1, t)} == {t for t in want if t < 40}, (every, start, stop)
    steps = Schedule("step", every=30, start=60, stop=120)  # a boundary may pass several steps at once
    windows = [(0, 59), (0, 60), (60, 89), (61, 90), (90, 120), (119, 150), (120, 200)]
    assert [steps.fires(a, b) for a, b in windows] == [False, True, False, True, True, True, False]


def test_scoring_counts_round_to_nearest_and_regrowth_ties_go_to_the_oldest_unit():
    from adaptgrad.rules.scoring import highest, lowest_active

    scores = np.arange(8.0)[::-1]  # unit 7 lowest
    assert lowest_active(scores, np.ones(8, dtype=bool), 0.35) == [7, 6, 5]  # round(0.35 * 8) = 3
    assert lowest_active(scores, np.ones(8, dtype=bool), 0.01) == [7]  # at least one
    tied = np.array([1.0, 5.0, 5.0, 5.0])
    assert highest(tied, np.array([1, 2, 3]), 2, ties=np.array([0, 1, 7, 3])) == [2, 3]  # gated longest ago first
    assert highest(tied, np.array([1, 2, 3]), 2) == [1, 2]  # then by index
