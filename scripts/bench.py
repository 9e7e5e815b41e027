"""Benchmark suite: what adaptgrad costs, as ratios of times measured side by side.

Run it from the project root (about 4 minutes with the defaults on 2 cores)::

    python scripts/bench.py                          # every section
    python scripts/bench.py --only sweep             # one section (or several: --only adapt memory)
    python scripts/bench.py --repeats 2 --samples 1024 --sweep-repeats 1 --sweep-epochs 1  # quick look

Sections:

``capture``
    The measurement of ``scripts/bench_capture.py`` (imported, not copied): one epoch of plain
    ``model.fit`` vs fit after ``adaptgrad.watch(model, 'rnn')`` (output) vs after
    ``watch(..., through_time=True)`` vs the question's eager ``GradientTape`` loop (timed on
    ``--eager-batches`` batches and scaled to an epoch), for ``RNN(MinimalRNNCell(128))`` on
    ``--samples`` random sequences of 50 steps x 8 features, batch 64, SGD.
``adapt``
    One epoch of plain ``model.fit`` vs ``model.fit(callbacks=[adaptgrad.Adapt(adaptgrad.watch(
    model, layer), [rule])])`` with ``GainRescale()`` (rescales every unit every epoch) and with
    ``TaylorPrune(fraction=0.05)`` (gates 5% of the active units every epoch), for a layer of
    ``--adapt-units`` units of cell ``--adapt-cell`` (``adaptgrad.models.build_model``, Adam, the
    same data as ``capture``). The callback is a subclass of ``Adapt`` that times each of its
    ``on_epoch_end`` calls, so the table also gives that time as a share of its epoch (the
    issue's bar: <= 1% for a 256-unit layer).
``sweep``
    Wall time of the whole command ``python -m adaptgrad -m rule=none,taylor_prune seed=0,1
    data=adding data.length=50 model=gru trainer.epochs=E hydra.sweep.dir=...`` (4 jobs) with
    Hydra's basic launcher (each job on all cores) vs with ``hydra/launcher=joblib
    hydra.launcher.n_jobs=2 trainer.threads=1`` (one job per core; bar: joblib >= 1.5x faster).
    Each run is a subprocess writing into a fresh temporary sweep dir; no warm-up.
``memory``
    One epoch of fit with a through-time watch on each of ``--memory-sizes`` datasets: the bytes
    held by the watch's accumulator variables and by a ``stats()`` snapshot must not depend on
    the data size (O(units)); the growth of the process's peak RSS over each epoch is shown for
    context. It runs before the other sections, whose models would already have raised the peak.

Timed sections run interleaved rounds: each round times every variant once, in turn (after a
warm-up epoch per variant for capture and adapt, so tracing is excluded), so that slow phases of
a shared machine hit all variants alike. A ratio is the median over rounds of the quotient of two
times measured in the same round; the medians A and B are over rounds. PASS/FAIL compares with
the issue's bars and is for information only: the script always exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bench_capture  # first: it sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
import keras
import numpy as np
import pandas as pd
from bench_capture import EAGER, PLAIN, Config, Variant, add_eager_batches, paired_ratio, time_rounds, verdict
from omegaconf import OmegaConf

import adaptgrad
from adaptgrad.models import CELLS, LAYER_NAMES, build_model
from adaptgrad.results.markdown import markdown_table
from adaptgrad.rules import AdaptationRule, GainRescale, TaylorPrune
from adaptgrad.stats import SUM_FIELDS
from adaptgrad.train import batches

STEPS, FEATURES, BATCH_SIZE = 50, 8, 64
"""Sequence shape and batch size of the capture, adapt and memory sections."""
CAPTURE_UNITS = 128
ADAPT_BAR = 0.01
"""Largest acceptable share of an epoch spent in ``Adapt.on_epoch_end``."""
SWEEP_SPEEDUP_BAR = 1.5
"""Smallest acceptable speed-up of the joblib launcher (2 workers) over the basic launcher."""
SWEEP_GRID = ["rule=none,taylor_prune", "seed=0,1"]
SWEEP_JOBS = len(SWEEP_GRID[0].split(",")) * len(SWEEP_GRID[1].split(","))
SWEEP_SETTINGS = ["data=adding", "data.length=50", "model=gru"]
LAUNCHERS = {
    "basic launcher": [],
    "joblib n_jobs=2, 1 thread per job": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1"],
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table; ``ratio`` is A / B (a quotient, a percentage or a speed-up)."""

    section: str
    comparison: str
    a: str
    b: str
    ratio: str
    bar: str
    result: str


