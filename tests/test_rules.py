"""Adaptation rules: decisions on hand-made statistics, validation, schedules, state, configs, fit."""

from __future__ import annotations

import json
import math
import pathlib

import hydra.utils
import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

import adaptgrad
from adaptgrad import rules
from adaptgrad.cells import MinimalRNNCell
from adaptgrad.rules import (
    DormantReset,
    DropRegrow,
    GainRescale,
    NoOp,
    TaylorGateEMA,
    TaylorPrune,
    TrustRatio,
)
from adaptgrad.stats import SUM_FIELDS, OutputGradientStats

from reference import data

SIZE = 6
CONF_RULES = pathlib.Path(__file__).resolve().parents[1] / "conf" / "rule"
SHIPPED = {name: cls for name, cls in rules.REGISTRY.items() if cls.__module__.startswith("adaptgrad.rules.")}


# -- helpers -------------------------------------------------------------------------------------


def gru_view():
    """A built GRU(6) -> Dense(1) model and a unit view on the GRU."""
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.GRU(SIZE, name="rnn"), keras.layers.Dense(1, name="head")])
    return model, adaptgrad.unit_view(model, "rnn")


def make_stats(batches: int = 4, count: int = 40, **sums) -> OutputGradientStats:
    fields = {name: np.zeros(SIZE) for name in SUM_FIELDS}
    fields.update({k: np.asarray(v, dtype=np.float64) for k, v in sums.items()})
    return OutputGradientStats(**fields, batches=batches, count=count)


def weights(model) -> dict[str, np.ndarray]:
    """Weights by path without the model prefix: 'rnn/gru_cell/kernel', ..., 'head/kernel'."""
    return {v.path.split("/", 1)[1]: np.array(v.numpy()) for v in model.weights}


def run(rule, stats, units, epoch: int = 0):
    """What Adapt does around one rule: set the floor, clear the edits, apply, return the edits."""
    units.min_active = rule.min_active
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
    assert run(TaylorPrune(fraction=0.34), stats, units) == [("gate", 3), ("gate", 1)]  # round(0.34*6) = 2
    assert units.active.tolist() == [True, False, True, False, True, True]
    units.ungate([1, 3])  # gating zeroed the units' weights and saved them; ungating restores them exactly
    for path, array in weights(model).items():
        np.testing.assert_array_equal(array, before[path])

    model, units = gru_view()
    assert run(TaylorPrune(fraction=0.9, min_active=5), stats, units) == [("gate", 3)]
    assert int(units.active.sum()) == 5


def test_min_active_floor_for_every_gating_rule():
    stats = make_stats(act_grad_sum=np.arange(1.0, 7.0), act_grad_batch_sq_sum=np.arange(1.0, 7.0))
    for rule in [TaylorGateEMA(fraction=0.9, min_active=5), DropRegrow(fraction=0.9, end_epoch=5, min_active=5)]:
        keras.backend.clear_session()
        _, units = gru_view()
        assert run(rule, stats, units) == [("gate", 0)], rule
        assert int(units.active.sum()) == 5


# -- taylor_gate_ema -----------------------------------------------------------------------------


def test_taylor_gate_ema_scores_smoothing_and_state_over_two_calls():
    _, units = gru_view()
    rule = TaylorGateEMA(fraction=0.34, momentum=0.8)
    first = np.array([9.0, 1.0, 6.0, 4.0, 2.0, 8.0])  # sum_b (sum a*g)^2
    second = np.array([0.0, 50.0, 100.0, 0.5, 60.0, 90.0])
    assert run(rule, make_stats(batches=2, act_grad_batch_sq_sum=first), units) == [("gate", 1), ("gate", 4)]
    ema1 = first / 2
    np.testing.assert_allclose(rule.get_state()["ema"], ema1)

    state = json.loads(json.dumps(rule.get_state()))  # plain values: survives JSON
    restored = TaylorGateEMA(fraction=0.34, momentum=0.8)
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

    fresh = TaylorGateEMA()
    assert fresh.get_state() == {"ema": None}
    fresh.set_state({"ema": [1.0, 2.0]})
    with pytest.raises(ValueError, match="2 units"):
        fresh.apply(make_stats(act_grad_batch_sq_sum=first), units, 0)


