"""The growth statistic M against a GradientTape: the true gradient of a new unit's incoming weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from cases import representative

import adaptgrad
from adaptgrad._cells import open_cell
from adaptgrad.cells import MinimalRNNCell
from adaptgrad.growth import linearisation, watch_growth

from reference import FEATURES, HEAD, STEPS, TanhCell, build, data, growth_model, incoming_gradient, set_outgoing

CELLS = ["minimal", "simple", "gru", "lstm", "user", "user-no-bias", "dense"]
KINDS = ["sequential", "functional", "subclassed"]


def captured(model, layer, head, x, y, *, gated, through_time=None, jit_compile=False, optimizer=None):
    """M after one epoch of 2 batches with SGD(0) (the weights stay put), ``gated`` units gated."""
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.0), loss="mse", jit_compile=jit_compile)
    units = adaptgrad.unit_view(model, layer, next_layer=head)
    units.gate(gated)
    watches = [adaptgrad.watch(model, layer, through_time=True)] if through_time else []
    growth = watch_growth(model, layer, next_layer=head)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    statistic = growth.statistic()
    for watch in [growth, *watches]:
        watch.remove()
    return statistic


@pytest.mark.parametrize(
    "cell, kind",
    representative(
        [(c, k) for c in CELLS for k in KINDS],
        ("dense", "functional"),
        ("lstm", "functional"),
        ("gru", "subclassed"),
        ("user", "functional"),
        ("user-no-bias", "functional"),
    ),
)
def test_new_unit_incoming_gradient_is_kappa_w_M_exactly(cell, kind):
    model, layer, head, x, y = growth_model(cell, kind)
    statistic = captured(model, layer, head, x, y, gated=[1, 2])
    lin = statistic.linearisation
    assert (
        statistic.batches == 2
        and statistic.matrix.shape[0]
        == HEAD + getattr(getattr(layer, "cell", layer), "recurrent_kernel", np.zeros((0, 0))).shape[-1]
    )
    rng = np.random.default_rng(7)
    for unit in (1, 2):
        outgoing = rng.normal(size=statistic.matrix.shape[0]).astype(np.float32)
        if lin.blocks * 4 + HEAD == outgoing.size:  # recurrent: columns of gated units are their incoming weights
            outgoing[HEAD:].reshape(lin.blocks, 4)[:, [1, 2]] = 0.0
        set_outgoing(layer, head, unit, outgoing)
        reference = incoming_gradient(model, layer, x, y, 4)[unit]
        set_outgoing(layer, head, unit, np.zeros_like(outgoing))
        others = np.delete(reference, lin.block, axis=0)
        assert np.all(others == 0.0), f"blocks other than {lin.block} get gradient"
        expected = reference[lin.block]
        np.testing.assert_allclose(statistic.gradient(outgoing), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        assert np.abs(expected).max() > 1e-3


@pytest.mark.parametrize(
    "cell, option",
    representative(
        [(c, o) for c in ("minimal", "gru", "lstm", "user") for o in ("go_backwards", "unroll")], ("gru", "go_backwards")
    ),
)
def test_growth_statistic_is_exact_backwards_and_unrolled(cell, option):
    def model_of():
        keras.utils.set_random_seed(0)
        if cell == "user":
            model, layer, head, x, y = growth_model(cell, "functional")
            setattr(layer, option, True)
            return model, layer, head, x, y
        return *build("functional", cell, units=4, **{option: True}), *data(8)

    beside = captured(*model_of(), gated=[1], through_time=True)  # the through-time loop carries it too
    model, layer, head, x, y = model_of()
    statistic = captured(model, layer, head, x, y, gated=[1])
    np.testing.assert_allclose(beside.matrix, statistic.matrix, rtol=1e-6, atol=1e-9)
    outgoing = np.random.default_rng(7).normal(size=statistic.matrix.shape[0]).astype(np.float32)
    outgoing[HEAD:].reshape(statistic.linearisation.blocks, 4)[:, 1] = 0.0
    set_outgoing(layer, head, 1, outgoing)
    expected = incoming_gradient(model, layer, x, y, 4)[1, statistic.linearisation.block]
    np.testing.assert_allclose(statistic.gradient(outgoing), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("cell", representative(["minimal", "gru", "lstm"], "minimal"))
def test_growth_statistic_is_the_same_beside_a_through_time_watch_and_under_xla(cell):
    alone = captured(*growth_model(cell, "functional"), gated=[1])
    keras.utils.set_random_seed(0)
    beside = captured(*growth_model(cell, "functional"), gated=[1], through_time=True)
    np.testing.assert_allclose(beside.matrix, alone.matrix, rtol=1e-6, atol=1e-9)
    keras.utils.set_random_seed(0)
    xla = captured(*growth_model(cell, "functional"), gated=[1], jit_compile=True)
    np.testing.assert_allclose(xla.matrix, alone.matrix, rtol=1e-5, atol=1e-7)


class OwnGRUCell(keras.layers.GRUCell):
    """A subclass of Keras's GRUCell: its step may differ, so the growth loop must not write it out."""


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.GRUCell(5),
        lambda: keras.layers.LSTMCell(5),
        lambda: keras.layers.LSTMCell(5, use_bias=False),
        lambda: keras.layers.SimpleRNNCell(5),
        lambda: keras.layers.SimpleRNNCell(5, use_bias=False, activation=None),
        lambda: MinimalRNNCell(5),
    ],
    ids=["gru", "lstm", "lstm-no-bias", "simple", "simple-linear-no-bias", "minimal"],
)
def test_a_written_out_step_computes_what_the_keras_cell_computes(make):
    cell = make()
    cell.build((None, 3))
    rng = np.random.default_rng(0)
    for weight in cell.weights:  # a bias that is not 0, recurrent weights that matter
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    x = rng.normal(size=(4, 3)).astype(np.float32)
    states = [rng.normal(size=(4, 5)).astype(np.float32) for _ in tf.nest.flatten(cell.state_size)]
    opened = open_cell(cell, "float32")
    output, new_states = opened.step(opened.project(x), states, tf.identity)
    expected, expected_states = cell(x, states)
    np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)
    for state, reference in zip(new_states, tf.nest.flatten(expected_states)):
        np.testing.assert_allclose(state, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.GRUCell(5, reset_after=False),
        lambda: keras.layers.LSTMCell(5, implementation=1),
        lambda: keras.layers.SimpleRNNCell(5, dropout=0.1),
        lambda: OwnGRUCell(5),
        lambda: TanhCell(5),
    ],
)
def test_other_cells_are_not_written_out(make):
    cell = make()
    cell.build((None, 3))
    assert open_cell(cell, "float32") is None


