"""Benchmark: what do the growth statistic and a layer's reserved (gated) units cost per epoch?

Run it from the project root (a few minutes with the defaults on 2 cores)::

    python scripts/bench_growth.py
    python scripts/bench_growth.py --cell minimal_rnn --repeats 3    # another layer, a quick look
    python scripts/bench_growth.py --threads 1                       # steadier on a shared machine

Two tables, each from interleaved rounds (every variant timed once per round, so slow phases of
a shared machine hit all alike), after one warm-up epoch per variant (tracing excluded); a
variant's median epoch time, and the median over rounds of its time divided by the baseline's
in the same round (wall and CPU time):

1. **The growth statistic** (:func:`adaptgrad.growth.watch_growth`), on ``Input((steps,
   features)) -> <cell>(units) -> Dense(1)`` (``--cell dense``: ``Flatten -> Dense(units, tanh)``
   in its place), MSE, SGD: ``plain fit`` against ``fit + growth statistic``; for a recurrent
   layer also a through-time watch capturing nothing (``stats=()``, the runner's default capture
   mode) without and with the growth statistic, for reference. Bar (issue 19): growth statistic /
   plain fit <= 1.3.
2. **Reserved units**: a layer of ``units`` with all but ``--start`` gated (``rule.start_units``)
   against a physical layer of ``--start`` units and a full one of ``units``, plain fit.

Data: random, fed as the runner feeds it (``adaptgrad.train.batches``). Always exits 0.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import statistics  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from bench_capture import Variant, machine_line, paired_ratio, time_rounds, verdict  # noqa: E402

import adaptgrad  # noqa: E402
from adaptgrad.growth import watch_growth  # noqa: E402
from adaptgrad.models import CELLS, recurrent_layer  # noqa: E402
from adaptgrad.results.markdown import markdown_table  # noqa: E402
from adaptgrad.runtime import limit_threads  # noqa: E402
from adaptgrad.train import batches  # noqa: E402

PLAIN, GROWTH = "plain fit", "fit + growth statistic"
WATCH, WATCH_GROWTH = "fit + watch (through time, stats=())", "fit + watch (through time, stats=()) + growth statistic"
BAR = 1.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cell", choices=[*CELLS, "dense"], default="gru", help="the layer (gru; dense: Dense(tanh) on the flattened sequence)"
    )
    parser.add_argument("--units", type=int, default=64, help="layer width (64)")
    parser.add_argument("--start", type=int, default=16, help="active units of the reserved-units variant (16)")
    parser.add_argument("--samples", type=int, default=2048, help="training samples (2048)")
    parser.add_argument("--steps", type=int, default=20, help="time steps (20)")
    parser.add_argument("--features", type=int, default=8, help="input features (8)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--threads", type=int, help="TensorFlow threads (default: all)")
    args = parser.parse_args()
    if (
        min(args.units, args.start, args.samples, args.steps, args.features, args.batch_size, args.repeats) < 1
        or args.start > args.units
    ):
        parser.error("sizes and counts must be >= 1 and --start <= --units")
    return args


def model_of(args: argparse.Namespace, units: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((args.steps, args.features))
    if args.cell == "dense":
        hidden = keras.layers.Dense(units, activation="tanh", name="rnn")(keras.layers.Flatten()(inputs))
    else:
        hidden = recurrent_layer(args.cell, units, False, name="rnn")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def variant(model: keras.Model, data) -> Variant:
    return Variant(lambda: model.fit(data, epochs=1, verbose=0, shuffle=False))


def main() -> None:
    args = parse_args()
    if args.threads:
        limit_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, args.steps, args.features)).astype(np.float32)
    y = rng.normal(size=(args.samples, 1)).astype(np.float32)
    data = batches(x, y, args.batch_size)
    print(machine_line())
    print(
        f"{args.cell}({args.units}) -> Dense(1), {args.samples} samples x {args.steps} steps x {args.features} features, "
        f"batches of {args.batch_size}, {args.repeats} rounds"
    )

    names = (PLAIN, GROWTH) if args.cell == "dense" else (PLAIN, GROWTH, WATCH, WATCH_GROWTH)  # no time to watch through
    models = {name: model_of(args, args.units) for name in names}
    for name in set(names) & {WATCH, WATCH_GROWTH}:
        adaptgrad.watch(models[name], "rnn", through_time=True, stats=())
    for name in set(names) & {GROWTH, WATCH_GROWTH}:
        watch_growth(models[name], "rnn")
    variants = {name: variant(model, data) for name, model in models.items()}
    time_rounds(variants, args.repeats)
    table(variants, PLAIN)
    ratio = paired_ratio(variants[GROWTH], variants[PLAIN])
    print(f"\n{verdict(ratio <= BAR)}: growth statistic / plain fit = {ratio:.3f} (bar <= {BAR})")

    reserved = f"{args.units} units, {args.units - args.start} gated"
    models = {f"{args.start} units": model_of(args, args.start), reserved: model_of(args, args.units)}
    adaptgrad.unit_view(models[reserved], "rnn").gate(range(args.start, args.units))
    models[f"{args.units} units"] = model_of(args, args.units)
    variants = {name: variant(model, data) for name, model in models.items()}
    print()
    time_rounds(variants, args.repeats)
    table(variants, f"{args.start} units")


def table(variants: dict[str, Variant], baseline: str) -> None:
    rows = [
        (
            name,
            f"{statistics.median(v.times):.3f}",
            f"{paired_ratio(v, variants[baseline]):.3f}",
            f"{paired_ratio(v, variants[baseline], cpu=True):.3f}",
        )
        for name, v in variants.items()
    ]
    columns = ["variant", "median epoch (s)", f"ratio to {baseline}", "CPU-time ratio"]
    print()
    print(markdown_table(pd.DataFrame(rows, columns=columns)))


if __name__ == "__main__":
    main()
