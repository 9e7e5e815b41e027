"""Seeded bugs: does the default test suite catch a realistic bug in each core module?

Usage:
    python scripts/mutants.py                      # every mutant, one at a time
    python scripts/mutants.py --module slots       # the mutants of one module
    python scripts/mutants.py --only stats-taylor-sign --only slots-amsgrad
    python scripts/mutants.py --list               # the mutants, without running anything
    python scripts/mutants.py --check              # only check that every snippet still matches

Each mutant is one realistic bug (a wrong derived quantity, an off-by-one, a boundary, a wrong
reset value, a torn write...): an exact snippet of one source file and its replacement. The
harness copies the repository's tracked files (as they are in the work tree) once into a scratch
dir, then for each mutant writes the mutated file there, runs the tests relevant to the module
(the default run: ``-m 'not slow'``, ``-x``, one process) plus the mutated module's doctests,
restores the file, and prints one row: mutant, module, caught / survived, the first failing test.
The work tree itself is never written. A snippet that no longer occurs exactly once in its file
is an ``error`` row (refresh the mutant when the code moves), never skipped silently.

The bar (issue 21): at least 90 % of the mutants caught by the default suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One seeded bug: ``old`` (exactly once in ``file``) replaced by ``new``."""

    name: str
    module: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]


WATCH = ("tests/test_capture.py", "tests/test_criteria.py")
STATS = ("tests/test_stats.py", "tests/test_criteria.py", "tests/test_capture.py")
UNITS = ("tests/test_units.py", "tests/test_surgery_outgoing.py", "tests/test_surgery_save.py")
GATES = ("tests/test_gates.py", "tests/test_units.py", "tests/test_compaction.py", "tests/test_surgery_save.py")
SLOTS = ("tests/test_slots.py", "tests/test_surgery_optimizers.py", "tests/test_units.py")
COMPACT = ("tests/test_compaction.py",)
RULES = ("tests/test_rules.py", "tests/test_adapt.py")
TRAIN = ("tests/test_train.py", "tests/test_reliability.py")
CHECKPOINT = ("tests/test_checkpoint.py", "tests/test_train.py", "tests/test_reliability.py")
JOBDIR = ("tests/test_jobdir.py", "tests/test_run.py", "tests/test_app.py")
RUN = ("tests/test_run.py", "tests/test_train.py", "tests/test_jobdir.py")
RESULTS = ("tests/test_results.py",)
GROWTH = ("tests/test_growth.py", "tests/test_gradmax.py")

