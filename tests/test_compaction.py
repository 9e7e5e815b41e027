"""compact (adaptgrad/compaction.py) on models whose gates come from a saved file."""

from __future__ import annotations

import keras
import numpy as np

import adaptgrad
from adaptgrad.question import question_model, toy_data


def test_compact_finds_the_gates_of_a_reloaded_subclassed_model(tmp_path):
    """A subclassed model rebuilds its layers from code on load: the cell's gate constraint is gone,
    but the gated units' incoming weights are still exactly 0, and compact removes them without a
    unit view being made first (issue 21, silent case 14)."""
    x, y = toy_data()
    model = question_model(6)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, batch_size=1, verbose=0)
    adaptgrad.unit_view(model, "minimalrnn", next_layer="out").gate([0, 2, 5])
    model.save(tmp_path / "q.keras")
    loaded = keras.models.load_model(tmp_path / "q.keras")
    small = adaptgrad.compact(loaded, next_layers={"minimalrnn": "out"})
    assert small.size == 3
    fresh = question_model(3)
    fresh(x)
    assert small.count_params() == fresh.count_params()
    np.testing.assert_allclose(small.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-5, rtol=0)
    kept = keras.ops.convert_to_numpy(loaded.minimalrnn.cell.kernel)[:, [1, 3, 4]]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(small.minimalrnn.cell.kernel), kept)
