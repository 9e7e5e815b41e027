"""Unit surgery: a gated unit is exactly 0 at every step and stays so; edits touch only its slices."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from cases import representative

import adaptgrad
import adaptgrad.slots
from adaptgrad.cells import MinimalRNNCell

from reference import Subclassed, data

LAYERS = {
    "dense": None,  # built in sequence_model: Dense acts on the last axis of every step
    "simple_rnn": lambda: keras.layers.SimpleRNN(5, return_sequences=True, name="layer"),
    "gru": lambda: keras.layers.GRU(5, return_sequences=True, name="layer"),
    "lstm": lambda: keras.layers.LSTM(5, return_sequences=True, name="layer"),
    "rnn_simple_cell": lambda: keras.layers.RNN(keras.layers.SimpleRNNCell(5), return_sequences=True, name="layer"),
    "rnn_gru_cell": lambda: keras.layers.RNN(keras.layers.GRUCell(5), return_sequences=True, name="layer"),
    "rnn_lstm_cell": lambda: keras.layers.RNN(keras.layers.LSTMCell(5), return_sequences=True, name="layer"),
    "rnn_minimal_cell": lambda: keras.layers.RNN(MinimalRNNCell(5), return_sequences=True, name="layer"),
}
OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.05),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
}


def sequence_model(kind: str) -> keras.Model:
    """Input (6, 3) -> the layer under test (every step's output) -> Dense(2) on each step."""
    if kind == "dense":
        layer = keras.layers.Dense(5, activation="relu", name="layer")  # Dense acts on the last axis
    else:
        layer = LAYERS[kind]()
    return keras.Sequential([keras.Input((6, 3)), layer, keras.layers.Dense(2, name="head")])


def incoming(units: adaptgrad.UnitView, unit: int) -> list[np.ndarray]:
    return [np.array(v.numpy()[..., units.columns(unit, blocks)]) for v, blocks, _ in units.weights]


@pytest.mark.parametrize(
    "kind, optimizer",
    representative([(k, o) for k in sorted(LAYERS) for o in sorted(OPTIMIZERS)], ("gru", "adam")),
)
def test_gated_unit_is_exactly_zero_and_stays_zero_then_learns_again(kind, optimizer):
    model = sequence_model(kind)
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss="mse")
    x, y = data(32, return_sequences=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # optimizer slots exist and are non-zero
    units = adaptgrad.unit_view(model, "layer")
    layer = model.get_layer("layer")
    assert units.gate([1]) == [1]
    frozen, others = incoming(units, 1), incoming(units, 2)

    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    outputs = keras.ops.convert_to_numpy(layer(x))
    assert np.all(outputs[..., 1] == 0.0), "gated unit must output exactly 0 at every step"
    assert np.all(np.abs(outputs[..., [0, 2, 3, 4]]).max(axis=(0, 1)) > 0)
    for before, after in zip(frozen, incoming(units, 1)):
        np.testing.assert_array_equal(before, after)  # no optimizer state moves a gated unit
    assert any(not np.array_equal(b, a) for b, a in zip(others, incoming(units, 2))), "other units learn"

    assert units.ungate([1]) == [1]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.abs(keras.ops.convert_to_numpy(layer(x))[..., 1]).max() > 0
    assert any(not np.array_equal(b, a) for b, a in zip(frozen, incoming(units, 1))), "ungated unit learns again"


@pytest.mark.parametrize("kind", representative(["dense", "gru", "lstm", "rnn_minimal_cell"], "dense", "lstm"))
def test_scale_changes_exactly_the_units_incoming_slices(kind):
    model = sequence_model(kind)
    units = adaptgrad.unit_view(model, "layer")
    before = [v.numpy().copy() for v in model.weights]
    units.scale([3], 2.5)
    changed = np.zeros(sum(b.size for b in before), bool)
    offset = 0
    for b, v in zip(before, model.weights):
        after = v.numpy()
        owned = next((blocks for w, blocks, _ in units.weights if w is v), None)
        expected = b.copy()
        if owned is not None:
            expected[..., units.columns(3, owned)] *= 2.5
        np.testing.assert_allclose(after, expected, rtol=1e-7, err_msg=v.path)
        changed[offset : offset + b.size] = (after != b).ravel()
        offset += b.size
    assert changed.any()
    np.testing.assert_array_equal(units.scales, [1, 1, 1, 2.5, 1])


def fitted_lstm() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """An LSTM sequence model fitted one epoch with Adam, so its optimizer slots are non-zero; its data."""
    model = sequence_model("lstm")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, y = data(16, return_sequences=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, x, y


def test_reinit_draws_fresh_slices_resets_slots_and_zeroes_outgoing():
    model, x, y = fitted_lstm()
    units = adaptgrad.unit_view(model, "layer")
    cell = model.get_layer("layer").cell
    head_kernel = model.get_layer("head").kernel
    kernel_before = cell.kernel.numpy().copy()
    recurrent_before = cell.recurrent_kernel.numpy().copy()
    units.reinit([2], zero_outgoing=True)
    cols = units.columns(2, 4)
    other = np.setdiff1d(np.arange(20), cols)
    assert not np.array_equal(cell.kernel.numpy()[:, cols], kernel_before[:, cols])
    np.testing.assert_array_equal(cell.kernel.numpy()[:, other], kernel_before[:, other])
    np.testing.assert_array_equal(cell.bias.numpy()[cols], [0.0, 1.0, 0.0, 0.0])  # unit_forget_bias
    np.testing.assert_array_equal(head_kernel.numpy()[2], 0.0)
    # recurrent row 2 is outgoing (to other units) except the unit's own columns
    np.testing.assert_array_equal(cell.recurrent_kernel.numpy()[2, other], 0.0)
    np.testing.assert_array_equal(cell.recurrent_kernel.numpy()[[0, 1, 3, 4]][:, other], recurrent_before[[0, 1, 3, 4]][:, other])
    for _, slot, _ in adaptgrad.slots.slots_of(model.optimizer, cell.kernel):
        assert np.all(slot.numpy()[:, cols] == 0) and np.any(slot.numpy()[:, other] != 0)
    assert [e.action for e in units.edits] == ["reinit", "zero_outgoing"]


def test_min_active_floor_and_bad_unit_index():
    model = sequence_model("gru")
    units = adaptgrad.unit_view(model, "layer")
    units.min_active = 2
    assert units.gate([0, 1, 2, 3, 4]) == [0, 1, 2]
    assert units.active.sum() == 2
    with pytest.raises(ValueError, match=r"unit indices \[7\] out of range.*5 units"):
        units.gate([7])
    for fractional in ([1.7], [0.5, 2.0], 1.2, [True]):
        with pytest.raises(ValueError, match="unit indices must be integers"):
            units.gate(fractional)
    assert units.active.tolist() == [False, False, False, True, True]  # none of those gated anything
    assert units.ungate(np.array([1.0])) == [1]  # a whole number held as a float is that unit


def test_unsupported_layer_type_is_named():
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.Conv1D(4, 2, name="conv"), keras.layers.Dense(1)])
    with pytest.raises(TypeError, match="'conv' \\(Conv1D\\).*supported: Dense, SimpleRNN"):
        adaptgrad.unit_view(model, "conv")


