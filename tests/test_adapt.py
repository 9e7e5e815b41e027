"""The Adapt callback (adaptgrad/adapt.py): its clocks (rules acting every N optimizer steps inside
fit, on the statistics of exactly the steps since they last acted, and epoch rules that leave
Keras's dispatch alone), its ages, tables and logs, its build-time checks and its atomic rules."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest
from keras.src.utils.python_utils import is_default

import adaptgrad
from adaptgrad.rules import AdaptationRule, DormantReset, DropRegrow, GainRescale, TaylorPrune, TrustRatio
from adaptgrad.rules.schedule import Moment
from adaptgrad.runtime import mirrored_strategy

from reference import add_up, assert_stats_equal, build, data, sgd_reference, small_model, twin, weights


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class Recorder(AdaptationRule):
    """Keeps every window it is given and records one exact no-op edit (a scale by 1) per action."""

    seen: list[tuple[int, Moment, Any]] = dataclasses.field(default_factory=list, init=False)

    def apply(self, stats, units, epoch, *, when=None):
        self.seen.append((epoch, when, stats))
        units.scale([0], 1.0)


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class GateFirst(AdaptationRule):
    """Gates unit 0 (once: then it is gated), written the way rules were before the step clock:
    no ``when``."""

    def apply(self, stats, units, epoch):
        units.gate([0])


def fitted(rules, *, samples, batch_size=2, epochs=2, steps_per_execution=1, through_time=True):
    """A GRU(4) model trained with SGD(0.1) in input order under an Adapt with ``rules``; returns
    (adapt, the independent per-batch reference statistics of the same training)."""
    model, ref = twin("functional", "gru", 4)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", steps_per_execution=steps_per_execution)
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=through_time), rules)
    x, y = data(samples)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, callbacks=[adapt])
    reference = sgd_reference(ref, x, y, batch_size=batch_size, epochs=epochs, through_time=through_time, per_batch=True)
    return adapt, reference


@pytest.mark.parametrize(
    "samples, execution, schedule, steps",
    [
        (16, 1, {"every_steps": 3, "start_step": 2, "stop_step": 14}, [2, 5, 8, 11, 14]),
        (16, 4, {"every_steps": 4}, [4, 8, 12, 16]),
        # 10 batches an epoch, executions of 4: boundaries 4 8 10 | 14 18 20; 12 and 16 fall inside
        (20, 4, {"every_steps": 4}, [4, 8, 14, 18, 20]),
    ],
    ids=["every_3_from_2", "steps_per_execution_4", "late_boundaries"],
)
def test_step_rule_acts_at_its_steps_on_the_statistics_of_exactly_those_steps(samples, execution, schedule, steps):
    rule = Recorder(**schedule)
    adapt, reference = fitted([rule], samples=samples, steps_per_execution=execution)
    per_epoch = samples // 2
    actions = adapt.actions_frame()
    assert actions.step.tolist() == steps
    assert actions.epoch.tolist() == [(step - 1) // per_epoch for step in steps]
    assert [when.step for _, when, _ in rule.seen] == steps
    assert [epoch for epoch, _, _ in rule.seen] == actions.epoch.tolist()
    for (_, when, stats), first, last in zip(rule.seen, [0, *steps], steps):
        assert when.unit == "step" and when.time == last
        assert_stats_equal(stats, add_up(reference[first:last]))  # batches first+1 .. last only
    assert adapt.units_frame().groupby("epoch").step.first().tolist() == [per_epoch, 2 * per_epoch]


@pytest.mark.parametrize("execution", [1, 4])
def test_the_batch_after_a_step_edit_sees_it(execution):
    """A unit gated at step 4 has no activity in the statistics of steps 5-8 (gated units output
    exactly 0), and had some before; the rule written without ``when`` works on the step clock."""
    recorder = Recorder(every_steps=4)
    adapt, _ = fitted([GateFirst(every_steps=4, stop_step=4), recorder], samples=16, epochs=1, steps_per_execution=execution)
    assert adapt.actions_frame().query("action == 'gate'")[["step", "unit"]].values.tolist() == [[4, 0]]
    (_, _, before), (_, _, after) = recorder.seen
    assert before.act_abs_sum[0] > 0 and after.act_abs_sum[0] == 0.0 and after.batches == 4
    assert np.all(after.act_abs_sum[1:] > 0)


def test_epoch_rule_every_two_epochs_reads_both_epochs_and_the_moment_has_ages_in_epochs():
    rule = Recorder(every=2, start_epoch=1)
    adapt, reference = fitted([rule], samples=8, epochs=4, through_time=False)
    assert [epoch for epoch, _, _ in rule.seen] == [1, 3]
    assert_stats_equal(rule.seen[1][2], add_up(reference[8:16]))  # epochs 2 and 3, 4 batches each
    when = rule.seen[0][1]
    assert (when.unit, when.epoch, when.step, when.time, when.age.tolist()) == ("epoch", 1, 8, 1, [2, 2, 2, 2])
    assert adapt.actions_frame().step.tolist() == [8, 16]


def test_step_ages_count_steps_since_a_unit_was_drawn():
    """DropRegrow on RigL's clock regrows units whose age on the step clock restarts at the swap."""
    recorder = Recorder(every_steps=2)
    rule = DropRegrow(fraction=0.5, every_steps=2, end_step=100, grace=0)
    adapt, _ = fitted([rule, recorder], samples=8, epochs=2)
    actions = adapt.actions_frame()
    assert set(actions.query("rule == 'drop_regrow'").action) >= {"gate", "ungate"}
    regrown = actions.query("action == 'ungate'").iloc[-1]
    last = recorder.seen[-1][1]
    assert last.step == 8 and last.age[regrown.unit] == 8 - regrown.step


