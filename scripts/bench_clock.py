"""Benchmark: what does a rule on the step clock cost per epoch, and an epoch-only Adapt?

Run it from the project root (a few minutes with the defaults on 2 cores)::

    python scripts/bench_clock.py
    python scripts/bench_clock.py --against 62819af       # also the Adapt of another revision (before the step clock)
    python scripts/bench_clock.py --cell gru --repeats 3 --samples 3200   # quick look, one cell

For each cell (``--cell``, repeatable; default MinimalRNN and GRU) it trains separately built
models of the same architecture, ``Input((steps, features)) -> RNN(cell(units), name='rnn') ->
Dense(1)``, with MSE and SGD on random data in input order, through-time capture, and times one
epoch (``model.fit(dataset, epochs=1)``) of:

1. ``plain fit``: no watch, no callback (the baseline);
2. ``fit + watch``: ``adaptgrad.watch(model, 'rnn', through_time=True, stats=<the rule's>)``;
3. ``+ Adapt, epoch rule``: that watch and an :class:`~adaptgrad.Adapt` running
   ``TaylorGateEMA`` at every epoch end (no per-batch hook);
4. ``+ Adapt, rule every 100 steps``: the same rule with ``every_steps=100`` (Molchanov 2019's
   clock, here ΔT = ``--every-steps``): a per-batch hook, a collection of the statistics and an
   edit every 100 steps;
5. with ``--against REV``: ``+ Adapt at REV, epoch rule``: variant 3 with the ``Adapt`` class
   of ``adaptgrad/adapt.py`` at git revision REV (``git show REV:adaptgrad/adapt.py``), run on
   this checkout's other modules; e.g. the Adapt from before the step clock.

The rule gates at most ``--fraction`` of the active units per action down to half the layer,
so every round trains the same network size after the first few actions (gating does not
change the compute of a dense layer anyway). Every variant is warmed up (one epoch), then
``--repeats`` rounds time one epoch of every variant in turn, so that slow phases of a shared
machine hit all alike. The table gives each variant's median epoch time and the medians over
rounds of its time divided by the plain fit's and by the watched fit's in the same round; the
bars of issue 20 (rule every 100 steps <= 1.02 x the epoch rule's Adapt; epoch-only Adapt <=
1.01 x the watched fit, and x the Adapt at REV) are printed as PASS/FAIL lines for information
only: the script always exits 0. On a loaded machine the epoch times of the variants scatter by
more than 2 % even when paired; the time spent inside the Adapt's hooks (work done in Keras's
thread, between batches) does not, so the step clock's cost is also given as the median time in
the step rule's hooks beyond the epoch rule's, as a share of the epoch rule's median epoch.
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from bench_capture import Variant, machine_line, paired_ratio, time_rounds

import adaptgrad
from adaptgrad.models import CELLS, recurrent_layer
from adaptgrad.results.markdown import markdown_table
from adaptgrad.rules import TaylorGateEMA
from adaptgrad.runtime import limit_threads
from adaptgrad.train import batches

ROOT = Path(__file__).resolve().parent.parent
PLAIN = "plain fit"
WATCH = "fit + watch"
EPOCH_RULE = "+ Adapt, epoch rule"
STEP_RULE = "+ Adapt, rule every {every} steps"
AGAINST = "+ Adapt at {revision}, epoch rule"


@dataclasses.dataclass(frozen=True)
class Config:
    cells: tuple[str, ...]
    samples: int
    repeats: int
    units: int
    steps: int
    features: int
    batch_size: int
    every_steps: int
    fraction: float
    against: str | None
    threads: int | None

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.samples // self.batch_size)


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", action="append", choices=CELLS, help="a recurrent cell; repeat (default: minimal_rnn, gru)")
    parser.add_argument("--samples", type=int, default=6400, help="training samples (6400: 200 steps an epoch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--units", type=int, default=128, help="RNN units (128)")
    parser.add_argument("--steps", type=int, default=20, help="time steps per sequence (20)")
    parser.add_argument("--features", type=int, default=8, help="input features (8)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (32)")
    parser.add_argument("--every-steps", type=int, default=100, help="the step rule's period (100)")
    parser.add_argument("--fraction", type=float, default=0.02, help="share of active units gated per action (0.02)")
    parser.add_argument("--against", metavar="REV", help="also time the Adapt class of adaptgrad/adapt.py at this git revision")
    parser.add_argument("--threads", type=int, help="TensorFlow threads (intra- and inter-op; default: all)")
    args = vars(parser.parse_args())
    args["cells"] = tuple(dict.fromkeys(args.pop("cell") or ("minimal_rnn", "gru")))
    config = Config(**args)
    if min(config.samples, config.repeats, config.units, config.steps, config.features, config.batch_size) < 1:
        parser.error("sizes and counts must be >= 1")
    if config.every_steps > config.batches_per_epoch:
        parser.error(f"--every-steps {config.every_steps} exceeds the {config.batches_per_epoch} steps of an epoch")
    return config


def adapt_class_at(revision: str) -> type[keras.callbacks.Callback]:
    """The ``Adapt`` class of ``adaptgrad/adapt.py`` at git ``revision``, importing this checkout's other modules."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:adaptgrad/adapt.py"], capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(f"adaptgrad_adapt_at_{revision}")
    exec(compile(source, f"{revision}:adaptgrad/adapt.py", "exec"), module.__dict__)  # noqa: S102 - the project's own source
    return module.Adapt


