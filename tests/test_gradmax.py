"""The gradmax rule: function-preserving growth whose new units get the largest incoming gradient."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from cases import representative

import adaptgrad
from adaptgrad.growth import linearisation
from adaptgrad.rules import GradMax

from reference import HEAD, growth_model, incoming_gradient, set_outgoing

START, RANDOM = 4, 100


class Predictions(keras.callbacks.Callback):
    """Records the model's predictions on ``x`` at every epoch end (placed before and after Adapt)."""

    def __init__(self, x):
        super().__init__()
        self.x, self.seen = x, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(self.model.predict(self.x, verbose=0))


def grown_model(cell: str, kind: str, directions: str = "gradmax"):
    """A layer of START active units, then one to grow, one per outgoing coordinate (to read M
    off a tape) and RANDOM more (random directions), grown by one gradmax step at the end of an
    epoch of SGD(0) (the weights stay put, so a tape on the same batches sees M's batches)."""
    probe, _, _, _, _ = growth_model(cell, "functional", units=START)
    owner = probe.layers[1]
    blocks = linearisation(owner).blocks
    coordinates = HEAD + (blocks * START if hasattr(getattr(owner, "cell", owner), "recurrent_kernel") else 0)
    keras.utils.set_random_seed(0)
    model, layer, head, x, y = growth_model(cell, kind, units=START + 1 + coordinates + RANDOM)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    rule = GradMax(start_units=START, count=1, directions=directions)
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, layer, stats=()), [rule], next_layer=head)
    before, after = Predictions(x), Predictions(x)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[before, adapt, after])
    return model, layer, head, x, y, adapt, before.seen[0], after.seen[0], coordinates


def outgoing_rows(layer, head, units: list[int], blocks: int) -> np.ndarray:
    """The units' outgoing weights over the coordinates a new unit may feed: the head's outputs,
    then the recurrent-kernel columns of the first START units (not the unit's own)."""
    rows = [head.kernel.numpy()[units].astype(np.float64)]
    owner = getattr(layer, "cell", layer)
    if hasattr(owner, "recurrent_kernel"):
        size = owner.recurrent_kernel.shape[0]
        columns = (np.arange(START)[None, :] + size * np.arange(blocks)[:, None]).ravel()
        recurrent = owner.recurrent_kernel.numpy()[units][:, columns].astype(np.float64)
        for i, unit in enumerate(units):
            recurrent[i, columns % size == unit] = 0.0
        rows.append(recurrent)
    return np.concatenate(rows, axis=1)


def put(layer, head, unit: int, vector: np.ndarray, blocks: int) -> None:
    """Give ``unit`` the outgoing weights ``vector`` (over :func:`outgoing_rows`'s coordinates)."""
    owner = getattr(layer, "cell", layer)
    full = np.zeros(HEAD + (owner.recurrent_kernel.shape[-1] if hasattr(owner, "recurrent_kernel") else 0), np.float32)
    full[:HEAD] = vector[:HEAD]
    if full.size > HEAD:
        size = owner.recurrent_kernel.shape[0]
        columns = (np.arange(START)[None, :] + size * np.arange(blocks)[:, None]).ravel()
        full[HEAD + columns] = vector[HEAD:]
    set_outgoing(layer, head, unit, full)


@pytest.mark.parametrize(
    "cell, kind",
    representative(
        [
            (c, k)
            for c in ["minimal", "simple", "gru", "lstm", "user", "dense"]
            for k in ["sequential", "functional", "subclassed"]
        ],
        ("lstm", "subclassed"),
        ("dense", "sequential"),
    ),
)
def test_gradmax_growth_keeps_predictions_and_gives_the_largest_incoming_gradient(cell, kind):
    model, layer, head, x, y, adapt, before, after, coordinates = grown_model(cell, kind)
    lin = linearisation(layer)
    actions = adapt.actions_frame()
    assert actions.action.tolist() == ["grow"] and actions.unit.tolist() == [START]
    assert np.max(np.abs(after - before)) <= 1e-7
    assert adapt.units.active.sum() == START + 1
    c = float(np.mean(np.linalg.norm(outgoing_rows(layer, head, list(range(START)), lin.blocks), axis=1)))
    grown = outgoing_rows(layer, head, [START], lin.blocks)[0]
    assert np.linalg.norm(grown) == pytest.approx(c, rel=1e-5)
    basis = START + 1 + np.arange(coordinates)
    random = START + 1 + coordinates + np.arange(RANDOM)
    for i, unit in enumerate(basis):
        put(layer, head, int(unit), np.eye(coordinates)[i], lin.blocks)
    directions = np.random.default_rng(3).normal(size=(RANDOM, coordinates))
    for unit, direction in zip(random, directions):
        put(layer, head, int(unit), c * direction / np.linalg.norm(direction), lin.blocks)
    gradients = incoming_gradient(model, layer, x, y, 4)  # one tape: every gated unit still outputs 0
    norms = np.linalg.norm(gradients.reshape(len(gradients), -1), axis=1)
    tape_matrix = gradients[basis, lin.block]  # rows: kappa * e_r^T M
    sigma = np.linalg.svd(tape_matrix, compute_uv=False)[0]
    assert norms[START] == pytest.approx(c * sigma, rel=1e-4)
    assert norms[START] == pytest.approx(actions.value.iloc[0], rel=1e-4)  # the rule's kappa * c * sigma_1(M)
    assert np.all(norms[START] >= norms[random])
    assert norms[START] > 1.2 * np.median(norms[random])


