"""Benchmark: what does capturing dL/d(layer output) cost per training epoch?

Run it from the project root (about half a minute with the defaults on 2 cores)::

    python scripts/bench_capture.py
    python scripts/bench_capture.py --samples 1024 --repeats 3 --eager-batches 4   # quick look
    python scripts/bench_capture.py --unroll       # every variant's RNN with unroll=True
    python scripts/bench_capture.py --cell gru     # a GRU layer instead of the MinimalRNN
    python scripts/bench_capture.py --stats gradient --stats grad_sum,act_abs_sum   # these sets only
    python scripts/bench_capture.py --threads 1    # TensorFlow on one thread (steadier on a shared machine)
    python scripts/bench_capture.py --xla          # also every fit variant compiled with XLA

It trains separately built models of the same architecture, ``Input((steps, features)) ->
RNN(MinimalRNNCell(units), name='rnn') -> Dense(1)`` (``--cell``: another of the runner's cells;
``--unroll``: the layer unrolled), with MSE and SGD on random data, in input
order (``shuffle=False``), and measures the wall time of one epoch of:

1. ``plain fit``: ``model.fit(dataset, epochs=1, verbose=0)`` without a watch (the baseline);
2. ``fit + watch (output)``: the same after ``adaptgrad.watch(model, 'rnn')``;
3. ``fit + watch (through time, <set>)``: the same after
   ``adaptgrad.watch(model, 'rnn', through_time=True, stats=<set>)``, one variant per ``--stats``
   set (default: ``all``, ``gradient`` = grad_sum, grad_abs_sum, grad_sq_sum, ``act_grad_sum``
   and ``none`` = ``stats=()``, which only counts batches and positions);
4. ``eager GradientTape loop``: the question's approach, by hand: a Python loop over batches
   without ``tf.function`` that splits the forward pass (``h = rnn(x)``, ``out = head(h)``),
   takes ``tape.gradient(loss, [h] + trainable_variables)``, accumulates in numpy the same
   per-unit sums the output-mode watch keeps, and applies the gradients with SGD. It is slow, so
   it runs only ``--eager-batches`` batches per round and its time is scaled up to a full epoch
   (``--eager-batches 0`` skips it).

With ``--xla``, every fit variant also runs with its train step compiled by XLA
(``jit_compile=True``, with op determinism off, checked to be in effect), named with the suffix
`` + XLA``, right after its twin without XLA in the same interleaved rounds; each is compared
with its twin below the table.

The data is fed as the runner feeds it (``adaptgrad.train.batches``: a ``tf.data`` pipeline
without the autotuner, whose thread otherwise makes a ``fit`` call that ends early wait for it,
up to ~0.3 s, at random).

Every variant is warmed up first (one epoch; ``--eager-batches`` batches for the eager loop), so
tracing is excluded. Then each of ``--repeats`` rounds times one epoch of every variant in turn,
so that slow phases of a shared machine hit all variants alike. The table gives each variant's
median epoch time and the median over rounds of its time divided by the plain fit's time in the
same round (the speed-ups over the eager loop are paired the same way). The bars from the issue
(output mode; through time with the ``gradient`` set and with ``act_grad_sum``) are printed as
PASS/FAIL lines for information only: the script always exits 0.

``scripts/bench.py`` runs the same measurement (:func:`measure`) as its ``capture`` section.
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import argparse
import dataclasses
import itertools
import platform
import statistics
import time
from collections.abc import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import adaptgrad
from adaptgrad._keras import set_op_determinism
from adaptgrad.models import CELLS, recurrent_layer
from adaptgrad.results.markdown import markdown_table
from adaptgrad.runtime import limit_threads
from adaptgrad.stats import SUM_FIELDS, requested_fields
from adaptgrad.train import batches

PLAIN = "plain fit"
WATCH_OUTPUT = "fit + watch (output)"
EAGER = "eager GradientTape loop"
XLA = " + XLA"
"""Suffix of a variant's name when its train step is compiled with XLA (``--xla``)."""
STATS_SETS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "gradient": ("grad_sum", "grad_abs_sum", "grad_sq_sum"),
    "act_grad_sum": ("act_grad_sum",),
    "none": (),
}
"""The named ``--stats`` sets (any comma-separated list of sum fields is accepted too)."""