def build_model(config: Config, cell: str) -> keras.Model:
    """A fresh model; the fixed seed gives every variant the same initial weights."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((config.steps, config.features))
    hidden = recurrent_layer(cell, config.units, False, name="rnn")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


class HookClock:
    """Wall time spent inside an Adapt's hooks, per epoch: the work it adds in Keras's thread.
    Wraps, on the instance, only the hooks the Adapt has (it never adds a per-batch hook)."""

    def __init__(self, adapt: keras.callbacks.Callback) -> None:
        self.spent = 0.0
        self.per_epoch: list[float] = []
        hooks = ["on_train_begin", "on_epoch_begin", "on_epoch_end"]
        if any(getattr(rule, "every_steps", None) is not None for rule in adapt.rules):
            hooks.append("on_train_batch_end")
        for hook in hooks:
            setattr(adapt, hook, self._timed(getattr(adapt, hook), closes_epoch=hook == "on_epoch_end"))

    def _timed(self, method: Callable[..., None], *, closes_epoch: bool) -> Callable[..., None]:
        def timed(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                method(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - start
                if closes_epoch:
                    self.per_epoch.append(self.spent)
                    self.spent = 0.0

        return timed


def build_variants(
    config: Config, cell: str, data: tf.data.Dataset, against: type | None
) -> tuple[dict[str, Variant], dict[str, keras.callbacks.Callback], dict[str, HookClock]]:
    """The timed variants, and the time spent in the hooks of each variant that has an Adapt."""

    def rule(**clock: int) -> TaylorGateEMA:
        return TaylorGateEMA(fraction=config.fraction, max_sparsity=0.5, **clock)

    reads = rule().reads
    setups: dict[str, tuple[type | None, dict[str, int] | None]] = {
        PLAIN: (None, None),
        WATCH: (None, {}),
        EPOCH_RULE: (adaptgrad.Adapt, {}),
        STEP_RULE.format(every=config.every_steps): (adaptgrad.Adapt, {"every_steps": config.every_steps}),
    }
    if against is not None:
        setups[AGAINST.format(revision=config.against)] = (against, {})
    variants, adapts, hook_clocks = {}, {}, {}
    for name, (adapt_class, clock) in setups.items():
        model = build_model(config, cell)
        callbacks = []
        if clock is not None:
            watch = adaptgrad.watch(model, "rnn", through_time=True, stats=reads)
            if adapt_class is not None:
                adapts[name] = adapt_class(watch, [rule(**clock)])
                hook_clocks[name] = HookClock(adapts[name])
                callbacks.append(adapts[name])

        def fit_epoch(model: keras.Model = model, callbacks: list = callbacks) -> None:
            model.fit(data, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

        variants[name] = Variant(fit_epoch)
    return variants, adapts, hook_clocks


def actions_line(adapts: dict[str, keras.callbacks.Callback]) -> str:
    """How many edits each Adapt's rule made, and at how many distinct steps (if it records them)."""
    parts = []
    for name, adapt in adapts.items():
        frame = adapt.actions_frame()
        at = f" at {frame['step'].nunique()} steps" if "step" in frame else ""
        parts.append(f"{name}: {len(frame)} edits{at}")
    return "Edits over the warm-up and the rounds: " + "; ".join(parts)