def test_only_an_adapt_with_a_step_rule_has_a_per_batch_hook():
    """Keras keeps its asynchronous callback dispatch (on the backends that have it) unless a
    callback's per-batch hook is not the default one; ``is_default`` is the test Keras applies."""
    model, _ = twin("functional", "gru", 4)
    watch = adaptgrad.watch(model, "rnn", through_time=True)
    epochs_only = adaptgrad.Adapt(watch, [TaylorPrune(), Recorder(every=2)])
    assert all(is_default(getattr(epochs_only, hook)) for hook in ("on_batch_end", "on_train_batch_end", "on_train_batch_begin"))
    stepped = adaptgrad.Adapt(watch, [TaylorPrune(), Recorder(every_steps=10)], epochs_only.units)
    assert not is_default(stepped.on_train_batch_end)


def test_a_period_shorter_than_an_execution_is_refused_when_fit_starts():
    model, _ = twin("functional", "gru", 4)
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn"), [Recorder(every_steps=3)])
    with pytest.raises(ValueError, match=r"every_steps=3 is below the model's steps_per_execution=4.*every_steps >= 4"):
        model.fit(*data(8), batch_size=2, verbose=0, callbacks=[adapt])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every_steps": 0}, "every_steps=0 must be an integer >= 1"),
        ({"every_steps": 10, "every": 2}, "every_steps=10 puts the rule on the step clock, but .*every=2"),
        ({"start_step": 5}, "start_step=5, stop_step=None need every_steps"),
        ({"every_steps": 10, "start_step": 50, "stop_step": 20}, "stop_step=20 must be an integer >= 50"),
    ],
)
def test_bad_schedules_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recorder(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every_steps": 100}, "on the step clock .every_steps=100. the cosine decay needs end_step"),
        ({"end_step": 100}, "end_step=100 needs every_steps"),
    ],
)
def test_drop_regrow_end_is_in_the_unit_of_its_clock(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropRegrow(**kwargs)


def test_step_rule_under_mirrored_strategy_reads_what_one_device_reads():
    strategy = mirrored_strategy(("/cpu:0", "/cpu:1"))
    x, y = data(16)
    single, *_ = build("functional", "gru", 4)
    weights = single.get_weights()
    with strategy.scope():
        mirrored, *_ = build("functional", "gru", 4)
        mirrored.set_weights(weights)
    recorders = {}
    for name, model in (("single", single), ("mirrored", mirrored)):
        with model.distribute_strategy.scope():
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
            recorders[name] = Recorder(every_steps=2)
            adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=True), [GateFirst(every_steps=4), recorders[name]])
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[adapt])
        assert adapt.actions_frame().query("action == 'gate'")[["step", "unit"]].values.tolist() == [[4, 0]]
    got, want = recorders["mirrored"].seen, recorders["single"].seen
    assert [when.step for _, when, _ in got] == [when.step for _, when, _ in want] == [2, 4, 6, 8]
    for (_, _, mirrored_stats), (_, _, single_stats) in zip(got, want):
        assert_stats_equal(mirrored_stats, single_stats.as_dict())


def test_step_rule_under_mixed_precision_reads_its_steps_with_the_loss_scale_divided_out():
    x, y = data(6)
    full, ref = twin("functional", "gru", 4)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half, *_ = build("functional", "gru", 4)
        half.set_weights(full.get_weights())
        half.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        recorder = Recorder(every_steps=2)
        adapt = adaptgrad.Adapt(adaptgrad.watch(half, "rnn", through_time=True), [recorder])
        half.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0, callbacks=[adapt])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reference = sgd_reference(ref, x, y, batch_size=3, epochs=2, through_time=True, per_batch=True)
    assert [when.step for _, when, _ in recorder.seen] == [2, 4]
    for (_, _, stats), first in zip(recorder.seen, (0, 2)):
        assert_stats_equal(stats, add_up(reference[first : first + 2]), rtol=2e-2)  # float16 activations


# -- Adapt: ages, tables, logs, build-time checks, atomic rules ----------------------------------