def watch_time(stats: str) -> str:
    """The name of the through-time variant capturing the ``--stats`` set ``stats``."""
    return f"fit + watch (through time, {stats})"


BARS = {WATCH_OUTPUT: 1.03, watch_time("gradient"): 1.15, watch_time("act_grad_sum"): 1.25}
"""Largest acceptable ratio of a watched fit's epoch time to the plain fit's (variants not run
are left out)."""
EAGER_SPEEDUP_BAR = 5.0
"""Smallest acceptable speed-up of a watched fit over the eager loop."""


@dataclasses.dataclass(frozen=True)
class Config:
    samples: int
    repeats: int
    units: int
    steps: int
    features: int
    batch_size: int
    eager_batches: int
    unroll: bool = False
    cell: str = "minimal_rnn"
    stats: tuple[str, ...] = tuple(STATS_SETS)
    threads: int | None = None
    xla: bool = False

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.samples // self.batch_size)


@dataclasses.dataclass
class Variant:
    """One timed workload: ``run`` does ``1 / scale`` of an epoch."""

    run: Callable[[], None]
    scale: float = 1.0
    times: list[float] = dataclasses.field(default_factory=list)
    cpu_times: list[float] = dataclasses.field(default_factory=list)
    """This process's CPU time (all threads) per epoch: on a shared machine it depends less on the
    other tenants than the wall time does."""