MUTANTS: tuple[Mutant, ...] = (
    # -- capture ------------------------------------------------------------------------------------
    Mutant(
        "capture-grad-sum-abs",
        "capture",
        "adaptgrad/capture.py",
        '"grad_sum": lambda g, h, axes: tf.reduce_sum(g, axis=axes),',
        '"grad_sum": lambda g, h, axes: tf.reduce_sum(tf.abs(g), axis=axes),',
        "grad_sum sums |G| (the sign of the gradient lost)",
        WATCH,
    ),
    Mutant(
        "capture-mask-count",
        "capture",
        "adaptgrad/capture.py",
        "            positions = tf.reduce_sum(tf.cast(kept, tf.float64))\n",
        "",
        "count includes masked (padded) steps",
        WATCH,
    ),
    Mutant(
        "capture-fisher-batch-size",
        "capture",
        "adaptgrad/capture.py",
        'values["act_grad_fisher_sum"] = examples * tf.reduce_sum(',
        'values["act_grad_fisher_sum"] = tf.reduce_sum(',
        "the Fisher sum misses the batch-size factor B_b",
        WATCH,
    ),
    Mutant(
        "capture-example-axis",
        "capture",
        "adaptgrad/capture.py",
        "accumulators.update(g, self.watch._loss_scale(), h, kept, example_axis=1)",
        "accumulators.update(g, self.watch._loss_scale(), h, kept, example_axis=0)",
        "through time, per-example sums taken over the time axis (time-major tensors)",
        WATCH,
    ),
    Mutant(
        "capture-reset-count",
        "capture",
        "adaptgrad/capture.py",
        "for variable in (*self.sums.values(), self.batches, self.count, self.weight_steps):",
        "for variable in (*self.sums.values(), self.batches, self.weight_steps):",
        "reset() leaves the position count of the previous window",
        WATCH,
    ),
    # -- stats --------------------------------------------------------------------------------------
    Mutant(
        "stats-mean-by-batches",
        "stats",
        "adaptgrad/stats.py",
        "return total / self.count if self.count else np.zeros_like(total)",
        "return total / self.batches if self.batches else np.zeros_like(total)",
        "means divide by batches instead of positions (count)",
        STATS,
    ),
    Mutant(
        "stats-taylor-sign",
        "stats",
        "adaptgrad/stats.py",
        'return np.abs(self._mean("taylor"))',
        'return self._mean("taylor")',
        "taylor keeps the sign of sum H*G (negative importances)",
        STATS,
    ),
    Mutant(
        "stats-rms-no-sqrt",
        "stats",
        "adaptgrad/stats.py",
        'return np.sqrt(self._mean("rms_grad"))',
        'return self._mean("rms_grad")',
        "rms_grad is the mean square (no square root)",
        STATS,
    ),
    Mutant(
        "stats-add-count",
        "stats",
        "adaptgrad/stats.py",
        "count=self.count + other.count)",
        "count=self.count + other.batches)",
        "adding two snapshots adds the other's batches to the count",
        STATS,
    ),
    Mutant(
        "stats-mean-abs-grad-source",
        "stats",
        "adaptgrad/stats.py",
        '"mean_abs_grad": "grad_abs_sum",',
        '"mean_abs_grad": "grad_sum",',
        "mean_abs_grad derived from the signed sum",
        STATS,
    ),
    # -- units --------------------------------------------------------------------------------------
    Mutant(
        "units-reinit-same-column",
        "units",
        "adaptgrad/units/view.py",
        "self._write(writes, live, lambda unit, i: drawn[i][self._layout.indices(unit)[i]], outgoing=False)",
        "self._write(writes, live, lambda unit, i: drawn[i][self._layout.indices(live[0])[i]], outgoing=False)",
        "units re-initialised together all get the first unit's fresh weights",
        UNITS,
    ),
    Mutant(
        "units-ungate-same-column",
        "units",
        "adaptgrad/units/view.py",
        "return drawn[i][self._layout.indices(unit)[i]] if i < count else 0.0",
        "return drawn[i][self._layout.indices(fresh[0])[i]] if i < count else 0.0",
        "units ungated together after a reload (weights unknown) get identical fresh weights",
        UNITS,
    ),
    Mutant(
        "units-draws-not-counted",
        "units",
        "adaptgrad/units/draws.py",
        "        self.count += 1\n",
        "",
        "every reinit call draws with the same seed (identical draws)",
        UNITS,
    ),
    Mutant(
        "units-draws-not-restored",
        "units",
        "adaptgrad/units/view.py",
        'self._draws.count = int(state["draws"])',
        "self._draws.count = 0",
        "set_state forgets the draw counter: after a resume the draws repeat",
        UNITS,
    ),
    Mutant(
        "units-norms-block-order",
        "units",
        "adaptgrad/units/view.py",
        "squares += per_column.reshape(blocks, self.size).sum(axis=0)",
        "squares += per_column.reshape(self.size, blocks).sum(axis=1)",
        "incoming_norms groups the columns of gate blocks as if interleaved",
        UNITS,
    ),
    # -- gates --------------------------------------------------------------------------------------
    Mutant(
        "gates-gated-inverted",
        "gates",
        "adaptgrad/gates.py",
        "return np.flatnonzero(self.mask.numpy() < 0.5).tolist()",
        "return np.flatnonzero(self.mask.numpy() > 0.5).tolist()",
        "UnitGate.gated lists the active units",
        GATES,
    ),
    Mutant(
        "gates-columns-repeat",
        "gates",
        "adaptgrad/gates.py",
        "return tf.tile(tf.cast(mask, dtype), [last_axis // units])",
        "return tf.repeat(tf.cast(mask, dtype), last_axis // units)",
        "the mask repeated per unit instead of per gate block (wrong columns of GRU/LSTM)",
        GATES,
    ),
    Mutant(
        "gates-config-drops-inner",
        "gates",
        "adaptgrad/gates.py",
        '"inner": keras.constraints.serialize(self.inner)}',
        '"inner": None}',
        "a saved gate forgets the constraint it wraps",
        GATES,
    ),
    Mutant(
        "gates-initializer-unmasked",
        "gates",
        "adaptgrad/gates.py",
        "return values * _columns(self.gate.mask, int(shape[-1]), values.dtype)",
        "return values",
        "a model rebuilt from its config draws gated units non-zero",
        GATES,
    ),
    # -- slots --------------------------------------------------------------------------------------
    Mutant(
        "slots-amsgrad",
        "slots",
        "adaptgrad/slots.py",
        'keras.optimizers.Adam: ("momentum", "velocity", "velocity_hat"),',
        'keras.optimizers.Adam: ("momentum", "velocity"),',
        "Adam(amsgrad=True)'s velocity_hat is not reset",
        SLOTS,
    ),
    Mutant(
        "slots-accumulator-zero",
        "slots",
        "adaptgrad/slots.py",
        'start = float(getattr(optimizer, "initial_accumulator_value", 0.0)) if name == "accumulator" else 0.0',
        "start = 0.0",
        "Adagrad's accumulator reset to 0 instead of initial_accumulator_value",
        SLOTS,
    ),
    Mutant(
        "slots-average-zero",
        "slots",
        "adaptgrad/slots.py",
        "return lambda weights: weights",
        "return lambda weights: np.zeros_like(weights)",
        "use_ema's weight average reset to 0 instead of the weight",
        SLOTS,
    ),
    Mutant(
        "slots-first-index-only",
        "slots",
        "adaptgrad/units/writes.py",
        "for index in indices:",
        "for index in indices[:1]:",
        "only the first edited slice gets fresh slots",
        SLOTS,
    ),
    Mutant(
        "slots-common-dropped",
        "slots",
        "adaptgrad/slots.py",
        "wanted = set(_SLOT_NAMES[type(inner)] + _COMMON)",
        "wanted = set(_SLOT_NAMES[type(inner)])",
        "the weight average (use_ema) and gradient accumulators are never reset",
        SLOTS,
    ),
    Mutant(
        "slots-rmsprop-centered",
        "slots",
        "adaptgrad/slots.py",
        'keras.optimizers.RMSprop: ("velocity", "momentum", "average_gradient"),',
        'keras.optimizers.RMSprop: ("velocity", "momentum"),',
        "RMSprop(centered=True)'s average_gradient is not reset",
        SLOTS,
    ),
    # -- compaction ---------------------------------------------------------------------------------
    Mutant(
        "compaction-block-offset",
        "compaction",
        "adaptgrad/compaction.py",
        "columns = np.concatenate([keep + size * block for block in range(blocks)])",
        "columns = np.concatenate([keep + block for block in range(blocks)])",
        "the kept columns of gate blocks after the first are taken from the wrong block",
        COMPACT,
    ),
    Mutant(
        "compaction-recurrent-rows",
        "compaction",
        "adaptgrad/compaction.py",
        "edits[id(variable)].append(lambda a, k=keep: a[k])",
        "edits[id(variable)].append(lambda a, k=keep: a[: len(k)])",
        "the recurrent kernel keeps its first rows instead of the kept units' rows",
        COMPACT,
    ),
    Mutant(
        "compaction-consumer-rows",
        "compaction",
        "adaptgrad/compaction.py",
        "removed_rows[consumer.name] = np.concatenate([rows[unit] for unit in units])",
        "removed_rows[consumer.name] = np.concatenate([rows[i] for i in range(len(units))])",
        "the consumer loses the first units' input rows instead of the gated units'",
        COMPACT,
    ),
    # -- growth -------------------------------------------------------------------------------------
    Mutant(
        "growth-xbar-this-step",
        "growth",
        "adaptgrad/growth.py",
        "                return self._rows(value, a, xbar)\n",
        "                return self._rows(value, a, lin.decay * xbar + x_tilde)\n",
        "M's recurrent rows pair δ_t with x̄_t instead of x̄_{t−1} (what the unit read one step later)",
        GROWTH,
    ),
    Mutant(
        "growth-no-decay",
        "growth",
        "adaptgrad/growth.py",
        "new_xbar = x_tilde if lin.decay == 0.0 else lin.decay * xbar + x_tilde",
        "new_xbar = x_tilde",
        "x̄ forgets the unit's own decay (GRU/LSTM: λ = σ(0))",
        GROWTH,
    ),
    Mutant(
        "growth-rho",
        "growth",
        "adaptgrad/growth.py",
        "x_tilde = tf.concat([x_t, h_tm1 if lin.rho == 1.0 else lin.rho * h_tm1, *entries], axis=-1)",
        "x_tilde = tf.concat([x_t, h_tm1, *entries], axis=-1)",
        "a GRU's new unit reads h_{t−1} without its reset gate ρ = σ(0)",
        GROWTH,
    ),
    Mutant(
        "growth-gru-reset-gate",
        "growth",
        "adaptgrad/_cells.py",
        "hh = cell.activation(x_h + r * inner[:, 2 * units :])",
        "hh = cell.activation(x_h + inner[:, 2 * units :])",
        "the written-out GRU step drops its reset gate",
        GROWTH,
    ),
    # -- rules --------------------------------------------------------------------------------------
    Mutant(
        "rules-dormant-tau-strict",
        "rules",
        "adaptgrad/rules/dormant_reset.py",
        "return np.flatnonzero(judged & (ratios <= tau)).tolist()",
        "return np.flatnonzero(judged & (ratios < tau)).tolist()",
        "DormantReset: a unit exactly at tau is not dormant (docstring: <= tau)",
        RULES,
    ),
    Mutant(
        "rules-schedule-stop-exclusive",
        "rules",
        "adaptgrad/rules/schedule.py",
        "return time if self.stop is None or time <= self.stop else None",
        "return time if self.stop is None or time < self.stop else None",
        "a rule never acts at its stop time",
        RULES,
    ),
    Mutant(
        "rules-schedule-fires-boundary",
        "rules",
        "adaptgrad/rules/schedule.py",
        "return time is not None and time <= upto",
        "return time is not None and time < upto",
        "a rule acts one boundary late",
        RULES,
    ),
    Mutant(
        "rules-cosine-off-by-one",
        "rules",
        "adaptgrad/rules/drop_regrow.py",
        "return fraction / 2.0 * (1.0 + math.cos(math.pi * t / end))",
        "return fraction / 2.0 * (1.0 + math.cos(math.pi * (t + 1) / end))",
        "DropRegrow's cosine schedule one step ahead (f_0 < fraction)",
        RULES,
    ),
    Mutant(
        "rules-lowest-count",
        "rules",
        "adaptgrad/rules/scoring.py",
        "count = max(1, int(round(fraction * candidates.size)))",
        "count = max(1, int(fraction * candidates.size))",
        "gating fraction rounded down instead of to nearest",
        RULES,
    ),
    Mutant(
        "rules-regrow-ties",
        "rules",
        "adaptgrad/rules/scoring.py",
        "second = np.zeros(candidates.size) if ties is None else -np.asarray(ties, dtype=np.float64)[candidates]",
        "second = np.zeros(candidates.size) if ties is None else np.asarray(ties, dtype=np.float64)[candidates]",
        "regrowth ties broken by the youngest unit instead of the oldest",
        RULES,
    ),
    Mutant(
        "rules-gain-sign",
        "rules",
        "adaptgrad/rules/gain_rescale.py",
        "scale_active(units, np.exp(-steps), outgoing=outgoing)",
        "scale_active(units, np.exp(steps), outgoing=outgoing)",
        "GainRescale steps up the gradient instead of down",
        RULES,
    ),
    # -- train / checkpoint / jobdir / run ---------------------------------------------------------
    Mutant(
        "train-drop-last-batch",
        "train",
        "adaptgrad/train.py",
        "return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).with_options(options)",
        "return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).with_options(options)",
        "the last partial batch of an epoch is dropped",
        TRAIN,
    ),
    Mutant(
        "train-same-order-every-epoch",
        "train",
        "adaptgrad/train.py",
        "return np.random.default_rng([seed, epoch]).permutation(size)",
        "return np.random.default_rng([seed, 0]).permutation(size)",
        "every epoch sees the examples in the same order",
        TRAIN,
    ),
    Mutant(
        "train-resume-off-by-one",
        "train",
        "adaptgrad/train.py",
        'start, earlier = saved[0] + 1, saved[1].get("wall_time", 0.0)',
        'start, earlier = saved[0], saved[1].get("wall_time", 0.0)',
        "a resumed job trains its checkpointed epoch again",
        TRAIN,
    ),
    Mutant(
        "train-optimizer-not-saved",
        "train",
        "adaptgrad/train.py",
        '"optimizer": [np.array(v.numpy()) for v in model.optimizer.variables],',
        '"optimizer": [np.zeros_like(v.numpy()) for v in model.optimizer.variables],',
        "a checkpoint holds fresh optimizer state (moments and step count lost on resume)",
        TRAIN,
    ),
    Mutant(
        "train-final-first-epoch",
        "train",
        "adaptgrad/train.py",
        'final = {k: float(v) for k, v in history.iloc[-1].items() if k != "epoch"}',
        'final = {k: float(v) for k, v in history.iloc[0].items() if k != "epoch"}',
        "result.json's final metrics are the first epoch's",
        TRAIN,
    ),
    Mutant(
        "checkpoint-in-place",
        "checkpoint",
        "adaptgrad/checkpoint.py",
        "write_atomic(path, lambda temp: temp.write_bytes(blob))",
        "self.directory.mkdir(parents=True, exist_ok=True) or path.write_bytes(blob)",
        "a checkpoint written in place (a kill leaves a torn file)",
        CHECKPOINT,
    ),
    Mutant(
        "checkpoint-other-config",
        "checkpoint",
        "adaptgrad/checkpoint.py",
        "                if digest != self.digest:\n",
        "                if digest is None:\n",
        "a checkpoint another config wrote is resumed from",
        CHECKPOINT,
    ),
    Mutant(
        "checkpoint-oldest-first",
        "checkpoint",
        "adaptgrad/checkpoint.py",
        "return sorted(found, reverse=True)",
        "return sorted(found)",
        "latest() resumes from the oldest checkpoint",
        CHECKPOINT,
    ),
    Mutant(
        "atomic-in-place",
        "checkpoint",
        "adaptgrad/atomic.py",
        "        write(Path(temp))\n        os.replace(temp, path)\n",
        "        write(path)\n",
        "every table and result.json written in place (a kill leaves a torn file)",
        ("tests/test_atomic.py", "tests/test_checkpoint.py", "tests/test_run.py", "tests/test_jobdir.py"),
    ),
    Mutant(
        "jobdir-model-not-awaited",
        "jobdir",
        "adaptgrad/jobdir.py",
        'needed = [*TABLES] if result.get("model_saved") is False else [*TABLES, MODEL]',
        "needed = [*TABLES]",
        "a completed job whose model.keras is missing is skipped",
        JOBDIR,
    ),
    Mutant(
        "jobdir-empty-file",
        "jobdir",
        "adaptgrad/jobdir.py",
        "return path.stat().st_size > 0 or path.is_dir()",
        "return path.stat().st_size >= 0 or path.is_dir()",
        "an emptied table counts as written",
        JOBDIR,
    ),
    Mutant(
        "jobdir-orphans-overwritten",
        "jobdir",
        "adaptgrad/jobdir.py",
        'return "refuse" if _orphans(directory) else "run"',
        'return "run"',
        "a dir with a job's files but no config.yaml is run into (data lost)",
        JOBDIR,
    ),
    Mutant(
        "jobdir-history-name",
        "jobdir",
        "adaptgrad/jobdir.py",
        'HISTORY = "history.csv"',
        'HISTORY = "history.parquet"',
        "the history table written under another name than the one documented and collected",
        JOBDIR,
    ),
    Mutant(
        "run-wall-time-last-attempt",
        "run",
        "adaptgrad/run.py",
        '"wall_time": earlier + time.perf_counter() - started}',
        '"wall_time": time.perf_counter() - started}',
        "a resumed job's wall_time counts only its last attempt",
        RUN,
    ),
    Mutant(
        "run-diverged-resumes",
        "run",
        "adaptgrad/run.py",
        'if found is not None and found[1].get("status") in ("failed", "diverged"):',
        'if found is not None and found[1].get("status") in ("failed",):',
        "a diverged job resumes from its checkpoint instead of starting over",
        RUN,
    ),
    # -- results ------------------------------------------------------------------------------------
    Mutant(
        "results-pair-by-row-order",
        "results",
        "adaptgrad/results/comparing.py",
        'd = a - order.loc[treated["seed"]].to_numpy(dtype=float)',
        'd = a - control["_value"].to_numpy(dtype=float)',
        "paired differences taken in row order, not matched by seed",
        RESULTS,
    ),
    Mutant(
        "results-ci-one-sided",
        "results",
        "adaptgrad/results/comparing.py",
        "half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * se",
        "half = stats.t.ppf(CONFIDENCE, df) * se",
        "the 95 % interval uses the one-sided quantile",
        RESULTS,
    ),
    Mutant(
        "results-holm-not-monotone",
        "results",
        "adaptgrad/results/comparing.py",
        "np.maximum.accumulate((m - np.arange(m)) * p[order])",
        "(m - np.arange(m)) * p[order]",
        "Holm's adjusted p-values not made monotone",
        RESULTS,
    ),
    Mutant(
        "results-best-direction",
        "results",
        "adaptgrad/results/summarising.py",
        "best = per_run.max() if higher_is_better(name) else per_run.min()",
        "best = per_run.min() if higher_is_better(name) else per_run.max()",
        "final='best' picks the worst epoch",
        RESULTS,
    ),
    Mutant(
        "results-last-epoch-first",
        "results",
        "adaptgrad/results/summarising.py",
        'drop_duplicates("run_id", keep="last")',
        'drop_duplicates("run_id", keep="first")',
        "a metric only in history.csv takes the first epoch's value as the final one",
        RESULTS,
    ),
)


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def scratch_copy(root: Path, tests_from: str | None = None) -> Path:
    """The tracked files of ``root`` (work-tree contents) copied into a new temp dir; with
    ``tests_from``, its ``tests/`` as they were at that git revision (the suite before new tests)."""
    target = Path(tempfile.mkdtemp(prefix="adaptgrad-mutants-"))
    for name in tracked_files(root):
        source = root / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if tests_from:
        shutil.rmtree(target / "tests")
        archive = subprocess.run(["git", "-C", str(root), "archive", tests_from, "tests"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def check(mutant: Mutant, root: Path) -> str | None:
    """Why the mutant cannot be applied to ``root`` (None: its snippet occurs exactly once)."""
    path = root / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    found = path.read_text(encoding="utf-8").count(mutant.old)
    return None if found == 1 else f"snippet found {found} times in {mutant.file} (expected once): refresh the mutant"


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclasses.dataclass
class Outcome:
    mutant: Mutant
    status: str  # caught, survived, timeout (not caught: rerun it with a longer --timeout), error
    detail: str
    seconds: float


def run_one(mutant: Mutant, scratch: Path, *, timeout: float, python: str) -> Outcome:
    problem = check(mutant, scratch)
    if problem:
        return Outcome(mutant, "error", problem, 0.0)
    path = scratch / mutant.file
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
    command = [
        python,
        "-m",
        "pytest",
        *[name for name in mutant.tests if (scratch / name).is_file()],  # absent: a file newer than --tests-from
        mutant.file,  # its doctests: part of the default run
        "-m",
        "not slow",
        "-x",
        "-q",
        "-n",
        "0",
        "-p",
        "no:cacheprovider",
        "--no-header",
    ]
    env = {**os.environ, "PYTHONPATH": str(scratch), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except BaseException as error:  # a timeout, or this script stopped: the tests stop too
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if not isinstance(error, subprocess.TimeoutExpired):
            raise
        return Outcome(mutant, "timeout", f"no result within {timeout:.0f} s (not counted as caught)", timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.perf_counter() - started
    if process.returncode == 0:
        return Outcome(mutant, "survived", "", seconds)
    failed = FAILED.search(output)
    if process.returncode == 1 and failed:
        return Outcome(mutant, "caught", failed.group(1), seconds)
    tail = " | ".join(output.strip().splitlines()[-3:])
    if process.returncode == 2:  # interrupted: an import or collection error the mutant caused
        return Outcome(mutant, "caught", f"pytest exit 2: {tail}", seconds)
    return Outcome(mutant, "error", f"pytest exit {process.returncode} (no test ran?): {tail}", seconds)


def table(outcomes: list[Outcome]) -> str:
    rows = [("mutant", "module", "result", "s", "first failing test / why")]
    rows += [(o.mutant.name, o.mutant.module, o.status, f"{o.seconds:.0f}", o.detail) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutant (repeatable)")
    parser.add_argument("--module", action="append", default=[], metavar="M", help="run this module's mutants (repeatable)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (default 600)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="only check that every snippet matches the source")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
    parser.add_argument(
        "--tests-from", metavar="REV", help="run the tests as they were at git revision REV (e.g. the suite before new tests)"
    )
    args = parser.parse_args(argv)

    names = {mutant.name for mutant in MUTANTS}
    modules = {mutant.module for mutant in MUTANTS}
    unknown = [name for name in args.only if name not in names] + [m for m in args.module if m not in modules]
    if unknown:
        parser.error(
            f"unknown mutant or module {', '.join(unknown)}; modules: {', '.join(sorted(modules))}; --list names the mutants"
        )
    chosen = [m for m in MUTANTS if (not args.only and not args.module) or m.name in args.only or m.module in args.module]
    if args.list:
        for m in chosen:
            print(f"{m.name:32} {m.module:11} {m.file:34} {m.description}")
        return 0
    if args.check:
        problems = [(m.name, check(m, ROOT)) for m in chosen]
        for name, problem in problems:
            if problem:
                print(f"error  {name}: {problem}")
        print(f"{sum(p is None for _, p in problems)} of {len(problems)} snippets match")
        return 1 if any(p for _, p in problems) else 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill PID: the scratch copy and the tests go too
    scratch = scratch_copy(ROOT, args.tests_from)
    outcomes = []
    try:
        for mutant in chosen:
            outcome = run_one(mutant, scratch, timeout=args.timeout, python=args.python)
            outcomes.append(outcome)
            print(f"{outcome.status:8} {mutant.name} ({outcome.seconds:.0f} s) {outcome.detail}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(outcomes))
    counted = [o for o in outcomes if o.status != "error"]
    caught = sum(o.status == "caught" for o in counted)
    errors = len(outcomes) - len(counted)
    share = caught / len(counted) if counted else 0.0
    print(f"\n{caught} of {len(counted)} caught ({share:.0%}); {errors} snippet error(s)")
    return 1 if errors or share < 0.9 else 0


if __name__ == "__main__":
    sys.exit(main())