# -- gain_rescale --------------------------------------------------------------------------------


def test_gain_rescale_scales_active_units_by_normalised_gain_step():
    model, units = gru_view()
    gate_by_hand(units, [2])
    batches = 4
    act_grad_sum = np.array([4.0, -2.0, 3.0, 0.0, 8.0, -1.0])
    batch_sq = np.array([4.0, 16.0, 9.0, 0.0, 16.0, 1.0])
    rule = GainRescale(lr=0.6, max_step=0.5)
    before = weights(model)
    edits = run(rule, make_stats(batches=batches, act_grad_sum=act_grad_sum, act_grad_batch_sq_sum=batch_sq), units)

    expected = np.ones(SIZE)
    for j in [0, 1, 4, 5]:  # unit 2 is gated, unit 3 has a zero step
        step = 0.6 * (act_grad_sum[j] / batches) / (math.sqrt(batch_sq[j] / batches) + 1e-8)
        expected[j] = math.exp(-min(max(step, -0.5), 0.5))
    assert expected[0] == pytest.approx(math.exp(-0.5))  # 0.6 * 1/1 clipped to 0.5
    assert expected[1] == pytest.approx(math.exp(0.15))
    assert edits == [("scale", 0), ("scale", 1), ("scale", 4), ("scale", 5)]
    np.testing.assert_allclose([e.value for e in units.edits], expected[[0, 1, 4, 5]])
    np.testing.assert_allclose(units.scales, expected)
    assert_scaled(before, weights(model), expected)


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
    edits = run(DormantReset(tau=0.35), stats, units)
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
    assert run(DormantReset(tau=0.35, score="activation", zero_outgoing=False), stats, units) == [("reinit", 4)]
    np.testing.assert_array_equal(weights(model)["head/kernel"], head)
    # no gradient at all over the active units: nothing can be judged, nothing happens
    assert run(DormantReset(tau=0.9), make_stats(), units) == []


# -- drop_regrow ---------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 1, 3, 5, 9, 10, 14])
def test_drop_regrow_cosine_schedule(epoch):
    expected = 0.3 / 2 * (1 + math.cos(math.pi * epoch / 10)) if epoch < 10 else 0.0
    assert DropRegrow.drop_fraction(epoch, fraction=0.3, end_epoch=10) == pytest.approx(expected, abs=1e-15)
    assert DropRegrow.drop_fraction(0, fraction=0.3, end_epoch=10) == pytest.approx(0.3)
    assert DropRegrow.drop_fraction(5, fraction=0.3, end_epoch=10) == pytest.approx(0.15)


def test_drop_regrow_drops_lowest_taylor_and_regrows_highest_rms_among_previously_gated():
    model, units = gru_view()
    gate_by_hand(units, [1, 3, 4])  # active: 0, 2, 5
    act_grad_sum = np.array([5.0, 9.0, 0.5, 9.0, 9.0, 0.2])  # lowest active Taylor: 5 then 2
    grad_sq_sum = np.array([1.0, 4.0, 99.0, 0.1, 9.0, 99.0])  # 2 and 5 (just dropped) have the highest
    stats = make_stats(count=10, act_grad_sum=act_grad_sum, grad_sq_sum=grad_sq_sum)
    # epoch 1 of 8: f = 0.45 * (1 + cos(pi/8)) = 0.866; n = round(0.866 * 3) = 3:
    # regrow all 3 of {1, 3, 4} (highest rms first), then drop the 3 previously active 5, 2, 0
    rule = DropRegrow(fraction=0.9, end_epoch=8)
    assert round(0.45 * (1 + math.cos(math.pi / 8)) * 3) == 3
    edits = run(rule, stats, units, epoch=1)
    assert edits[:3] == [("ungate", 4), ("ungate", 1), ("ungate", 3)]
    assert edits[3:6] == [("zero_outgoing", 4), ("zero_outgoing", 1), ("zero_outgoing", 3)]
    assert edits[6:] == [("gate", 5), ("gate", 2), ("gate", 0)]
    assert units.active.tolist() == [False, True, False, True, True, False]

    # a smaller step: 3 active (1, 3, 4), 3 gated; n = round(0.3 * 3) = 1
    keras.backend.clear_session()
    model, units = gru_view()
    gate_by_hand(units, [1, 3, 4])
    before = weights(model)
    rule = DropRegrow(fraction=0.3, end_epoch=10)
    assert run(rule, stats, units, epoch=0) == [("ungate", 4), ("zero_outgoing", 4), ("gate", 5)]
    assert units.active.tolist() == [True, False, True, False, True, False]
    after = weights(model)
    np.testing.assert_array_equal(after["head/kernel"][4], 0.0)  # regrown unit starts with no outgoing weight
    np.testing.assert_array_equal(after["head/kernel"][5], 0.0)  # a gated unit's outgoing weights are 0
    np.testing.assert_array_equal(np.delete(after["head/kernel"], [4, 5], 0), np.delete(before["head/kernel"], [4, 5], 0))
    assert units.scales.tolist() == [1.0] * SIZE