def add_eager_batches(parser: argparse.ArgumentParser) -> None:
    """The ``--eager-batches`` option, shared with scripts/bench.py."""
    parser.add_argument(
        "--eager-batches",
        type=int,
        default=16,
        help="batches the eager loop runs per round, scaled up to an epoch; 0 skips it (16)",
    )


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096, help="training samples (4096)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--units", type=int, default=128, help="RNN units (128)")
    parser.add_argument("--steps", type=int, default=50, help="time steps per sequence (50)")
    parser.add_argument("--features", type=int, default=8, help="input features (8)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    parser.add_argument("--unroll", action="store_true", help="build the RNN with unroll=True")
    parser.add_argument("--cell", choices=CELLS, default="minimal_rnn", help="the recurrent layer's cell (minimal_rnn)")
    parser.add_argument(
        "--stats",
        action="append",
        type=stats_set,
        help=f"a through-time variant capturing this set: {', '.join(STATS_SETS)} or comma-separated sum "
        f"fields; repeat for several (default: all four named sets)",
    )
    parser.add_argument(
        "--threads", type=int, help="TensorFlow threads (intra- and inter-op; default: all); 1 steadies the CPU-time ratio"
    )
    parser.add_argument("--xla", action="store_true", help="also time every fit variant compiled with XLA (jit_compile=True)")
    add_eager_batches(parser)
    args = vars(parser.parse_args())
    args["stats"] = tuple(dict.fromkeys(args["stats"] or STATS_SETS))
    config = Config(**args)
    sizes = (config.samples, config.repeats, config.units, config.steps, config.features)
    if min(*sizes, config.batch_size) < 1:
        parser.error("sizes and counts must be >= 1 (only --eager-batches may be 0)")
    if not 0 <= config.eager_batches <= config.batches_per_epoch:
        parser.error(f"--eager-batches must be in [0, {config.batches_per_epoch}] (batches/epoch)")
    return config


def stats_set(text: str) -> str:
    """Check a ``--stats`` value: a named set or comma-separated sum fields."""
    try:
        fields_of(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}; named sets: {', '.join(STATS_SETS)}") from None
    return text


def fields_of(stats: str) -> tuple[str, ...] | None:
    """The ``stats=`` argument for a ``--stats`` value."""
    if stats in STATS_SETS:
        return STATS_SETS[stats]
    fields = tuple(name.strip() for name in stats.split(",") if name.strip())
    requested_fields(fields)
    return fields


def build_model(config: Config) -> keras.Model:
    """A fresh functional model; the fixed seed gives every variant the same initial weights."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((config.steps, config.features))
    hidden = recurrent_layer(config.cell, config.units, False, unroll=config.unroll, name="rnn")(inputs)
    outputs = keras.layers.Dense(1, name="head")(hidden)
    return keras.Model(inputs, outputs)


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
            (tf.constant(x[i : i + size]), tf.constant(y[i : i + size])) for i in range(0, config.eager_batches * size, size)
        ]
        self.sums = {field: np.zeros(config.units) for field in SUM_FIELDS}

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

    def run(self) -> None:
        for x, y in self.batches:
            self.step(x, y)


def build_variants(config: Config, x: np.ndarray, y: np.ndarray) -> tuple[dict[str, Variant], dict[str, adaptgrad.GradientWatch]]:
    variants: dict[str, Variant] = {}
    watches: dict[str, adaptgrad.GradientWatch] = {}
    data = batches(x, y, config.batch_size)
    watched = [(WATCH_OUTPUT, False, None), *((watch_time(s), True, fields_of(s)) for s in config.stats)]
    if config.xla:
        set_op_determinism(False)  # Keras drops XLA, with a warning, under op determinism
    modes = (False, True) if config.xla else (False,)
    for (fit_name, through_time, stats), xla in itertools.product(((PLAIN, None, None), *watched), modes):
        name = fit_name + XLA if xla else fit_name
        model = build_model(config)
        model.compile(optimizer=keras.optimizers.SGD(), loss="mse", jit_compile=xla)
        if model.jit_compile != xla:
            raise RuntimeError(f"{name}: Keras compiles with jit_compile={model.jit_compile}")
        if through_time is not None:
            watches[name] = adaptgrad.watch(model, "rnn", through_time=through_time, stats=stats)

        def fit_epoch(model: keras.Model = model) -> None:
            model.fit(data, epochs=1, shuffle=False, verbose=0)

        variants[name] = Variant(fit_epoch)
    if config.eager_batches:
        eager = EagerLoop(build_model(config), x, y, config)
        variants[EAGER] = Variant(eager.run, config.batches_per_epoch / config.eager_batches)
    return variants, watches


def time_rounds(variants: dict[str, Variant], repeats: int, *, warm_up: bool = True) -> None:
    """Warm every variant up (unless ``warm_up`` is False), then time ``repeats`` interleaved
    rounds into ``Variant.times``."""
    if warm_up:
        for variant in variants.values():
            variant.run()  # traces the train functions, builds the optimizers
    for round_index in range(repeats):
        for variant in variants.values():
            start, cpu_start = time.perf_counter(), time.process_time()
            variant.run()
            variant.times.append((time.perf_counter() - start) * variant.scale)
            variant.cpu_times.append((time.process_time() - cpu_start) * variant.scale)
        timings = ", ".join(f"{name} {v.times[-1]:.3f}s" for name, v in variants.items())
        print(f"round {round_index + 1}/{repeats}: {timings}", flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line naming the platform, CPU model, core count and Python/TensorFlow/Keras versions."""
    return (
        f"Machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}"
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def paired_ratio(numerator: Variant, denominator: Variant, cpu: bool = False) -> float:
    """Median over rounds of the quotient of the two epoch times (``cpu``: CPU times) measured in
    the same round."""
    if cpu:
        return statistics.median(n / d for n, d in zip(numerator.cpu_times, denominator.cpu_times))
    return statistics.median(n / d for n, d in zip(numerator.times, denominator.times))


def report(config: Config, variants: dict[str, Variant]) -> None:
    medians = {name: statistics.median(v.times) for name, v in variants.items()}
    ratios = {name: paired_ratio(v, variants[PLAIN]) for name, v in variants.items()}
    cpu_ratios = {name: paired_ratio(v, variants[PLAIN], cpu=True) for name, v in variants.items()}
    print()
    rows = []
    for name, variant in variants.items():
        label = name
        if name == EAGER:
            label += f" (timed on {config.eager_batches} batches, scaled x{variant.scale:g})"
        rows.append((label, f"{medians[name]:.3f}", f"{ratios[name]:.3f}", f"{cpu_ratios[name]:.3f}"))
    print(markdown_table(pd.DataFrame(rows, columns=["variant", "median epoch (s)", "ratio to plain fit", "CPU-time ratio"])))
    print()
    compiled = [name for name in variants if name.endswith(XLA)]
    for name in compiled:
        variant, twin = variants[name], variants[name.removesuffix(XLA)]
        print(f"{name} / without XLA: {paired_ratio(variant, twin):.3f} (CPU time {paired_ratio(variant, twin, cpu=True):.3f})")
    if compiled:
        print()
    print(machine_line())
    print(
        "Ratios and speed-ups: medians over rounds of the quotient of two epoch times measured "
        f"in the same round; CPU time: this process's, all threads. TensorFlow threads: {config.threads or 'all'}; "
        f"load average at the end: {os.getloadavg()[0]:.1f}"
    )
    print()
    bars = {name: bar for name, bar in BARS.items() if name in variants}
    for name, bar in bars.items():
        print(f"{verdict(ratios[name] <= bar)}: {name} / {PLAIN} = {ratios[name]:.3f} <= {bar:.2f}")
    if EAGER not in variants:
        print("SKIPPED: eager loop comparison (--eager-batches 0)")
        return
    for name in bars:
        speedup = paired_ratio(variants[EAGER], variants[name])
        ok = speedup >= EAGER_SPEEDUP_BAR
        print(f"{verdict(ok)}: {EAGER} / {name} = {speedup:.1f}x >= {EAGER_SPEEDUP_BAR:g}x")


def make_data(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 inputs ``(samples, steps, features)`` and targets ``(samples, 1)``, seed 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((config.samples, config.steps, config.features), dtype=np.float32)
    y = rng.standard_normal((config.samples, 1), dtype=np.float32)
    return x, y


def capture_check(config: Config, watches: dict[str, adaptgrad.GradientWatch]) -> str:
    """A line saying whether every watch accumulated every batch of the warm-up and the rounds."""
    expected = (config.repeats + 1) * config.batches_per_epoch
    seen = {name: watch.stats().batches for name, watch in watches.items()}
    status = "ok" if all(batches == expected for batches in seen.values()) else "MISMATCH"
    counts = ", ".join(f"{name}: {batches}" for name, batches in seen.items())
    return f"Capture check, batches accumulated: {counts} (expected {expected}): {status}"


def measure(config: Config) -> tuple[dict[str, Variant], str]:
    """Build the variants, time them (printing each round) and return them with the capture check."""
    x, y = make_data(config)
    variants, watches = build_variants(config, x, y)
    print(
        f"{config.samples} samples x {config.steps} steps x {config.features} features, "
        f"{config.cell}, {config.units} units{' (unrolled)' if config.unroll else ''}, batch {config.batch_size} "
        f"({config.batches_per_epoch} batches/epoch); {config.repeats} interleaved rounds "
        f"after a warm-up per variant",
        flush=True,
    )
    time_rounds(variants, config.repeats)
    return variants, capture_check(config, watches)


def main() -> None:
    config = parse_args()
    if config.threads:
        limit_threads(config.threads)
    started = time.perf_counter()
    variants, check = measure(config)
    print(check)
    report(config, variants)
    print(f"\nTotal wall time (after imports): {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