def loop_matmuls(model: keras.Model) -> int:
    """The MatMul ops in the body of ``model``'s time loop, traced in training mode."""
    trace = tf.function(lambda x: model(x, training=True))
    graph = trace.get_concrete_function(tf.TensorSpec((None, STEPS, FEATURES), tf.float32)).graph.as_graph_def()
    (body,) = [function for function in graph.library.function if "while_body" in function.signature.name]
    return sum(node.op == "MatMul" for node in body.node_def)


@pytest.mark.parametrize("cell", representative(["minimal", "simple", "gru", "lstm", "user"], "gru", "user"))
def test_the_growth_loop_takes_the_input_projection_out_of_the_step_of_known_cells(cell):
    model, layer, *_ = growth_model(cell, "functional")
    plain = loop_matmuls(model)
    watch_growth(model, layer)
    assert (plain, loop_matmuls(model)) == (2, 2 if cell == "user" else 1)


def test_watch_growth_leaves_training_unchanged_and_removes_cleanly():
    model, layer, head, x, y = growth_model("gru", "functional")
    before, activation = [w.numpy() for w in model.weights], head.activation
    model.compile(optimizer="sgd", loss="mse")
    growth = watch_growth(model, layer)
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False)
    watched = [w.numpy() for w in model.weights]
    growth.remove()
    assert "call" not in vars(layer.cell) and head.activation is activation
    assert "_adaptgrad_hooks" not in vars(layer) and "_adaptgrad_hooks" not in vars(head)
    model.set_weights(before)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False)
    for a, b in zip(watched, [w.numpy() for w in model.weights]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="removed"):
        growth.statistic()


def test_linearisation_constants():
    lin = {}
    for name, layer in {
        "gru": keras.layers.GRU(3),
        "lstm": keras.layers.LSTM(3),
        "simple": keras.layers.SimpleRNN(3),
        "minimal": keras.layers.RNN(MinimalRNNCell(3)),
    }.items():
        layer.build((None, 4, 2))
        lin[name] = linearisation(layer)
    assert (lin["gru"].kappa, lin["gru"].decay, lin["gru"].rho, lin["gru"].bias) == (0.5, 0.5, 0.5, (1.0, 0.5))
    assert (lin["lstm"].kappa, lin["lstm"].decay, lin["lstm"].block) == (0.25, 0.5, 2)
    assert (lin["simple"].kappa, lin["simple"].decay, lin["simple"].bias) == (1.0, 0.0, (1.0,))
    assert (lin["minimal"].kappa, lin["minimal"].bias) == (1.0, ())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, "relu", name="rnn"), keras.layers.Dense(1)]), "relu"),
        (
            lambda: keras.Sequential(
                [keras.Input((5, 3)), keras.layers.GRU(4, return_sequences=True, name="rnn"), keras.layers.Dense(1)]
            ),
            "return_sequences",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((5, 3)), keras.layers.GRU(4, reset_after=False, name="rnn"), keras.layers.Dense(1)]
            ),
            "reset_after",
        ),
        (
            lambda: keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, dropout=0.1, name="rnn"), keras.layers.Dense(1)]),
            "dropout",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((5, 3)), keras.layers.GRU(4, name="rnn"), keras.layers.Dropout(0.1), keras.layers.Dense(1)]
            ),
            "directly",
        ),
    ],
)
def test_unsupported_layers_are_refused_with_the_reason(make, match):
    with pytest.raises(ValueError, match=match):
        watch_growth(make(), "rnn")


@pytest.mark.parametrize("cell", representative(["minimal", "gru", "lstm"], "minimal"))
def test_growth_statistic_under_mixed_precision_divides_out_the_loss_scale(cell):
    full = captured(*growth_model(cell, "functional"), gated=[1])
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=2.0**8)
    half = captured(*growth_model(cell, "functional"), gated=[1], optimizer=optimizer)
    assert half.batches == 2
    np.testing.assert_allclose(half.matrix, full.matrix, rtol=0, atol=1e-2 * np.abs(full.matrix).max())
    keras.utils.set_random_seed(0)
    overflowing = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=2.0**30)
    with pytest.raises(RuntimeError, match="no training batch"):  # every step overflows: Keras skips it, M counts none
        captured(*growth_model(cell, "functional"), gated=[1], optimizer=overflowing)