def test_drop_regrow_first_step_only_drops_and_stops_at_end_epoch():
    _, units = gru_view()
    stats = make_stats(count=10, act_grad_sum=np.array([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]), grad_sq_sum=np.ones(SIZE))
    rule = DropRegrow(fraction=0.3, end_epoch=4)
    assert run(rule, stats, units, epoch=0) == [("gate", 1), ("gate", 2)]  # round(0.3 * 6) = 2
    assert run(rule, stats, units, epoch=4) == []  # t >= T_end: f_t = 0
    assert run(rule, stats, units, epoch=3) == []  # round(0.0439 * 4) = 0
    # at the min_active floor a swap still happens (regrow before drop)
    rule = DropRegrow(fraction=0.5, end_epoch=4, min_active=4)
    assert run(rule, stats, units, epoch=0) == [
        ("ungate", 1), ("ungate", 2), ("zero_outgoing", 1), ("zero_outgoing", 2), ("gate", 0), ("gate", 5)
    ]  # n = round(0.5 * 4) = 2; rms ties -> by index; the floor (4) does not block a swap
    assert int(units.active.sum()) == 4


# -- trust_ratio ---------------------------------------------------------------------------------


def test_trust_ratio_scales_by_relative_radial_trust_ratio():
    model, units = gru_view()
    gate_by_hand(units, [4])
    norms = units.incoming_norms()
    batches, beta, power, max_factor = 5, 0.5, 0.5, 1.2
    act_grad_sum = np.array([1.0, 30.0, -4.0, 0.2, 7.0, -10.0])
    before = weights(model)
    rule = TrustRatio(beta=beta, power=power, max_factor=max_factor)
    edits = run(rule, make_stats(batches=batches, act_grad_sum=act_grad_sum), units)

    lam = np.array([n / (abs(s) / batches / n + beta * n) for s, n in zip(act_grad_sum, norms)])
    median = np.median(lam[[0, 1, 2, 3, 5]])
    expected = np.clip((median / lam) ** power, 1 / max_factor, max_factor)
    expected[4] = 1.0
    median_unit = [j for j in [0, 1, 2, 3, 5] if lam[j] == median]
    assert len(median_unit) == 1 and expected[median_unit[0]] == 1.0
    assert np.isclose(expected, max_factor).any() and np.isclose(expected, 1 / max_factor).any()  # both clips
    assert edits == [("scale", j) for j in range(SIZE) if expected[j] != 1.0]
    np.testing.assert_allclose(units.scales, expected, rtol=1e-12)
    assert_scaled(before, weights(model), expected)


