"""Benchmark: what does capturing dL/d(layer output) cost per training epoch?

Run it from the project root (takes a few minutes with the defaults on 2 cores)::

    python scripts/bench_capture.py
    python scripts/bench_capture.py --samples 1024 --repeats 3 --eager-batches 4   # quick look

It trains four separately built models of the same architecture, ``Input((steps, features)) ->
RNN(MinimalRNNCell(units), name='rnn') -> Dense(1)``, with MSE and SGD on random data, batch by
batch in input order (``shuffle=False``), and measures the wall time of one epoch of:

1. ``plain fit``: ``model.fit(..., epochs=1, verbose=0)`` without a watch (the baseline);
2. ``fit + watch (output)``: the same with ``adaptgrad.watch(model, 'rnn')``;
3. ``fit + watch (through time)``: the same with ``adaptgrad.watch(model, 'rnn', through_time=True)``;
4. ``eager GradientTape loop``: the question's approach, by hand: a Python loop over batches
   without ``tf.function`` that splits the forward pass (``h = rnn(x)``, ``out = head(h)``),
   takes ``tape.gradient(loss, [h] + trainable_variables)``, accumulates in numpy the same
   per-unit sums the output-mode watch keeps, and applies the gradients with SGD. It is slow, so
   it runs only ``--eager-batches`` batches per round and its time is scaled up to a full epoch
   (``--eager-batches 0`` skips it).

Every variant is warmed up first (one epoch; ``--eager-batches`` batches for the eager loop) so
that tracing is excluded. Then each of ``--repeats`` rounds times one epoch of every variant in
turn, so that slow phases of a shared machine hit all variants alike. The table gives the median
epoch time of each variant and the median over rounds of its time divided by the plain fit's time
in the same round. The bars from the issue are printed as PASS/FAIL lines for information only:
the script never fails on them.
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import argparse
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

import adaptgrad
from adaptgrad.cells import MinimalRNNCell
from adaptgrad.stats import SUM_FIELDS

PLAIN = "plain fit"
WATCH_OUTPUT = "fit + watch (output)"
WATCH_TIME = "fit + watch (through time)"
EAGER = "eager GradientTape loop"


@dataclasses.dataclass(frozen=True)
class Config:
    samples: int
    repeats: int
    units: int
    steps: int
    features: int
    batch_size: int
    eager_batches: int

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.samples // self.batch_size)


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096, help="training samples (default 4096)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--units", type=int, default=128, help="RNN units (default 128)")
    parser.add_argument("--steps", type=int, default=50, help="time steps per sequence (default 50)")
    parser.add_argument("--features", type=int, default=8, help="input features (default 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument(
        "--eager-batches",
        type=int,
        default=8,
        help="batches the eager loop runs per round, scaled up to an epoch; 0 skips it (default 8)",
    )
    args = parser.parse_args()
    config = Config(**vars(args))
    if min(config.samples, config.repeats, config.units, config.steps, config.features, config.batch_size) < 1:
        parser.error("--samples, --repeats, --units, --steps, --features, --batch-size must be >= 1")
    if not 0 <= config.eager_batches <= config.batches_per_epoch:
        parser.error(f"--eager-batches must be in [0, {config.batches_per_epoch}] (batches per epoch)")
    return config


def build_model(config: Config) -> keras.Model:
    """A fresh functional model; the same seed gives every variant the same initial weights."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((config.steps, config.features))
    hidden = keras.layers.RNN(MinimalRNNCell(config.units), name="rnn")(inputs)
    outputs = keras.layers.Dense(1, name="head")(hidden)
    return keras.Model(inputs, outputs)


def fit_epoch(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> Callable[[], None]:
    def run() -> None:
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)

    return run