def test_unbuilt_subclassed_model_needs_a_build_and_next_layer_is_explicit():
    from adaptgrad.question import question_model, toy_data

    model = question_model()
    with pytest.raises(ValueError, match="not built yet"):
        adaptgrad.unit_view(model, "minimalrnn")
    model(toy_data()[0])
    units = adaptgrad.unit_view(model, "minimalrnn")
    with pytest.raises(ValueError, match="pass next_layer"):
        units.zero_outgoing([0])
    units.remove()
    units = adaptgrad.unit_view(model, "minimalrnn", next_layer="out")
    units.zero_outgoing([0])
    np.testing.assert_array_equal(model.out.kernel.numpy()[0], 0.0)


class ScaledTanhCell(keras.layers.Layer):
    """A user's own cell that opts in through the adaptgrad_unit_weights protocol."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = self.state_size = self.output_size = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.u = self.add_weight(shape=(self.units, self.units), initializer="orthogonal")

    def call(self, inputs, states):
        h = keras.ops.tanh(inputs @ self.w + states[0] @ self.u)
        return h, [h]

    def adaptgrad_unit_weights(self):
        return [(self.w, 1, keras.initializers.GlorotUniform()), (self.u, 1, keras.initializers.Orthogonal())]


@pytest.mark.parametrize("through_time", representative([False, True], True))
def test_user_cell_protocol_and_a_watch_on_the_same_layer(through_time):
    rnn = keras.layers.RNN(ScaledTanhCell(4), return_sequences=True, name="rnn")
    model = Subclassed(rnn, keras.layers.Dense(2, name="head"))
    x, y = data(16, return_sequences=True)
    model(x)
    model.compile(optimizer="adam", loss="mse")
    units = adaptgrad.unit_view(model, "rnn", next_layer="head")
    w = adaptgrad.watch(model, "rnn", through_time=through_time)
    units.gate([0])
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    stats = w.stats()
    assert stats.act_abs_sum[0] == 0.0 and np.all(stats.act_abs_sum[1:] > 0)
    assert np.all(keras.ops.convert_to_numpy(rnn(x))[..., 0] == 0.0)


def assert_same_state(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys() and actual["saved"].keys() == expected["saved"].keys()
    for key in expected:
        if key != "saved":
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    for unit, arrays in expected["saved"].items():
        for a, b in zip(actual["saved"][unit], arrays, strict=True):
            np.testing.assert_array_equal(a, b)


def test_age_counts_epochs_since_a_unit_was_made_new_gated_or_ungated_and_travels_with_the_state():
    model = sequence_model("gru")
    units = adaptgrad.unit_view(model, "layer")
    np.testing.assert_array_equal(units.age, 0)
    units.tick()
    units.tick()
    units.reinit([1])
    units.gate([3])  # a gated unit's age counts the epochs it has been gated (regrowth: gated longest ago first)
    units.tick()
    np.testing.assert_array_equal(units.age, [3, 1, 3, 1, 3])
    units.ungate([3])
    np.testing.assert_array_equal(units.age, [3, 1, 3, 0, 3])
    assert units.age.dtype == np.int64
    state = units.get_state()
    units.tick()
    units.set_state(state)
    np.testing.assert_array_equal(units.age, [3, 1, 3, 0, 3])
    units.age[0] = 99  # a copy
    assert units.age[0] == 3


def test_scales_are_each_units_gain_wherever_it_was_folded_and_travel_with_the_state():
    """``scales`` is the factor between the weights now and the weights the unit's gains went into:
    incoming slices times the head's row, each forgotten when those weights are made new."""
    model = sequence_model("gru")
    units = adaptgrad.unit_view(model, "layer")
    head = model.get_layer("head").kernel
    first_in, first_head = [incoming(units, j) for j in range(5)], head.numpy().copy()

    def gains() -> np.ndarray:  # measured from the weights: incoming ratio times outgoing ratio
        measured = []
        for j in range(5):
            ratio_in = incoming(units, j)[0] / first_in[j][0]  # the kernel (the GRU's bias starts at 0)
            ratio_out = head.numpy()[j] / first_head[j]
            assert np.ptp(ratio_in) < 1e-5 and np.ptp(ratio_out) < 1e-5
            measured.append(ratio_in.flat[0] * ratio_out.flat[0])
        return np.array(measured)

    units.scale([0, 1], [2.0, 0.5])
    units.scale_outgoing([1, 2, 2], [3.0, 0.25, 2.0])
    np.testing.assert_allclose(units.scales, [2.0, 1.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(gains(), units.scales, rtol=1e-6)
    units.gate([1])
    units.scale_outgoing([1], 2.0)  # a gated unit's saved rows
    units.ungate([1])
    np.testing.assert_allclose(units.scales, [2.0, 3.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(gains(), units.scales, rtol=1e-6)

    state = units.get_state()
    units.reinit([1])  # fresh incoming weights: only the head's gain is left
    units.zero_outgoing([2])  # no row left to carry a gain: only the incoming one
    np.testing.assert_allclose(units.scales, [2.0, 6.0, 1.0, 1.0, 1.0])
    units.gate([0])
    units.ungate([0], zero_outgoing=True)
    np.testing.assert_allclose(units.scales, [2.0, 6.0, 1.0, 1.0, 1.0])
    units.set_state(state)
    np.testing.assert_allclose(units.scales, [2.0, 3.0, 0.5, 1.0, 1.0])
    units.set_state({**state, "scales": np.array([2.0, 1.0, 1.0, 1.0, 4.0])})  # a state saved before the outgoing gain
    np.testing.assert_allclose(units.scales, [2.0, 1.0, 1.0, 1.0, 4.0])


def test_transaction_undoes_every_change_of_a_failed_block_and_re_raises():
    model, x, y = fitted_lstm()
    units = adaptgrad.unit_view(model, "layer")
    units.gate([4])
    units.tick()
    everything = [*model.weights, *model.optimizer.variables]
    before = [np.array(v.numpy()) for v in everything]
    state, edits = units.get_state(), list(units.edits)

    with pytest.raises(RuntimeError, match="rule failed"):
        with units.transaction():
            units.scale([0], 3.0)
            units.reinit([1, 2], zero_outgoing=True)
            units.ungate([4])
            units.gate([0])
            units.tick()
            raise RuntimeError("rule failed")

    for variable, value in zip(everything, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert_same_state(units.get_state(), state)
    assert units.edits == edits
    # the draw counter was restored: the next reinit draws what the failed one drew
    with units.transaction():
        units.reinit([1])
    assert [e.action for e in units.edits[-1:]] == ["reinit"]
    assert units.get_state()["draws"] == state["draws"] + 1


def snapshot(layer: keras.layers.Layer) -> dict:
    """Every attribute of the layer, its cell and its weights, by identity."""
    owners = {"layer": layer, "cell": getattr(layer, "cell", None)}
    state = {f"{name}.{key}": id(value) for name, owner in owners.items() if owner for key, value in vars(owner).items()}
    state.update({f"{w.path}.constraint": id(w.constraint) for w in layer.weights})
    return state


@pytest.mark.parametrize("kind", representative(["gru", "lstm"], "gru"))
def test_watch_and_unit_view_keep_the_fast_kernel_and_remove_leaves_the_layer_as_it_was(kind):
    model = sequence_model(kind)
    model.compile(optimizer="adam", loss="mse")
    layer = model.get_layer("layer")
    x, y = data(16, return_sequences=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # Keras's own bookkeeping settles
    before = snapshot(layer)
    w = adaptgrad.watch(model, "layer")
    units = adaptgrad.unit_view(model, "layer")
    units.gate([0])
    assert layer.use_cudnn == "auto"
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert layer.use_cudnn == "auto"
    units.remove()
    w.remove()
    after = snapshot(layer)
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert not changed, changed
    assert units.active.all()


def test_gating_and_ungating_in_any_order_restores_shared_recurrent_entries_exactly():
    model = sequence_model("gru")
    units = adaptgrad.unit_view(model, "layer")
    before = [np.array(w.numpy()) for w in model.weights]
    x, _ = data(4, return_sequences=True)
    units.gate([3])
    units.gate([1])  # recurrent entries (1, column of 3) and (3, column of 1) belong to both units
    units.ungate([3])
    for variable, blocks, _ in units.weights:
        np.testing.assert_array_equal(variable.numpy()[..., units.columns(1, blocks)], 0.0)
    assert np.all(keras.ops.convert_to_numpy(model.get_layer("layer")(x))[..., 1] == 0.0)
    units.ungate([1])
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


def test_nested_transactions_each_undo_their_own_block():
    model, _, _ = fitted_lstm()
    units = adaptgrad.unit_view(model, "layer")
    everything = [*model.weights, *model.optimizer.variables]
    before = [np.array(v.numpy()) for v in model.weights]
    with units.transaction():
        units.gate([0])
        after_outer_edit = [np.array(v.numpy()) for v in everything]
        with pytest.raises(RuntimeError, match="inner"):
            with units.transaction():
                units.scale([0, 1], 2.0)  # also the gated unit's saved weights
                units.gate([1])
                raise RuntimeError("inner")
        for variable, value in zip(everything, after_outer_edit):
            np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
        assert units.active.tolist() == [False, True, True, True, True]
    with pytest.raises(RuntimeError, match="outer"):
        with units.transaction():
            units.ungate([0])
            with units.transaction():
                units.reinit([2], zero_outgoing=True)
            raise RuntimeError("outer")
    assert units.active.tolist() == [False, True, True, True, True]
    units.ungate([0])  # with the weights it had when gated, unscaled
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


def test_reinit_that_cannot_zero_outgoing_weights_changes_nothing():
    from adaptgrad.question import question_model, toy_data

    model = question_model(3)
    model(toy_data()[0])
    units = adaptgrad.unit_view(model, "minimalrnn")  # subclassed: the next layer is unknown
    before = [np.array(v.numpy()) for v in model.weights]
    with pytest.raises(ValueError, match="cannot zero outgoing weights.*pass next_layer"):
        units.reinit([1], zero_outgoing=True)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert units.edits == [] and units.get_state()["draws"] == 0


def test_edits_between_and_inside_fits_do_not_trace_the_train_step_again():
    """The gate's mask and the weights are variables the compiled step reads: an edit is seen at
    the next batch without a new trace (a trace costs seconds, far over the 2 % bar of issue 20)."""
    from adaptgrad.rules import TaylorGateEMA

    model = sequence_model("gru")
    model.compile(optimizer="adam", loss="mse")
    traces = []
    train_step = model.train_step
    model.train_step = lambda data: traces.append(1) or train_step(data)
    x, y = data(32, return_sequences=True)
    watch = adaptgrad.watch(model, "layer", through_time=True, stats=("act_grad_sum",))
    adapt = adaptgrad.Adapt(watch, [TaylorGateEMA(fraction=0.2, max_sparsity=0.6, criterion="taylor", every_steps=2)])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[adapt])
    traced = len(traces)
    units = adapt.units
    units.ungate([int(np.flatnonzero(~units.active)[0])])
    units.scale([0], 1.5)
    units.scale_outgoing([1], 0.5)
    units.reinit([2], zero_outgoing=True)
    units.grow(np.flatnonzero(~units.active)[:1], lambda unit, variable, index: 0.1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[adapt])
    actions = adapt.actions_frame()
    assert set(actions[actions.action == "gate"].step) == {2, 4, 6, 8}
    assert len(traces) == traced


def test_fresh_draws_differ_between_units_and_calls_and_a_restored_view_continues_them():
    def view() -> adaptgrad.UnitView:
        keras.utils.set_random_seed(3)
        return adaptgrad.unit_view(sequence_model("gru"), "layer", seed=7)

    units = view()
    units.reinit([1, 3])
    first = {unit: incoming(units, unit) for unit in (1, 3)}
    for a, b in zip(first[1][:2], first[3][:2], strict=True):  # two units drawn together get different kernels
        assert not np.array_equal(a, b)  # (the bias is drawn as zeros for every unit)
    state = units.get_state()
    units.reinit([1])
    second = incoming(units, 1)
    assert all(not np.array_equal(a, b) for a, b in zip(first[1][:2], second[:2], strict=True))  # each call draws anew

    restored = view()  # a resumed job: a new model and view, then the state of the checkpoint
    restored.set_state(state)
    restored.reinit([1])
    for a, b in zip(incoming(restored, 1), second, strict=True):  # the draw the uninterrupted view made
        np.testing.assert_array_equal(a, b)


def test_units_loaded_gated_and_ungated_together_get_different_fresh_weights():
    keras.utils.set_random_seed(3)
    model = sequence_model("gru")
    cell = model.get_layer("layer").cell
    columns = np.concatenate([unit + 5 * np.arange(3) for unit in (1, 3)])
    for variable in (cell.kernel, cell.recurrent_kernel, cell.bias):
        values = variable.numpy()
        values[..., columns] = 0.0
        variable.assign(values)  # as a model saved without its gates' config loads: weights 0, unknown
    units = adaptgrad.unit_view(model, "layer")
    assert units.active.tolist() == [True, False, True, False, True]
    assert units.ungate([1, 3]) == [1, 3]
    kernels = {unit: incoming(units, unit)[:2] for unit in (1, 3)}  # kernel, recurrent kernel (the bias: zeros)
    for a, b in zip(kernels[1], kernels[3], strict=True):
        assert np.any(a != 0) and not np.array_equal(a, b)


def test_incoming_norms_by_hand_over_every_gate_block():
    keras.utils.set_random_seed(2)
    model = sequence_model("lstm")  # 4 gate blocks of 5 units: unit j owns columns j, j + 5, j + 10, j + 15
    cell = model.get_layer("layer").cell
    arrays = [np.asarray(w.numpy(), np.float64) for w in (cell.kernel, cell.recurrent_kernel, cell.bias)]
    want = [np.sqrt(sum((a[..., [j, j + 5, j + 10, j + 15]] ** 2).sum() for a in arrays)) for j in range(5)]
    np.testing.assert_allclose(adaptgrad.unit_view(model, "layer").incoming_norms(), want, rtol=1e-12)