@dataclasses.dataclass(frozen=True)
class Section:
    """What a section returns: its table rows and the notes printed under the table."""

    rows: list[Row]
    notes: list[str]


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def median_time(variant: Variant) -> str:
    return seconds(statistics.median(variant.times))


def mebibytes(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def fit_config(args: argparse.Namespace, units: int, eager_batches: int = 0) -> Config:
    """The shared data and batch shape of the in-process sections, for a layer of ``units``."""
    return Config(
        samples=args.samples,
        repeats=args.repeats,
        units=units,
        steps=STEPS,
        features=FEATURES,
        batch_size=BATCH_SIZE,
        eager_batches=eager_batches,
    )


# -- capture --------------------------------------------------------------------------------------


def run_capture(args: argparse.Namespace) -> Section:
    config = fit_config(args, CAPTURE_UNITS, args.eager_batches)
    variants, check = bench_capture.measure(config)
    plain = variants[PLAIN]
    rows = []
    for name, bar in bench_capture.BARS.items():
        ratio = paired_ratio(variants[name], plain)
        rows.append(
            Row(
                "capture",
                f"{name} / {PLAIN}",
                median_time(variants[name]),
                median_time(plain),
                f"{ratio:.3f}",
                f"<= {bar:g}",
                verdict(ratio <= bar),
            )
        )
    if EAGER in variants:
        bar = bench_capture.EAGER_SPEEDUP_BAR
        for name in bench_capture.BARS:
            speedup = paired_ratio(variants[EAGER], variants[name])
            rows.append(
                Row(
                    "capture",
                    f"{EAGER} / {name}",
                    median_time(variants[EAGER]),
                    median_time(variants[name]),
                    f"{speedup:.1f}x",
                    f">= {bar:g}x",
                    verdict(speedup >= bar),
                )
            )
        eager = f"the eager loop timed on {config.eager_batches} batches, scaled x{variants[EAGER].scale:g}"
    else:
        eager = "eager loop skipped (--eager-batches 0)"
    notes = [
        f"capture: RNN(MinimalRNNCell({config.units})) -> Dense(1), {config.samples} samples x {STEPS} steps x "
        f"{FEATURES} features, batch {BATCH_SIZE}, SGD; repeats={config.repeats}; {eager}. {check}."
    ]
    return Section(rows, notes)


# -- adapt ----------------------------------------------------------------------------------------


class TimedAdapt(adaptgrad.Adapt):
    """:class:`adaptgrad.Adapt` with one rule, recording the wall time of each ``on_epoch_end``."""

    def __init__(self, watch: adaptgrad.GradientWatch, rule: AdaptationRule) -> None:
        super().__init__(watch, [rule])
        self.durations: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        start = time.perf_counter()
        super().on_epoch_end(epoch, logs)
        self.durations.append(time.perf_counter() - start)


def epoch_runner(
    model: keras.Model, x: np.ndarray, y: np.ndarray, callbacks: list[keras.callbacks.Callback]
) -> Callable[[], None]:
    """A function that trains ``model`` one more epoch per call, numbering the epochs on."""
    epochs = itertools.count()
    data = batches(x, y, BATCH_SIZE)

    def run() -> None:
        epoch = next(epochs)
        model.fit(data, initial_epoch=epoch, epochs=epoch + 1, shuffle=False, verbose=0, callbacks=callbacks)

    return run


def adapt_model(cell: str, config: Config) -> keras.Model:
    """A fresh compiled model; the fixed seed gives every variant the same initial weights."""
    keras.utils.set_random_seed(0)
    model = build_model(cell, units=config.units, input_shape=(config.steps, config.features), outputs=1, task="regression")
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    return model


def edits_summary(callback: TimedAdapt, epochs: int) -> str:
    """How many edits of which kind the callback's rule made per epoch, and the units left active."""
    actions = callback.actions_frame()
    per_epoch = actions.groupby("epoch").size().reindex(range(epochs), fill_value=0)
    low, high = int(per_epoch.min()), int(per_epoch.max())
    count = str(low) if low == high else f"{low}-{high}"
    kinds = "/".join(actions.action.unique()) or "no"
    active = int(callback.units.active.sum())
    return f"{callback.rules[0].label} made {count} {kinds} edits per epoch ({active}/{callback.units.size} active at the end)"


def run_adapt(args: argparse.Namespace) -> Section:
    config = fit_config(args, args.adapt_units)
    x, y = bench_capture.make_data(config)
    variants = {PLAIN: Variant(epoch_runner(adapt_model(args.adapt_cell, config), x, y, []))}
    callbacks: dict[str, TimedAdapt] = {}
    for rule in (GainRescale(), TaylorPrune(fraction=0.05)):
        model = adapt_model(args.adapt_cell, config)
        name = f"fit + Adapt({type(rule).__name__})"
        callbacks[name] = TimedAdapt(adaptgrad.watch(model, LAYER_NAMES[args.adapt_cell]), rule)
        variants[name] = Variant(epoch_runner(model, x, y, [callbacks[name]]))
    print(
        f"{args.adapt_cell} layer of {config.units} units, {config.samples} samples x {STEPS} steps x {FEATURES} "
        f"features, batch {BATCH_SIZE}; {config.repeats} interleaved rounds after a warm-up per variant",
        flush=True,
    )
    time_rounds(variants, config.repeats)

    plain = variants[PLAIN]
    rows = []
    for name, callback in callbacks.items():
        variant = variants[name]
        ratio = paired_ratio(variant, plain)
        rows.append(Row("adapt", f"{name} / {PLAIN}", median_time(variant), median_time(plain), f"{ratio:.3f}", "-", "info"))
        timed = callback.durations[-config.repeats :]  # the warm-up epoch's call comes first
        share = statistics.median(d / t for d, t in zip(timed, variant.times))
        rows.append(
            Row(
                "adapt",
                f"{name}: time in on_epoch_end / epoch",
                f"{statistics.median(timed) * 1e3:.1f} ms",
                median_time(variant),
                f"{share:.2%}",
                f"<= {ADAPT_BAR:.0%}",
                verdict(share <= ADAPT_BAR),
            )
        )
    edits = "; ".join(edits_summary(callback, config.repeats + 1) for callback in callbacks.values())
    notes = [
        f"adapt: {args.adapt_cell} layer of {config.units} units -> Dense(1), {config.samples} samples x {STEPS} "
        f"steps x {FEATURES} features, batch {BATCH_SIZE}, Adam, watch in output mode; repeats={config.repeats}. "
        f"The fit ratios include the watch, the unit mask and the callback. {edits}."
    ]
    return Section(rows, notes)


# -- sweep ----------------------------------------------------------------------------------------


def sweep_runner(root: Path, launcher: list[str], epochs: int, job_times: list[float]) -> Callable[[], None]:
    """A function that runs the sweep once into a fresh dir under ``root``, raises unless every job
    completed, and appends each job's own wall time (from its ``result.json``) to ``job_times``."""
    runs = itertools.count()
    tag = launcher[0].split("=")[1] if launcher else "basic"

    def run() -> None:
        sweep_dir = root / f"{tag}-{next(runs)}"
        command = [
            sys.executable,
            "-m",
            "adaptgrad",
            "-m",
            *SWEEP_GRID,
            *SWEEP_SETTINGS,
            f"trainer.epochs={epochs}",
            f"hydra.sweep.dir={sweep_dir}",
            *launcher,
        ]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
        results = [json.loads(path.read_text()) for path in sweep_dir.glob("*/result.json")]
        ok = [result for result in results if result.get("status") == "ok"]
        if done.returncode != 0 or len(ok) != SWEEP_JOBS:
            tail = "; ".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"{' '.join(command[1:])}: exit code {done.returncode}, {len(ok)}/{SWEEP_JOBS} jobs ok: {tail}")
        job_times.extend(result["wall_time"] for result in ok)

    return run


