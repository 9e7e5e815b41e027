"""Benchmark: what does ``adaptgrad.compact`` save? Parameters and ``predict`` time, compact vs gated.

Run it from the project root (about a minute with the defaults on 2 cores)::

    python scripts/bench_compact.py
    python scripts/bench_compact.py --units 64 --repeats 3     # quick look

It builds ``Input((steps, features)) -> GRU(units) -> Dense(1)``, trains it one epoch, gates
``--gated`` of the GRU's units (every other unit) with :func:`adaptgrad.unit_view`, and builds
``adaptgrad.compact(model)``. Both models are warmed up with one ``predict``; then each of
``--repeats`` rounds times one ``model.predict(x, batch_size=...)`` of each model in turn, so that
slow phases of a shared machine hit both alike. The table gives parameters, the median predict
time and the median over rounds of the compact/gated time ratio; the largest difference between
the two models' predictions is printed as a check.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import adaptgrad


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=256, help="GRU units (256)")
    parser.add_argument("--gated", type=float, default=0.5, help="fraction of units gated (0.5)")
    parser.add_argument("--samples", type=int, default=2048, help="samples predicted (2048)")
    parser.add_argument("--steps", type=int, default=50, help="time steps (50)")
    parser.add_argument("--features", type=int, default=8, help="input features (8)")
    parser.add_argument("--batch-size", type=int, default=256, help="predict batch size (256)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (7)")
    args = parser.parse_args()
    if min(args.units, args.samples, args.steps, args.features, args.batch_size, args.repeats) < 1:
        parser.error("sizes and counts must be >= 1")
    if not 0 <= args.gated < 1:
        parser.error(f"--gated must be in [0, 1), got {args.gated}")
    return args


def gated_and_compact(args: argparse.Namespace, x: np.ndarray) -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((args.steps, args.features)), keras.layers.GRU(args.units, name="gru"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    y = np.random.default_rng(1).standard_normal((len(x), 1)).astype(np.float32)
    model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    count = int(round(args.gated * args.units))
    gated = np.linspace(0, args.units, count, endpoint=False).astype(int)  # spread over the layer
    units = adaptgrad.unit_view(model, "gru")
    units.gate(gated)
    return model, adaptgrad.compact(model)


def main() -> None:
    args = parse_args()
    x = np.random.default_rng(0).standard_normal((args.samples, args.steps, args.features)).astype(np.float32)
    models = dict(zip(("gated", "compact"), gated_and_compact(args, x)))
    outputs = {name: model.predict(x, batch_size=args.batch_size, verbose=0) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(x, batch_size=args.batch_size, verbose=0)
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(c / g for c, g in zip(times["compact"], times["gated"]))
    print(
        f"GRU-{args.units}, {args.gated:.0%} of units gated; predict {args.samples} x {args.steps} steps x "
        f"{args.features} features, batch {args.batch_size}; {args.repeats} interleaved rounds after a warm-up"
    )
    print()
    print("| model | GRU units | parameters | median predict (s) |")
    print("|---|---:|---:|---:|")
    for name, model in models.items():
        print(f"| {name} | {model.get_layer('gru').units} | {model.count_params():,} | {statistics.median(times[name]):.3f} |")
    print()
    print(f"compact / gated predict time: {ratio:.2f} (median of per-round ratios)")
    print(f"largest prediction difference: {np.abs(outputs['compact'] - outputs['gated']).max():.2e}")
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, GPU: {tf.config.list_physical_devices('GPU') or 'none'}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


if __name__ == "__main__":
    main()
