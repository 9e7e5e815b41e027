"""Every captured statistic equals an independent reference, in every way Keras trains."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from cases import representative

import adaptgrad
from adaptgrad import _keras
from adaptgrad.runtime import mirrored_strategy
from adaptgrad.stats import SUM_FIELDS, WEIGHT_FIELDS

from reference import assert_stats_equal, build, data, reference_fit, sgd_reference, twin

COMPILE_MODES = {
    "graph": {},
    "jit": {"jit_compile": True},
    "steps_per_execution": {"steps_per_execution": 3},
    "eager": {"run_eagerly": True},
}


@pytest.mark.parametrize(
    "kind, mode",
    representative(
        [(k, m) for k in ("sequential", "functional", "subclassed") for m in COMPILE_MODES],
        ("subclassed", "jit"),
        ("functional", "steps_per_execution"),
        ("sequential", "eager"),
    ),
)
def test_output_mode_matches_split_forward_pass(kind, mode):
    compile_kwargs = COMPILE_MODES[mode]
    model, ref = twin(kind)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", **compile_kwargs)
    w = adaptgrad.watch(model, "rnn")
    x, y = data(10)  # batch 4 does not divide 10 and validation_split takes 2 of them
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, validation_split=0.2, verbose=0)
    assert model.jit_compile or "jit_compile" not in compile_kwargs  # XLA compiled the step, not Keras's silent fallback
    want = sgd_reference(ref, x[:8], y[:8], batch_size=4, epochs=2)
    assert_stats_equal(w.stats(), want)


@pytest.mark.parametrize(
    "cell, return_sequences",
    representative(
        [(c, r) for c in ("minimal", "simple", "gru", "lstm") for r in (False, True)], ("minimal", True), ("lstm", False)
    ),
)
def test_through_time_matches_manual_unroll(cell, return_sequences):
    model, ref = twin("functional", cell, 5, return_sequences)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    w = adaptgrad.watch(model, "rnn", through_time=True)
    x, y = data(7, return_sequences)
    model.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0)
    want = sgd_reference(ref, x, y, batch_size=3, epochs=2, through_time=True)
    assert_stats_equal(w.stats(), want)


@pytest.mark.parametrize(
    "cell, options",
    representative(
        [
            ("minimal", {"go_backwards": True}),
            ("lstm", {"go_backwards": True, "return_sequences": True}),
            ("gru", {"unroll": True}),
            ("minimal", {"masked": True}),
            ("lstm", {"masked": True, "go_backwards": True}),
            ("gru", {"masked": True, "return_sequences": True}),
        ],
        ("gru", {"unroll": True}),
        ("lstm", {"masked": True, "go_backwards": True}),
    ),
    ids=["backwards", "backwards_sequences", "unrolled", "masked", "masked_backwards", "masked_sequences"],
)
def test_through_time_with_layer_options(cell, options):
    """go_backwards, unroll and masked steps (a masked step has no hidden state of its own, so it
    counts for nothing)."""
    model, ref = twin("functional", cell, 4, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    w = adaptgrad.watch(model, "rnn", through_time=True)
    x, y = data(7, options.get("return_sequences", False), padded=options.get("masked", False))
    model.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0)
    want = sgd_reference(ref, x, y, batch_size=3, epochs=2, through_time=True, masked=options.get("masked", False))
    assert_stats_equal(w.stats(), want)


@pytest.mark.parametrize(
    "kind, mode",
    representative(
        [(k, m) for k in ("sequential", "subclassed") for m in ("jit", "eager", "steps_per_execution")],
        ("sequential", "steps_per_execution"),
        # XLA: test_xla.py::test_through_time_capture_of_every_stats_set_compiles_with_xla;
        # eager: test_users_own_gradient_tape_loop
    ),
)
def test_through_time_in_every_compile_mode(kind, mode):
    compile_kwargs = COMPILE_MODES[mode]
    model, ref = twin(kind, "gru", 3)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", **compile_kwargs)
    w = adaptgrad.watch(model, "rnn", through_time=True)
    x, y = data(5)
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    assert model.jit_compile or "jit_compile" not in compile_kwargs  # XLA compiled the step, not Keras's silent fallback
    want = sgd_reference(ref, x, y, batch_size=2, epochs=1, through_time=True)
    assert_stats_equal(w.stats(), want)


GRADIENT = ("grad_sum", "grad_abs_sum", "grad_sq_sum")
SUBSETS = {
    "none": (),
    "gradient": GRADIENT,
    "act_grad_sum": ("act_grad_sum",),
    "batch_sq_and_activity": ("act_grad_batch_sq_sum", "act_abs_sum"),
    "per_example": ("act_grad_example_sq_sum", "act_grad_example_abs_sum", "act_grad_fisher_sum"),
    "weight": ("weight_grad_sq_sum",),
}
SUBSET_MODES = {
    "output": dict(through_time=False, cell="minimal"),
    "output_sequences": dict(through_time=False, cell="gru", return_sequences=True),  # examples x steps
    "time": dict(through_time=True, cell="lstm", go_backwards=True),  # the lean loop
    "time_sequences": dict(through_time=True, cell="minimal", return_sequences=True),  # outputs kept
    "time_masked": dict(through_time=True, cell="gru", masked=True),  # Keras's loop, z as input
    "time_unrolled": dict(through_time=True, cell="simple", unroll=True),  # Keras's unrolled loop
}


@pytest.mark.parametrize(
    "mode, subset",
    representative(
        [(m, s) for m in SUBSET_MODES for s in SUBSETS],
        ("output", "batch_sq_and_activity"),
        ("time_masked", "per_example"),  # each example's own kept steps, time-major
        ("output_sequences", "per_example"),
        ("time_sequences", "weight"),  # time_unrolled, every statistic: test_through_time_with_layer_options
    ),
)
def test_captured_subset_matches_reference(mode, subset):
    """Each subset holds exactly its fields, each equal to the reference; the counts are exact."""
    options = dict(SUBSET_MODES[mode])
    through_time, cell = options.pop("through_time"), options.pop("cell")
    return_sequences, masked = options.pop("return_sequences", False), options.get("masked", False)
    model, ref = twin("functional", cell, 4, return_sequences, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    w = adaptgrad.watch(model, "rnn", through_time=through_time, stats=SUBSETS[subset])
    assert w.fields == frozenset(SUBSETS[subset])
    x, y = data(7, return_sequences, padded=masked)
    model.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0)
    want = sgd_reference(ref, x, y, batch_size=3, epochs=2, through_time=through_time, masked=masked)
    assert_stats_equal(w.stats(), want, fields=SUBSETS[subset])


def test_reading_a_field_not_captured_says_how_to_ask_for_it():
    model, *_ = build("functional", "gru")
    model.compile(optimizer="sgd", loss="mse")
    w = adaptgrad.watch(model, "rnn", through_time=True, stats=GRADIENT)
    model.fit(*data(4), batch_size=2, verbose=0)
    stats = w.stats()
    assert stats.rms_grad.shape == (4,)
    assert set(stats.as_dict()) == {*GRADIENT, "mean_grad", "mean_abs_grad", "rms_grad", "batches", "count"}
    with pytest.raises(AttributeError, match=r"act_grad_sum was not captured.*stats=\[\.\.\., 'act_grad_sum'\]"):
        _ = stats.act_grad_sum
    with pytest.raises(AttributeError, match=r"taylor needs act_grad_sum, which was not captured"):
        _ = stats.taylor
    assert not hasattr(stats, "act_abs_sum")


def test_unknown_statistic_is_refused_at_watch_time():
    model, *_ = build("functional")
    with pytest.raises(
        ValueError, match=r"unknown statistic 'taylor'.*valid: 'grad_sum'.*'act_abs_sum'.*derived from act_grad_sum"
    ):
        adaptgrad.watch(model, "rnn", stats=["grad_sum", "taylor"])
    with pytest.raises(ValueError, match=r"not the string 'grad_sum'; e\.g\. stats=\['grad_sum'\]"):
        adaptgrad.watch(model, "rnn", stats="grad_sum")
    assert "call" not in vars(model.get_layer("rnn"))  # nothing was attached


@pytest.mark.parametrize(
    "through_time, loop",
    representative(
        [(t, f) for t in (False, True) for f in ("eager_tape", "tf_function")], (True, "eager_tape"), (False, "tf_function")
    ),
)
def test_users_own_gradient_tape_loop(through_time, loop):
    """The question's second version: a hand-written GradientTape loop with Adam(0.01). The
    weight-gradient sum is captured from model.optimizer: in the tf.function loop the model is
    compiled with the loop's optimizer; in the eager one it is not, so that sum is absent and
    reading it says why."""
    model, ref = twin("subclassed")
    w = adaptgrad.watch(model, "rnn", through_time=through_time)
    optimizer = keras.optimizers.Adam(0.01)
    if loop == "tf_function":
        model.compile(optimizer=optimizer)
    loss_fn = keras.losses.MeanSquaredError()
    x, y = data(4)

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    step = tf.function(train_step) if loop == "tf_function" else train_step
    for _ in range(3):
        step(tf.constant(x), tf.constant(y))
    want = reference_fit(*ref, x, y, batch_size=4, epochs=3, optimizer=keras.optimizers.Adam(0.01), through_time=through_time)
    if loop == "tf_function":
        assert_stats_equal(w.stats(), want)
        return
    assert_stats_equal(w.stats(), want, fields=[f for f in SUM_FIELDS if f not in WEIGHT_FIELDS])
    with pytest.raises(AttributeError, match=r"weight_grad_sq_sum was not captured.*compile the model with the optimizer"):
        _ = w.stats().weight_grad_sq_sum


@pytest.mark.parametrize("through_time", representative([False, True], True))
def test_mirrored_strategy_sums_equal_single_device(through_time):
    strategy = mirrored_strategy(("/cpu:0", "/cpu:1"))  # one per process: see its docstring
    assert strategy.num_replicas_in_sync == 2
    x, y = data(8)
    single, *_ = build("functional", "lstm", 4)
    weights = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    single_watch = adaptgrad.watch(single, "rnn", through_time=through_time)
    single.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    with strategy.scope():
        mirrored, *_ = build("functional", "lstm", 4)
        mirrored.set_weights(weights)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        mirrored_watch = adaptgrad.watch(mirrored, "rnn", through_time=through_time)
    mirrored.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    got, want = mirrored_watch.stats(), single_watch.stats()
    assert_stats_equal(got, {**want.as_dict()})


@pytest.mark.parametrize("through_time", representative([False, True], True))
def test_mixed_precision_divides_out_the_loss_scale(through_time):
    x, y = data(6)
    full, ref = twin("functional", "gru", 4)
    weights = full.get_weights()
    keras.mixed_precision.set_global_policy("mixed_float16")
    half, *_ = build("functional", "gru", 4)
    half.set_weights(weights)
    half.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    assert isinstance(half.optimizer, keras.optimizers.LossScaleOptimizer)
    w = adaptgrad.watch(half, "rnn", through_time=through_time)
    half.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    want = sgd_reference(ref, x, y, batch_size=3, epochs=1, through_time=through_time)
    # float16 activations: about three significant digits
    assert_stats_equal(w.stats(), want, rtol=2e-2)


def test_question_model_is_answered_in_fit_and_batches_are_counted():
    from adaptgrad.question import question_model, toy_data

    model = question_model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = toy_data()
    with adaptgrad.watch(model, "minimalrnn") as w:
        model.fit(x, y, epochs=3, batch_size=1, validation_split=0.2, verbose=0)
        stats = w.stats()
    assert (stats.batches, stats.count) == (3, 3)  # 1 training sample per epoch, 3 epochs
    assert stats.grad_sum.shape == (2,) and np.all(stats.grad_abs_sum > 0)


def test_snapshot_reset_and_remove():
    model, *_ = build("sequential")
    model.compile(optimizer="sgd", loss="mse")
    x, y = data(8)
    initial = model.get_weights()
    w = adaptgrad.watch(model, "rnn")
    model.fit(x, y, batch_size=4, verbose=0)
    first = w.stats()
    model.fit(x, y, batch_size=4, verbose=0)
    assert (first.batches, first.count) == (2, 8) and (w.stats().batches, w.stats().count) == (4, 16)
    w.reset()
    with pytest.raises(RuntimeError, match="no gradient has reached layer 'rnn'"):
        w.stats()
    model.fit(x, y, batch_size=4, verbose=0)
    assert (w.stats().batches, w.stats().count) == (2, 8)  # the new window only: every counter was reset
    w.remove()
    assert "call" not in vars(model.get_layer("rnn"))
    # after remove, training is exactly that of a model that was never watched
    model.set_weights(initial)
    plain, *_ = build("sequential")
    plain.set_weights(initial)
    for m in (model, plain):
        m.compile(optimizer="sgd", loss="mse")
        m.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="removed"):
        w.stats()


def test_watch_a_dense_layer_by_object():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(5, activation="tanh", name="hidden")
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    w = adaptgrad.watch(model, hidden)
    model.fit(np.ones((6, 3)), np.ones((6, 1)), batch_size=6, verbose=0)
    assert w.stats().units == 5 and w.stats().count == 6


@pytest.mark.parametrize("through_time", [False, True])
def test_fit_traces_its_train_step_once_with_a_watch(through_time):
    """A watch on a Dense or recurrent layer makes its sums when it is made, and ``build_for_fit``
    (which the runner calls) makes the optimizer's and metrics' variables: TensorFlow traces a
    step that makes variables on its first trace a second time."""
    model, *_ = build("subclassed")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    w = adaptgrad.watch(model, "rnn", through_time=through_time)
    assert w.units == 4  # known before any step ran
    traces, step = [], model.train_step
    model.train_step = lambda batch: (traces.append(1), step(batch))[1]
    x, y = data(8)
    _keras.build_for_fit(model, (x[:1], y[:1]))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert len(traces) == 1 and w.stats().batches == 4


# -- bad input -------------------------------------------------------------------------------


def test_unknown_layer_name_lists_the_layers():
    model, *_ = build("subclassed")
    with pytest.raises(ValueError, match=r"no layer named 'rnnn'.*'rnn'.*'head'"):
        adaptgrad.watch(model, "rnnn")


def test_through_time_on_dense_layer_fails_before_training():
    model, *_ = build("functional")
    with pytest.raises(ValueError, match="through_time=True needs a recurrent layer.*'head' is a Dense"):
        adaptgrad.watch(model, "head", through_time=True)


def test_watching_a_layer_twice():
    model, *_ = build("functional")
    adaptgrad.watch(model, "rnn")
    with pytest.raises(ValueError, match="already watched"):
        adaptgrad.watch(model, "rnn", through_time=True)


class SideBranch(keras.Model):
    """Computes a Dense branch whose result never reaches the output."""

    def __init__(self):
        super().__init__()
        self.used = keras.layers.Dense(1, name="used")
        self.unused = keras.layers.Dense(2, name="unused")

    def call(self, x):
        self.unused(x)
        return self.used(x)


@pytest.mark.parametrize(
    "make, layer, message",
    [
        (SideBranch, "unused", "does not reach the loss, or nothing trainable lies upstream"),  # off the loss path
        (
            lambda: keras.Sequential([keras.Input((3,)), keras.layers.Rescaling(2.0, name="scale"), keras.layers.Dense(1)]),
            "scale",
            "no gradient has reached layer 'scale'",
        ),  # nothing trainable upstream
    ],
    ids=["off_the_loss_path", "nothing_trainable_upstream"],
)
def test_a_layer_no_gradient_reaches_is_an_error_not_zeros(make, layer, message):
    model = make()
    model.compile(optimizer="sgd", loss="mse")
    w = adaptgrad.watch(model, layer)
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    with pytest.raises(RuntimeError, match=message):
        w.stats()


def test_weight_gradient_sum_needs_per_unit_weights_and_is_left_out_of_all_elsewhere():
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Conv1D(4, 2, name="conv")(inputs)))
    with pytest.raises(ValueError, match=r"stats=\['weight_grad_sq_sum'\] needs per-unit incoming weights.*'conv' \(Conv1D\)"):
        adaptgrad.watch(model, "conv", stats=["weight_grad_sq_sum"])
    assert adaptgrad.watch(model, "conv").fields == frozenset(SUM_FIELDS) - WEIGHT_FIELDS


def test_weight_gradient_hook_is_on_the_optimizer_instance_only_and_goes_with_the_last_watch():
    """Two watches on one model share one hook on its optimizer; remove() restores ``apply``."""
    model, *_ = build("functional", "gru")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    first = adaptgrad.watch(model, "rnn", stats=["weight_grad_sq_sum"])
    second = adaptgrad.watch(model, "head", stats=["weight_grad_sq_sum"])
    model.fit(*data(4), batch_size=2, verbose=0)
    assert first.stats().weight_grad_sq_sum.shape == (4,) and second.stats().weight_grad_sq_sum.shape == (2,)
    assert "apply" in vars(model.optimizer)
    first.remove()
    assert "apply" in vars(model.optimizer)
    second.remove()
    assert "apply" not in vars(model.optimizer) and "apply" not in vars(keras.optimizers.SGD(0.1))