def job_description(config_file: Path) -> str:
    """What a sweep job trained, read from the resolved config it wrote."""
    cfg = OmegaConf.load(config_file)
    validation = round(cfg.data.samples * cfg.data.val_fraction)
    return (
        f"{cfg.model.cell} of {cfg.model.units} units on {cfg.data._target_.rsplit('.', 1)[1]} (length "
        f"{cfg.data.length}, {cfg.data.samples - validation} train / {validation} validation sequences), batch "
        f"{cfg.trainer.batch_size}, {cfg.optimizer._target_.rsplit('.', 1)[1]}, watch "
        f"{'through time' if cfg.through_time else 'in output mode'}, "
        f"{'a checkpoint after every epoch' if cfg.trainer.checkpoint else 'no checkpoints'}"
    )


def run_sweep(args: argparse.Namespace) -> Section:
    job_times: dict[str, list[float]] = {label: [] for label in LAUNCHERS}
    with tempfile.TemporaryDirectory(prefix="adaptgrad-bench-") as tmp:
        variants = {
            label: Variant(sweep_runner(Path(tmp), launcher, args.sweep_epochs, job_times[label]))
            for label, launcher in LAUNCHERS.items()
        }
        print(
            f"{SWEEP_JOBS}-job sweep, {args.sweep_epochs} epochs per job; {args.sweep_repeats} interleaved rounds, no warm-up",
            flush=True,
        )
        time_rounds(variants, args.sweep_repeats, warm_up=False)
        job = job_description(next(Path(tmp).glob("*/*/config.yaml")))
    basic, joblib = variants.values()
    speedup = paired_ratio(basic, joblib)
    labels = list(LAUNCHERS)
    rows = [
        Row(
            "sweep",
            f"{labels[0]} / {labels[1]} (whole command)",
            median_time(basic),
            median_time(joblib),
            f"{speedup:.2f}x",
            f">= {SWEEP_SPEEDUP_BAR:g}x",
            verdict(speedup >= SWEEP_SPEEDUP_BAR),
        )
    ]
    jobs = ", ".join(f"{label} {statistics.median(times):.1f} s" for label, times in job_times.items())
    notes = [
        f"sweep: `python -m adaptgrad -m {' '.join(SWEEP_GRID + SWEEP_SETTINGS)} trainer.epochs={args.sweep_epochs}`, "
        f"{SWEEP_JOBS} jobs, each a {job}, {args.sweep_epochs} epochs. Median "
        f"wall time of one job (its result.json: data, model, training) with the {jobs}; the rest of the "
        f"command's time is process start-up and shutdown (Python, TensorFlow, Hydra: one process with the "
        f"basic launcher, the main process and 2 loky workers with joblib). repeats={args.sweep_repeats}."
    ]
    return Section(rows, notes)