def test_trust_ratio_factors_edge_cases():
    active = np.array([True, True, True, False])
    lam = TrustRatio.ratios(np.array([2.0, 0.0, 1.0, 1.0]), 1, np.array([1.0, 1.0, 0.0, 1.0]))
    assert lam[0] == 0.5 and math.isinf(lam[1]) and math.isnan(lam[2])  # zero weight norm: no ratio
    factors = TrustRatio.factors(np.array([1.0, 4.0, 0.25, 9.0]), active, power=1.0, max_factor=2.0)
    np.testing.assert_allclose(factors, [1.0, 0.5, 2.0, 1.0])  # clipped both ways; inactive unit alone
    factors = TrustRatio.factors(np.array([1.0, np.inf, 2.0, 1.0]), active, power=1.0, max_factor=3.0)
    np.testing.assert_allclose(factors, [2.0, 1 / 3, 1.0, 1.0])  # median 2; zero radial gradient: 1/max_factor
    np.testing.assert_array_equal(TrustRatio.factors(np.full(4, np.inf), active, power=0.1, max_factor=1.5), 1.0)
    np.testing.assert_array_equal(TrustRatio.factors(np.full(4, np.nan), active, power=0.1, max_factor=1.5), 1.0)

    model, units = gru_view()
    for variable, _, _ in units.weights:  # unit 2 has no incoming weight at all
        array = variable.numpy()
        array[..., units.columns(2, 3)] = 0.0
        variable.assign(array)
    run(TrustRatio(power=1.0), make_stats(act_grad_sum=np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), units)
    assert units.scales[2] == 1.0 and 2 not in [e.unit for e in units.edits]


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
    (DormantReset, {"score": "weights"}, "score='weights'.*'grad', 'activation'"),
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
    assert set(SHIPPED) == {"none", "taylor_prune", "taylor_gate_ema", "gain_rescale", "dormant_reset", "drop_regrow", "trust_ratio"}
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
    rule = hydra.utils.instantiate(cfg)
    cls = SHIPPED[path.stem]
    assert type(rule) is cls
    assert set(cfg) - {"_target_"} == set(rule.get_config())
    assert rule.get_config() == cls().get_config()  # the YAML holds the code's defaults


def test_every_shipped_rule_has_a_config():
    assert {p.stem for p in CONF_RULES.glob("*.yaml")} == set(SHIPPED)


# -- end to end ----------------------------------------------------------------------------------

END_TO_END = {  # name: (rule, cell, through_time, the actions it must record over 3 epochs)
    "none": (lambda: NoOp(), "simple", False, set()),
    "taylor_prune": (lambda: TaylorPrune(fraction=0.2), "gru", False, {"gate"}),
    "taylor_gate_ema": (lambda: TaylorGateEMA(fraction=0.2), "lstm", True, {"gate"}),
    "gain_rescale": (lambda: GainRescale(), "minimal", True, {"scale"}),
    "dormant_reset": (lambda: DormantReset(tau=0.9), "simple", False, {"reinit", "zero_outgoing"}),
    # epoch 0: drop round(0.3*6) = 2; epoch 1: swap round(0.225*4) = 1; epoch 2: round(0.075*4) = 0
    "drop_regrow": (lambda: DropRegrow(end_epoch=3), "gru", False, {"gate", "ungate", "zero_outgoing"}),
    "trust_ratio": (lambda: TrustRatio(), "minimal", True, {"scale"}),
}


def rnn(cell: str) -> keras.layers.Layer:
    if cell == "simple":
        return keras.layers.SimpleRNN(6, name="rnn")
    if cell == "gru":
        return keras.layers.GRU(6, name="rnn")
    if cell == "lstm":
        return keras.layers.LSTM(6, name="rnn")
    return keras.layers.RNN(MinimalRNNCell(6, kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal"), name="rnn")


@pytest.mark.parametrize("name", sorted(END_TO_END))
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
    # replaying the action table from a fresh layer gives the final unit state
    active, scales = np.ones(6, bool), np.ones(6)
    for row in actions.itertuples():
        if row.action == "gate":
            active[row.unit] = False
        elif row.action == "ungate":
            active[row.unit] = True
        elif row.action == "scale":
            scales[row.unit] *= row.value
        elif row.action == "reinit":
            scales[row.unit] = 1.0
    np.testing.assert_array_equal(adapt.units.active, active)
    np.testing.assert_allclose(adapt.units.scales, scales)
    last = adapt.units_frame().query("epoch == 2")
    np.testing.assert_array_equal(last.active.to_numpy(), active)
    assert history.history["active_units"][-1] == int(active.sum())
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(model(x))))