class EagerLoop:
    """The question's hand-written capture: eager GradientTape steps, per-unit sums in numpy."""

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, config: Config) -> None:
        self.rnn = model.get_layer("rnn")
        self.head = model.get_layer("head")
        self.variables = model.trainable_variables
        self.loss_fn = keras.losses.MeanSquaredError()
        self.optimizer = keras.optimizers.SGD()
        size = config.batch_size
        self.batches = [
            (tf.constant(x[i : i + size]), tf.constant(y[i : i + size]))
            for i in range(0, config.eager_batches * size, size)
        ]
        self.sums = {field: np.zeros(config.units) for field in SUM_FIELDS}
        self.batches_seen = 0

    def step(self, x: tf.Tensor, y: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            h = self.rnn(x)
            loss = self.loss_fn(y, self.head(h))
        g, *grads = tape.gradient(loss, [h, *self.variables])
        self.optimizer.apply_gradients(zip(grads, self.variables))
        h_np, g_np = h.numpy(), g.numpy()
        hg = h_np * g_np
        self.sums["grad_sum"] += g_np.sum(axis=0)
        self.sums["grad_abs_sum"] += np.abs(g_np).sum(axis=0)
        self.sums["grad_sq_sum"] += np.square(g_np).sum(axis=0)
        self.sums["act_grad_sum"] += hg.sum(axis=0)
        self.sums["act_grad_batch_sq_sum"] += np.square(hg.sum(axis=0))
        self.sums["act_abs_sum"] += np.abs(h_np).sum(axis=0)
        self.batches_seen += 1

    def run(self) -> None:
        for x, y in self.batches:
            self.step(x, y)


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    config = parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((config.samples, config.steps, config.features), dtype=np.float32)
    y = rng.standard_normal((config.samples, 1), dtype=np.float32)

    runs: dict[str, Callable[[], None]] = {}
    watches: dict[str, adaptgrad.GradientWatch] = {}
    for name, through_time in ((PLAIN, None), (WATCH_OUTPUT, False), (WATCH_TIME, True)):
        model = build_model(config)
        model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
        if through_time is not None:
            watches[name] = adaptgrad.watch(model, "rnn", through_time=through_time)
        runs[name] = fit_epoch(model, x, y, config.batch_size)
    eager = EagerLoop(build_model(config), x, y, config) if config.eager_batches else None
    if eager is not None:
        runs[EAGER] = eager.run
    # The eager loop covers only part of an epoch: scale its time to a whole one.
    scale = {name: 1.0 for name in runs}
    if eager is not None:
        scale[EAGER] = config.batches_per_epoch / config.eager_batches

    print(
        f"{config.samples} samples x {config.steps} steps x {config.features} features, "
        f"{config.units} units, batch {config.batch_size} ({config.batches_per_epoch} batches/epoch), "
        f"{config.repeats} interleaved rounds after 1 warm-up epoch per variant",
        flush=True,
    )
    for run in runs.values():
        run()  # warm-up: traces the train functions, builds the optimizers
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(config.repeats):
        for name, run in runs.items():
            times[name].append(timed(run) * scale[name])
        print(
            f"round {round_index + 1}/{config.repeats}: "
            + ", ".join(f"{name} {values[-1]:.3f}s" for name, values in times.items()),
            flush=True,
        )

    expected_batches = (config.repeats + 1) * config.batches_per_epoch
    for name, watch in watches.items():
        batches = watch.stats().batches
        if batches != expected_batches:
            print(f"WARNING: {name} accumulated {batches} batches, expected {expected_batches}")

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        name: statistics.median(t / p for t, p in zip(values, times[PLAIN]))
        for name, values in times.items()
    }
    print()
    print("| variant | median epoch (s) | ratio to plain fit |")
    print("|---|---:|---:|")
    for name in runs:
        label = name
        if name == EAGER:
            label += f" (timed on {config.eager_batches} batches, scaled x{scale[EAGER]:g})"
        print(f"| {label} | {medians[name]:.3f} | {ratios[name]:.3f} |")
    print()
    print(
        f"Machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    print("Ratio: median over rounds of (variant epoch / plain fit epoch in the same round).")
    print()
    print(f"{verdict(ratios[WATCH_OUTPUT] <= 1.03)}: watch (output) / plain = {ratios[WATCH_OUTPUT]:.3f} <= 1.03")
    print(f"{verdict(ratios[WATCH_TIME] <= 1.10)}: watch (through time) / plain = {ratios[WATCH_TIME]:.3f} <= 1.10")
    if eager is not None:
        for name in (WATCH_OUTPUT, WATCH_TIME):
            speedup = medians[EAGER] / medians[name]
            print(f"{verdict(speedup >= 5)}: eager loop / {name} = {speedup:.1f}x >= 5x")
    else:
        print("SKIPPED: eager loop comparison (--eager-batches 0)")
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