@pytest.mark.parametrize("cell", representative(["gru", "lstm", "dense"], "lstm"))
def test_random_growth_keeps_predictions_and_records_its_true_incoming_gradient_norm(cell):
    """The control: a random outgoing direction of norm c; its action value is the tape's norm, below gradmax's."""
    model, layer, head, x, y, adapt, before, after, _ = grown_model(cell, "functional", directions="random")
    lin = linearisation(layer)
    actions = adapt.actions_frame()
    assert actions.action.tolist() == ["grow"] and actions.unit.tolist() == [START]
    assert np.max(np.abs(after - before)) <= 1e-7
    c = float(np.mean(np.linalg.norm(outgoing_rows(layer, head, list(range(START)), lin.blocks), axis=1)))
    grown = outgoing_rows(layer, head, [START], lin.blocks)[0]
    assert np.linalg.norm(grown) == pytest.approx(c, rel=1e-5)
    norm = np.linalg.norm(incoming_gradient(model, layer, x, y, 4)[START])
    assert actions.value.iloc[0] == pytest.approx(norm, rel=1e-4) and norm > 0
    keras.utils.set_random_seed(0)
    top = grown_model(cell, "functional")[5].actions_frame().value.iloc[0]
    assert norm < top
    again = grown_model(cell, "functional", directions="random")
    np.testing.assert_array_equal(outgoing_rows(again[1], again[2], [START], lin.blocks)[0], grown)  # seeded


def test_start_units_gates_the_rest_from_the_first_step_and_saves_them(tmp_path):
    model, layer, head, x, y = growth_model("gru", "functional", units=6)
    model.compile(optimizer="adam", loss="mse")
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, layer, stats=()), [GradMax(start_units=2, start_epoch=5)])
    assert adapt.units.active.tolist() == [True, True, False, False, False, False]
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[adapt])
    hidden = keras.Model(model.inputs, layer.output).predict(x, verbose=0)
    assert np.all(hidden[:, 2:] == 0.0) and np.all(hidden[:, :2] != 0.0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert adaptgrad.unit_view(loaded, "rnn").active.tolist() == [True, True, False, False, False, False]
    assert adaptgrad.compact(model).get_layer("rnn").cell.units == 2


def test_gradmax_grows_up_to_the_width_and_respects_count_and_threshold():
    model, layer, head, x, y = growth_model("simple", "functional", units=5)
    model.compile(optimizer="adam", loss="mse")
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, layer, stats=()), [GradMax(start_units=2, count=2)])
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[adapt])
    assert adapt.actions_frame().groupby("epoch").unit.apply(list).tolist() == [[2, 3], [4]]
    assert adapt.units.active.all()
    keras.utils.set_random_seed(0)
    model, layer, head, x, y = growth_model("simple", "functional", units=5)
    model.compile(optimizer="adam", loss="mse")
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, layer, stats=()), [GradMax(start_units=2, count=3, threshold=1e9)])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[adapt])
    assert adapt.actions_frame().empty and adapt.units.active.sum() == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"start_units": 0}, "start_units=0"),
        ({"count": 0}, "count=0"),
        ({"threshold": -1.0}, "threshold=-1.0"),
        ({"directions": "svd"}, "directions='svd'; valid: 'gradmax', 'random'"),
    ],
)
def test_bad_gradmax_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradMax(**kwargs)


def test_start_units_wider_than_the_layer_is_refused():
    model, layer, head, x, y = growth_model("gru", "functional", units=3)
    with pytest.raises(ValueError, match="start_units=4 exceeds the 3 units"):
        adaptgrad.Adapt(adaptgrad.watch(model, layer, stats=()), [GradMax(start_units=4)])


def test_runner_grows_a_layer_that_starts_small(adaptgrad_cli, tiny, tmp_path):
    import pandas as pd

    run = adaptgrad_cli(
        *tiny, "model=gru", "model.units=6", "rule=gradmax", "rule.start_units=2", "rule.count=2", f"hydra.run.dir={tmp_path}"
    )
    assert run.code == 0, run.err
    actions = pd.read_csv(tmp_path / "actions.csv")
    assert actions.action.tolist() == ["grow"] * 4 and actions.unit.tolist() == [2, 3, 4, 5]


def test_a_resumed_gradmax_job_continues_its_statistic_exactly(tmp_path):
    """Growth every 2 epochs: M sums epochs 1 and 2, across the checkpoint of epoch 1."""
    import json

    from conftest import TINY

    from adaptgrad.composition import compose
    from adaptgrad.run import run

    overrides = [*TINY, "trainer.epochs=3", "model=gru", "model.units=6", "rule=gradmax", "rule.start_units=2", "rule.every=2"]
    out = tmp_path / "out"
    assert run(compose(overrides), out, rule_preset="gradmax")["status"] == "ok"
    tables = {name: (out / name).read_bytes() for name in ("history.csv", "units.parquet", "actions.csv")}
    (out / "checkpoints" / "epoch-0002.ckpt").unlink()  # the newest two are kept: epoch 1's remains
    (out / "result.json").write_text(json.dumps({"status": "running"}))
    again = run(compose(overrides), out, rule_preset="gradmax")
    assert again["status"] == "ok" and again["resumed_from"] == 2  # from the checkpoint of epoch 1
    assert tables == {name: (out / name).read_bytes() for name in tables}
