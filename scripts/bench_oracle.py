"""Benchmark: adaptgrad.oracle against the plain loop (gate one unit, evaluate, restore, for every unit).

All three compute the loss change of gating each unit of a 64-unit GRU on the digits training
set (1,437 sequences of 8 steps), in one process, interleaved, ``--repeats`` times each; the table
gives the median seconds and the ratio oracle / loop (bar: <= 0.25). The plain loop gates with
:meth:`~adaptgrad.UnitView.gate`, evaluates with ``model.evaluate`` and ungates: with evaluate's
default batch size (32, as one writes it) and in one batch of all 1,437 sequences (its fastest
setting here). The results are compared first (they must agree)::

    python scripts/bench_oracle.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import adaptgrad  # noqa: E402
from adaptgrad import data as datasets  # noqa: E402
from adaptgrad.models import build_model  # noqa: E402


def plain_loop(model: keras.Model, units: adaptgrad.UnitView, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    base = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    delta = []
    for unit in range(units.size):
        units.gate([unit])
        delta.append(model.evaluate(x, y, batch_size=batch_size, verbose=0) - base)
        units.ungate([unit])
    units.edits.clear()
    return np.array(delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    data = datasets.load("digits")
    model = build_model("gru", units=args.units, input_shape=data.input_shape, outputs=data.outputs, task=data.task)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=2, verbose=0)
    x, y = data.x_train, data.y_train
    units = adaptgrad.unit_view(model, "gru")
    methods = {
        "adaptgrad.oracle": lambda: adaptgrad.oracle(model, "gru", (x, y)),
        "plain loop, evaluate batch 32": lambda: plain_loop(model, units, x, y, 32),
        f"plain loop, evaluate batch {len(x)}": lambda: plain_loop(model, units, x, y, len(x)),
    }
    results = {name: run() for name, run in methods.items()}  # warm-up, and the check
    fast = results["adaptgrad.oracle"]
    for name, values in results.items():
        print(f"max |oracle - {name}| = {np.abs(fast - values).max():.2e} (largest |change| {np.abs(values).max():.3g}; float32)")
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; GRU-{args.units}, digits train ({len(x)} sequences)"
    )
    print(f"| method | median s ({args.repeats} interleaved) | oracle / method |")
    print("|---|---:|---:|")
    for name, median in medians.items():
        print(f"| {name} | {median:.2f} | {medians['adaptgrad.oracle'] / median:.3f} |")


if __name__ == "__main__":
    main()