def test_adapt_ticks_ages_before_rules_and_records_layer_and_age():
    model, x, y = small_model()
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=True), [DormantReset(tau=0.99, grace=0)])
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[adapt])
    units, actions = adapt.units_frame(), adapt.actions_frame()
    assert list(units.columns[:7]) == ["epoch", "step", "layer", "unit", "active", "age", "scale"]
    assert set(units.layer) == {"rnn"} and set(actions.layer) == {"rnn"}
    assert list(actions.columns) == ["epoch", "step", "layer", "rule", "action", "unit", "value"]
    reset = actions.query("action == 'reinit'")
    assert len(reset) > 0
    for epoch in range(3):  # a unit reset at epoch t has age 0 after it, every other unit one more than before
        frame = units.query("epoch == @epoch").set_index("unit").age
        previous = units.query("epoch == @epoch - 1").set_index("unit").age if epoch else pd.Series(0, index=frame.index)
        reset_now = set(reset.query("epoch == @epoch").unit)
        for unit, age in frame.items():
            assert age == (0 if unit in reset_now else previous[unit] + 1), (epoch, unit)


def test_two_adapts_on_one_model_log_their_own_layer_and_tables_concatenate():
    x, y = data(16)
    inputs = keras.Input(x.shape[1:])
    hidden = keras.layers.GRU(6, return_sequences=True, name="first")(inputs)
    hidden = keras.layers.GRU(6, name="second")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(y.shape[-1], name="head")(hidden))
    model.compile(optimizer="adam", loss="mse")
    first = adaptgrad.Adapt(adaptgrad.watch(model, "first", through_time=True), [TaylorPrune(fraction=0.2)])
    second = adaptgrad.Adapt(adaptgrad.watch(model, "second", through_time=True), [TaylorPrune(fraction=0.4)])
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[first, second]).history
    assert history["active_units/first"] == [5, 4] and history["active_units/second"] == [4, 3]
    assert "active_units" not in history  # ambiguous with two adapted layers
    actions = pd.concat([first.actions_frame(), second.actions_frame()])
    assert actions.groupby("layer").size().to_dict() == {"first": 2, "second": 3}

    del second  # once it is the only Adapt on the model, the plain key is back
    gc.collect()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[first]).history
    assert history["active_units"] == history["active_units/first"]


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class GateThenFail(AdaptationRule):
    """Gates unit 0, then raises (as a buggy rule would)."""

    def apply(self, stats, units, epoch):
        units.gate([0])
        raise RuntimeError("rule bug")


def test_a_rule_that_raises_leaves_the_layer_as_it_was_and_is_recorded():
    model, x, y = small_model()
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn"), [GateThenFail(start_epoch=1)])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[adapt])
    before = weights(model)
    with pytest.raises(RuntimeError, match="rule bug"):
        model.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0, callbacks=[adapt])
    assert adapt.units.active.all() and adapt.units.edits == []
    after = weights(model)
    assert not all(np.array_equal(after[p], before[p]) for p in before)  # epoch 1 trained...
    size = adapt.units.size
    kernel = after["rnn/gru_cell/kernel"][:, [0, size, 2 * size]]
    assert np.abs(kernel).sum() > 0  # ...and unit 0's weights were not left zeroed by the undone gate
    actions = adapt.actions_frame()
    assert actions[["epoch", "rule", "action", "unit"]].values.tolist() == [[1, "GateThenFail", "failed", -1]]


def test_requirements_are_checked_when_adapt_is_built():
    from adaptgrad.question import question_model, toy_data

    model = question_model(4)
    model(toy_data()[0])  # subclassed: the consumer of "minimalrnn" is unknown unless named
    for rule in [DropRegrow(), DormantReset(), GainRescale()]:
        probe = adaptgrad.watch(model, "minimalrnn", through_time=rule.edit in ("gate", "reinit"))  # output: the gain goes next
        with pytest.raises(ValueError, match=r"(?s)next_layer=.*Adapt"):
            adaptgrad.Adapt(probe, [rule])
        probe.remove()
    probe = adaptgrad.watch(model, "minimalrnn", through_time=True)
    adaptgrad.Adapt(probe, [DormantReset(zero_outgoing=False), GainRescale()], next_layer="out").units.remove()
    probe.remove()
    probe = adaptgrad.watch(model, "minimalrnn")
    adaptgrad.Adapt(probe, [TrustRatio()]).units.remove()  # incoming weights only: no next layer needed
    probe.remove()

    model, _, _ = small_model()
    with pytest.raises(ValueError, match=r"gain_rescale cannot use through-time capture.*through_time=False"):
        adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=True), [GainRescale()])

    model, _, _ = small_model()
    probe = adaptgrad.watch(model, "rnn", through_time=True, stats={"grad_sum"})
    with pytest.raises(ValueError, match=r"taylor_prune reads \['act_grad_example_abs_sum'\].*captures only \['grad_sum'\]"):
        adaptgrad.Adapt(probe, [TaylorPrune()])


def test_fit_with_an_adapt_traces_its_train_step_once():
    """The callback builds the optimizer when fit starts (Adam's slots would otherwise be made in
    the first trace, which TensorFlow then repeats)."""
    model, *_ = build("functional", cell="gru")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=True), [TaylorPrune(fraction=0.25)])
    traces, step = [], model.train_step
    model.train_step = lambda batch: (traces.append(1), step(batch))[1]
    x, y = data(8)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[adapt])
    assert len(traces) == 1 and model.optimizer.iterations.numpy() == 4
