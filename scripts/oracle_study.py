"""The oracle study: which criterion predicts the loss change of the edit a rule makes?

For each task, cell and seed: train the runner's model (16 units, Adam 0.01, batch 64) for 10
epochs with ``model.fit``; then, with the weights frozen, capture the statistics of one pass over
the training data in both capture modes (through time and output), compute every criterion of
:data:`adaptgrad.criteria.CRITERIA` (and a random score, the control) from each, and judge them
with :func:`adaptgrad.criteria.evaluate` against the oracle of both edits
(:func:`adaptgrad.oracle`: ``gate``, what the gating rules do; ``zero_output``). Prints, per
edit, mode, criterion and cell, the mean over seeds and tasks of Spearman's rho with |oracle| and
of the cost of its 4 picks over the best 4, and writes the full table as Markdown::

    python scripts/oracle_study.py                        # writes experiments/results/oracle.md
    python scripts/oracle_study.py --seeds 1 --epochs 2   # a quick look
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

import adaptgrad  # noqa: E402
from adaptgrad import data as datasets  # noqa: E402
from adaptgrad.criteria import CRITERIA, evaluate, score  # noqa: E402
from adaptgrad.models import LAYER_NAMES, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODES = {"through_time": True, "output": False}


def trained(task: str, cell: str, seed: int, units: int, epochs: int) -> tuple[keras.Model, datasets.Dataset]:
    keras.utils.set_random_seed(seed)
    data = datasets.load(task, seed=seed)
    model = build_model(cell, units=units, input_shape=data.input_shape, outputs=data.outputs, task=data.task)
    if data.task == "classification":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss = keras.losses.MeanSquaredError()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=epochs, verbose=0)
    return model, data


def frozen_stats(
    model: keras.Model, layer: str, x: np.ndarray, y: np.ndarray, through_time: bool
) -> adaptgrad.OutputGradientStats:
    """Every statistic over one pass of batches of 64, the weights never updated."""
    watch = adaptgrad.watch(model, layer, through_time=through_time)
    loss_fn = model.loss

    @tf.function
    def step(xb: tf.Tensor, yb: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        tape.gradient(loss, model.trainable_variables)

    for start in range(0, len(x), 64):
        step(tf.constant(x[start : start + 64]), tf.constant(y[start : start + 64]))
    stats = watch.stats()
    watch.remove()
    return stats


def study(tasks: list[str], cells: list[str], seeds: int, units: int, epochs: int, k: int) -> pd.DataFrame:
    rows = []
    for task in tasks:
        for cell in cells:
            for seed in range(seeds):
                model, data = trained(task, cell, seed, units, epochs)
                layer = LAYER_NAMES[cell]
                truth = {
                    edit: adaptgrad.oracle(model, layer, (data.x_train, data.y_train), edit=edit)
                    for edit in ("gate", "zero_output")
                }
                rng = np.random.default_rng(seed)
                for mode, through_time in MODES.items():
                    stats = frozen_stats(model, layer, data.x_train, data.y_train, through_time)
                    scores = {name: score(name, stats) for name in CRITERIA}
                    scores["random"] = rng.random(units)
                    for edit, delta in truth.items():
                        table = evaluate(delta, scores, k=k)
                        table[["task", "cell", "seed", "mode", "edit"]] = task, cell, seed, mode, edit
                        rows.append(table)
                print(f"{task} {cell} seed {seed}: done", flush=True)
    return pd.concat(rows, ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    grouped = table.groupby(["edit", "mode", "criterion", "cell"], sort=False)
    out = grouped.agg(rho=("spearman", "mean"), rho_min=("spearman", "min"), cost_ratio=("cost_ratio", "mean"))
    return out.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,sunspots")
    parser.add_argument("--cells", default="gru,minimal_rnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "oracle.md"))
    args = parser.parse_args()
    table = study(args.tasks.split(","), args.cells.split(","), args.seeds, args.units, args.epochs, args.k)
    per_task = (
        table.groupby(["edit", "mode", "criterion", "task", "cell"], sort=False)[["spearman", "cost_ratio"]].mean().reset_index()
    )
    text = [
        f"Oracle study: {args.tasks} x {args.cells}, {args.seeds} seeds, {args.units} units, {args.epochs} epochs, k={args.k}.",
        "",
        "Mean over seeds and tasks (rho: Spearman with |oracle|; cost_ratio: summed oracle of the k picks / of the best k):",
        "",
        summary(table).to_markdown(index=False, floatfmt=".3g"),
        "",
        "Per task (mean over seeds):",
        "",
        per_task.to_markdown(index=False, floatfmt=".3g"),
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print(summary(table).to_string(index=False))


if __name__ == "__main__":
    main()