# -- memory ---------------------------------------------------------------------------------------


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def accumulator_bytes(watch: adaptgrad.GradientWatch) -> int:
    """Bytes of the watch's accumulator variables: the per-unit sums and the two counters."""
    accumulators = watch._accumulators
    variables = [*accumulators.sums.values(), accumulators.batches, accumulators.count]
    return sum(v.shape.num_elements() * v.dtype.size for v in variables)


@dataclasses.dataclass(frozen=True)
class MemoryPoint:
    """What one epoch on ``samples`` samples left: batches counted, bytes held, peak RSS growth."""

    samples: int
    batches: int
    accumulators: int
    snapshot: int
    rss_growth: int


def run_memory(args: argparse.Namespace) -> Section:
    sizes = sorted(set(args.memory_sizes))
    config = dataclasses.replace(fit_config(args, CAPTURE_UNITS), samples=sizes[-1])
    x, y = bench_capture.make_data(config)
    model = bench_capture.build_model(config)
    model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
    watch = adaptgrad.watch(model, "rnn", through_time=True)
    model.fit(x[:BATCH_SIZE], y[:BATCH_SIZE], batch_size=BATCH_SIZE, verbose=0)  # traces the train step
    watch.reset()
    points = []
    for size in sizes:
        before = peak_rss()
        model.fit(x[:size], y[:size], batch_size=BATCH_SIZE, shuffle=False, verbose=0)
        stats = watch.stats()
        snapshot = sum(getattr(stats, field).nbytes for field in SUM_FIELDS)
        point = MemoryPoint(size, stats.batches, accumulator_bytes(watch), snapshot, peak_rss() - before)
        points.append(point)
        print(
            f"{size} samples: {point.batches} batches accumulated, accumulators {point.accumulators} B, "
            f"stats() arrays {point.snapshot} B, peak RSS +{mebibytes(point.rss_growth)}",
            flush=True,
        )
        watch.reset()

    expected_sums = len(SUM_FIELDS) * config.units * np.dtype(np.float64).itemsize
    expected = expected_sums + 2 * np.dtype(np.float64).itemsize
    counted = all(p.batches == math.ceil(p.samples / BATCH_SIZE) for p in points)
    small, large = points[0], points[-1]
    rows = [
        Row(
            "memory",
            f"watch accumulators: {large.samples} / {small.samples} samples",
            f"{large.accumulators:,} B",
            f"{small.accumulators:,} B",
            f"{large.accumulators / small.accumulators:.3f}",
            f"= 1 ({expected:,} B)",
            verdict(counted and all(p.accumulators == expected for p in points)),
        ),
        Row(
            "memory",
            f"stats() snapshot arrays: {large.samples} / {small.samples} samples",
            f"{large.snapshot:,} B",
            f"{small.snapshot:,} B",
            f"{large.snapshot / small.snapshot:.3f}",
            f"= 1 ({expected_sums:,} B)",
            verdict(counted and all(p.snapshot == expected_sums for p in points)),
        ),
    ]
    details = "; ".join(
        f"{p.samples} samples: {p.batches} batches, {p.accumulators:,} B / {p.snapshot:,} B, peak RSS "
        f"+{mebibytes(p.rss_growth)} (input {mebibytes(x[: p.samples].nbytes)})"
        for p in points
    )
    notes = [
        f"memory: RNN(MinimalRNNCell({config.units})), through-time watch, one epoch per size, batch {BATCH_SIZE}; "
        f"expected {len(SUM_FIELDS)} x {config.units} float64 sums + 2 float64 counters. Per size (batches "
        f"accumulated, accumulators / stats() arrays, growth of the peak RSS over the epoch, size of the input "
        f"array): {details}. The RSS figures are context only: they include Keras' copy of the input arrays and "
        f"TensorFlow's and the allocator's buffers; the statistics are the bytes above."
    ]
    return Section(rows, notes)