def main() -> None:
    config = parse_args()
    if config.threads:
        limit_threads(config.threads)
    against = adapt_class_at(config.against) if config.against else None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((config.samples, config.steps, config.features), dtype=np.float32)
    y = rng.standard_normal((config.samples, 1), dtype=np.float32)
    data = batches(x, y, config.batch_size)
    started = time.perf_counter()
    rows = []
    step_rule = STEP_RULE.format(every=config.every_steps)
    verdicts = []
    for cell in config.cells:
        print(
            f"\n{cell}, {config.units} units, through time; {config.samples} samples x {config.steps} steps x "
            f"{config.features} features, batch {config.batch_size} ({config.batches_per_epoch} steps/epoch); "
            f"{config.repeats} interleaved rounds after a warm-up per variant",
            flush=True,
        )
        variants, adapts, hook_clocks = build_variants(config, cell, data, against)
        time_rounds(variants, config.repeats)
        print(actions_line(adapts))
        for name, variant in variants.items():
            hooks = hook_clocks.get(name)
            rows.append(
                (
                    cell,
                    name,
                    f"{statistics.median(variant.times):.3f}",
                    f"{paired_ratio(variant, variants[PLAIN]):.3f}",
                    f"{paired_ratio(variant, variants[WATCH]):.3f}",
                    f"{paired_ratio(variant, variants[WATCH], cpu=True):.3f}",
                    f"{1000 * statistics.median(hooks.per_epoch[1:]):.1f}" if hooks else "",
                )
            )
        bars = [(step_rule, EPOCH_RULE, 1.02), (EPOCH_RULE, WATCH, 1.01)]
        if against is not None:
            bars.append((EPOCH_RULE, AGAINST.format(revision=config.against), 1.01))
        for numerator, denominator, bar in bars:
            ratio = paired_ratio(variants[numerator], variants[denominator])
            verdicts.append(f"{'PASS' if ratio <= bar else 'FAIL'}: {cell}: {numerator} / {denominator} = {ratio:.3f} <= {bar}")
        extra = statistics.median(hook_clocks[step_rule].per_epoch[1:]) - statistics.median(hook_clocks[EPOCH_RULE].per_epoch[1:])
        share = extra / statistics.median(variants[EPOCH_RULE].times)
        verdicts.append(
            f"{'PASS' if share <= 0.02 else 'FAIL'}: {cell}: time in the step rule's hooks beyond the epoch rule's = "
            f"{1000 * extra:.1f} ms/epoch = {100 * share:.2f} % of the epoch rule's epoch <= 2 %"
        )
    print()
    columns = [
        "cell",
        "variant",
        "median epoch (s)",
        "ratio to plain fit",
        "ratio to fit + watch",
        "CPU-time ratio to fit + watch",
        "in Adapt's hooks (ms/epoch)",
    ]
    print(markdown_table(pd.DataFrame(rows, columns=columns)))
    print()
    print(machine_line())
    print(
        "Ratios: medians over rounds of the quotient of two epoch times measured in the same round (CPU time: "
        "this process's, all threads); time in the hooks: median over the timed epochs. "
        f"TensorFlow threads: {config.threads or 'all'}; load average at the end: {os.getloadavg()[0]:.1f}"
    )
    print()
    print("\n".join(verdicts))
    print(f"\nTotal wall time (after imports): {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
