"""Evidence for the rules' ``grace`` defaults: how soon a regrown (or reset) unit is undone.

Usage: ``python scripts/grace_evidence.py [--cells gru,lstm,minimal_rnn] [--seeds 2]``

Issue #10's setting: a 16-unit recurrent layer -> Dense(1), through-time capture, Adam 0.01, 256
sequences of 10 steps (target 0.3 * sum of feature 0 + last value of feature 1), batches of 32,
10 epochs. For ``drop_regrow`` (``fraction=0.3, end_epoch=8``) at grace 0-3 it prints how many
regrown units were dropped at the first epoch the grace allowed (t + grace + 1); for
``dormant_reset`` (``tau=0.3``, both scores, grace 0 and 2) how often each unit was reset.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import adaptgrad  # noqa: E402
from adaptgrad.cells import MinimalRNNCell  # noqa: E402
from adaptgrad.models import recurrent_layer  # noqa: E402
from adaptgrad.rules import DormantReset, DropRegrow  # noqa: E402


def actions(cell: str, rule: adaptgrad.AdaptationRule, seed: int, epochs: int = 10):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 10, 2)).astype("float32")
    y = (0.3 * x[:, :, 0].sum(1) + x[:, -1, 1])[:, None].astype("float32")
    if cell == "minimal_rnn":  # the question's cell with a trainable-scale initialisation
        layer = keras.layers.RNN(
            MinimalRNNCell(16, kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal"), name="rnn"
        )
    else:
        layer = recurrent_layer(cell, 16, False, name="rnn")
    model = keras.Sequential([keras.Input((10, 2)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    adapt = adaptgrad.Adapt(adaptgrad.watch(model, "rnn", through_time=True, stats=rule.reads), [rule])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[adapt], shuffle=False)
    return adapt.actions_frame()


def undone_at_once(table, first: str, then: str, grace: int) -> tuple[int, int]:
    """(units whose ``first`` action was followed by ``then`` at t + grace + 1, ``first`` actions)."""
    rows = table.query("action == @first")
    at_once = sum(
        len(table.query("action == @then and unit == @r.unit and epoch == @r.epoch + @grace + 1")) > 0 for r in rows.itertuples()
    )
    return at_once, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="gru,lstm,minimal_rnn")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    for cell in args.cells.split(","):
        for seed in range(args.seeds):
            for grace in range(4):
                table = actions(cell, DropRegrow(fraction=0.3, end_epoch=8, grace=grace), seed)
                dropped, regrown = undone_at_once(table, "ungate", "gate", grace)
                print(f"drop_regrow   {cell:11s} seed {seed} grace {grace}: {dropped} of {regrown} regrown units dropped at once")
            for criterion in ("grad_abs", "activation"):
                for grace in (0, 2):
                    table = actions(cell, DormantReset(tau=0.3, criterion=criterion, grace=grace), seed)
                    counts = table.query("action == 'reinit'").unit.value_counts().to_dict()
                    print(f"dormant_reset {cell:11s} seed {seed} {criterion:10s} grace {grace}: resets per unit {counts}")


if __name__ == "__main__":
    main()