# -- driver ---------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace], Section]] = {
    "capture": run_capture,
    "adapt": run_adapt,
    "sweep": run_sweep,
    "memory": run_memory,
}
"""The sections, in table order."""
RUN_ORDER = ("memory", "capture", "adapt", "sweep")
"""Execution order: ``memory`` first, before the other sections' models raise the peak RSS."""


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        default=list(SECTIONS),
        metavar="NAME",
        help=f"sections to run: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--repeats", type=positive, default=5, help="timed rounds of capture and adapt (5)")
    parser.add_argument("--samples", type=positive, default=4096, help="training samples of capture and adapt (4096)")
    add_eager_batches(parser)
    parser.add_argument("--adapt-units", type=positive, default=256, help="units of the adapted layer (256)")
    parser.add_argument("--adapt-cell", choices=CELLS, default="minimal_rnn", help="cell of the adapted layer (minimal_rnn)")
    parser.add_argument("--sweep-repeats", type=positive, default=2, help="timed rounds of the sweep (2)")
    parser.add_argument("--sweep-epochs", type=positive, default=20, help="epochs of each sweep job (20)")
    parser.add_argument(
        "--memory-sizes",
        type=positive,
        nargs="+",
        default=[1024, 4096, 16384],
        metavar="N",
        help="dataset sizes of the memory section (1024 4096 16384)",
    )
    args = parser.parse_args()
    batches = -(-args.samples // BATCH_SIZE)
    if "capture" in args.only and not 0 <= args.eager_batches <= batches:
        parser.error(f"--eager-batches must be in [0, {batches}] (batches per epoch of --samples)")
    if len(set(args.memory_sizes)) < 2:
        parser.error("--memory-sizes needs at least two different sizes")
    return args


def print_table(rows: Sequence[Row]) -> None:
    columns = ["section", "comparison (A / B)", "median A", "median B", "ratio", "bar", "result"]
    print(markdown_table(pd.DataFrame([dataclasses.astuple(row) for row in rows], columns=columns)))


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    sections: dict[str, Section] = {}
    for name in RUN_ORDER:
        if name not in args.only:
            continue
        print(f"\n== {name} ==", flush=True)
        try:
            sections[name] = SECTIONS[name](args)
        except Exception as error:  # noqa: BLE001 - a benchmark reports a failure, it does not raise it
            sections[name] = Section(
                [Row(name, "section failed (see notes)", "-", "-", "-", "-", "ERROR")],
                [f"{name}: {type(error).__name__}: {error}"],
            )
    ordered = [sections[name] for name in SECTIONS if name in sections]
    print()
    print_table([row for section in ordered for row in section.rows])
    print()
    print(
        "Ratios are medians over rounds of the quotient of two times measured in the same round (memory: one "
        "deterministic measurement per size). Bars are the issue's; PASS/FAIL is for information only."
    )
    for section in ordered:
        for note in section.notes:
            print(f"- {note}")
    print()
    print(bench_capture.machine_line())
    print(f"Total wall time (after imports): {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
