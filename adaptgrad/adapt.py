"""The Keras callback that runs adaptation rules at epoch ends, or every N optimizer steps inside ``fit``.

Example:
    >>> import keras, numpy as np, adaptgrad
    >>> from adaptgrad.rules import TaylorPrune
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.GRU(8, name="gru"),
    ...                           keras.layers.Dense(1)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> adapt = adaptgrad.Adapt(adaptgrad.watch(model, "gru", through_time=True), [TaylorPrune(fraction=0.25)])
    >>> x, y = np.ones((16, 5, 1)), np.ones((16, 1))
    >>> history = model.fit(x, y, epochs=2, verbose=0, callbacks=[adapt])
    >>> int(adapt.units.active.sum()), history.history["active_units/gru"]
    (4, [6, 4])
    >>> adapt.actions_frame().action.unique().tolist()
    ['gate']

A rule on the step clock (``every_steps``) acts between two batches of ``fit``; the next batch
sees its edits:

    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.GRU(8, name="gru"), keras.layers.Dense(1)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> adapt = adaptgrad.Adapt(adaptgrad.watch(model, "gru", through_time=True), [TaylorPrune(fraction=0.25, every_steps=3)])
    >>> _ = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[adapt])
    >>> adapt.actions_frame()[["epoch", "step", "action"]].drop_duplicates().values.tolist()
    [[0, 3, 'gate'], [1, 6, 'gate']]
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
import pandas as pd

from adaptgrad import _instrument
from adaptgrad.capture import GradientWatch
from adaptgrad.criteria import CRITERIA, score
from adaptgrad.oracles import oracle
from adaptgrad.rules.base import AdaptationRule
from adaptgrad.rules.schedule import Moment
from adaptgrad.stats import DERIVED_FIELDS, SUM_FIELDS, OutputGradientStats
from adaptgrad.units import UnitView, unit_view

UNIT_COLUMNS = ["epoch", "step", "layer", "unit", "active", "age", "scale", "batches", "count", *SUM_FIELDS, *DERIVED_FIELDS]
ACTION_COLUMNS = ["epoch", "step", "layer", "rule", "action", "unit", "value"]

REDRAWS = frozenset({"reinit", "ungate"})
"""The edits after which a unit's incoming weights are new (:attr:`UnitView.age` restarts at 0)."""

_ADAPTS: weakref.WeakKeyDictionary[keras.Model, weakref.WeakSet[Adapt]] = weakref.WeakKeyDictionary()
"""Model -> the Adapt callbacks alive on it (weakly held: an Adapt that is dropped stops counting)."""


class Adapt(keras.callbacks.Callback):
    """Runs ``rules`` on the statistics of ``watch``: at epoch ends, and between batches for rules
    on the step clock.

    Args:
        watch: the :class:`~adaptgrad.GradientWatch` on the layer to adapt (either mode).
        rules: rules applied in order; a rule whose schedule does not fire is not called, and a
            rule facing NaN/inf statistics is skipped and the skip recorded as an action.
        units: the :class:`~adaptgrad.UnitView` to edit; made from the watched layer if None
            (the model must be built). ``next_layer`` and ``seed`` are passed to
            :func:`~adaptgrad.unit_view`.
        oracle: ``(x, y)``: at the end of every ``oracle_every``-th epoch, before the rules act,
            measure :func:`adaptgrad.oracle` on these data beside every criterion the epoch's
            statistics allow and each rule's :meth:`~adaptgrad.AdaptationRule.score`
            (:meth:`oracle_frame`). None: never.

    Raises:
        ValueError: when built, if a rule cannot act correctly here (each rule's
            :meth:`~adaptgrad.AdaptationRule.check`): the watch does not capture a statistic it
            reads, it needs the next layer and that is unknown, its edit does not match the
            capture mode, or ``min_active`` exceeds the layer. When ``fit`` starts, if a step
            rule's ``every_steps`` is below the model's ``steps_per_execution`` (it could not
            act at each of its times).

    **Clocks.** At each epoch end: the statistics since the last collection -> unit ages + 1
    -> each epoch rule whose schedule fires, in order. A rule with ``every_steps`` acts at the
    first point between two executions of the train step at or after each scheduled step
    (:mod:`adaptgrad.rules.schedule`), so its edits are in place for the next batch. Each rule
    receives the statistics of the steps since its previous scheduled time (one period: with
    ``every=1``, the epoch; with ``every_steps=100``, those 100 steps), summed exactly over the
    batches in between; the first window opens one period before ``start_epoch`` /
    ``start_step`` (or when training starts). A rule whose ``apply`` declares the keyword
    ``when`` gets a :class:`~adaptgrad.rules.schedule.Moment` (epoch, step, unit ages on its
    clock); ``apply(self, stats, units, epoch)`` works as before. Only when some rule counts
    steps does this callback have a per-batch hook (a comparison, and a read of
    ``optimizer.iterations`` only when an execution may have reached a scheduled step); with
    epoch rules only it has none, so Keras keeps its
    asynchronous callback dispatch on the backends that have one (with TensorFlow, Keras 3.15
    dispatches synchronously and reads every batch's logs whatever the callbacks). When ``fit``
    starts, the callback builds the model's optimizer if it is not built yet, as Keras does
    itself under a distribution strategy: TensorFlow traces a train step that makes the
    optimizer's variables twice.

    Each rule's ``apply`` runs inside :meth:`UnitView.transaction`: if it raises, its edits of
    that call are undone, a ``failed`` action is recorded, and the exception propagates (so
    ``fit`` stops). Unit ages (:attr:`UnitView.age`) grow by one at every epoch end before the
    rules run, so a unit re-initialised at the end of epoch t has age 1 when rules run at the
    end of epoch t+1; on the step clock a unit's age is the optimizer steps since its incoming
    weights were drawn.

    Records, as pandas DataFrames: :meth:`units_frame` (one row per epoch and unit: the
    epoch's statistics and the unit's ``active`` flag, ``age`` and ``scale``, its cumulative gain
    whichever weights it went into (:attr:`UnitView.scales`), after the epoch's edits) and :meth:`actions_frame` (one row per edit); both carry the
    ``layer`` name, so the tables of several Adapts concatenate, and the ``step`` (optimizer
    steps applied) beside the ``epoch``. Adds ``active_units/<layer>`` to the epoch logs (it shows
    in ``History``), and plain ``active_units`` too when this is the only Adapt alive on the model
    (Adapts register themselves, weakly, per model when built).
    """

    def __init__(
        self,
        watch: GradientWatch,
        rules: AdaptationRule | Iterable[AdaptationRule],
        units: UnitView | None = None,
        *,
        next_layer: str | keras.layers.Layer | None = None,
        seed: int = 0,
        oracle: tuple[Any, Any] | None = None,
        oracle_every: int = 1,
    ) -> None:
        super().__init__()
        self.watch = watch
        self.rules = [rules] if isinstance(rules, AdaptationRule) else list(rules)
        for rule in self.rules:
            if not isinstance(rule, AdaptationRule):
                raise TypeError(f"rules must be AdaptationRule instances, got {type(rule).__name__}: {rule!r}")
        self.units = units if units is not None else unit_view(watch.model, watch.layer, next_layer=next_layer, seed=seed)
        if self.units.layer is not watch.layer:
            raise ValueError(f"units view layer {self.units.layer.name!r} is not the watched layer {watch.layer.name!r}")
        try:
            for rule in self.rules:
                rule.check(watch, self.units)
        except Exception:
            if units is None:  # the view this Adapt made: a refused Adapt leaves the layer as it was
                self.units.remove()
            raise
        self.layer_name = watch.layer.name
        _ADAPTS.setdefault(watch.model, weakref.WeakSet()).add(self)
        self._unit_rows: list[pd.DataFrame] = []
        self._action_rows: list[tuple[int, int, str, str, str, int, float]] = []
        self._oracle_rows: list[pd.DataFrame] = []
        if oracle_every < 1:
            raise ValueError(f"oracle_every={oracle_every!r} must be an integer >= 1")
        self.oracle_data, self.oracle_every = oracle, int(oracle_every)
        self._schedules = [rule.schedule for rule in self.rules]
        self._takes_when = [_accepts_when(rule) for rule in self.rules]
        self._windows: list[OutputGradientStats | None] = [None] * len(self.rules)
        """Per rule, the statistics since its window opened (None: none yet)."""
        self._open: list[bool] | None = None
        """Per rule, whether its window is open; None until training first starts."""
        self._drawn = np.zeros(self.units.size, dtype=np.int64)
        """Per unit, the optimizer step at which its incoming weights were drawn (ages in steps)."""
        self._epoch_stats: OutputGradientStats | None = None
        self._epoch = 0
        self._step = 0
        """Optimizer steps applied, as last read (at the last boundary where the clock was read)."""
        self._unread = 0
        """Steps the executions since that read may have applied, at most."""
        self._execution = 1
        self._next_event = 0
        """The next step at which a step rule acts or its window opens."""
        if all(schedule.unit == "epoch" for schedule in self._schedules):
            # no per-batch hook then: Keras's own no-op (of another Callback, so no reference cycle
            # keeps this Adapt alive), which Keras recognises, keeping its asynchronous dispatch
            self.on_train_batch_end = keras.callbacks.Callback().on_train_batch_end

    # -- the clock ------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:  # as Keras under a strategy: not in fit's first trace,
            with self.model.distribute_strategy.scope():  # which TensorFlow repeats when it makes variables
                optimizer.build(self.model.trainable_variables)
        self._step, self._unread = self._optimizer_steps(), 0
        self._execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        for rule, schedule in zip(self.rules, self._schedules):
            if schedule.unit == "step" and schedule.every < self._execution:
                raise ValueError(
                    f"{rule.label}: every_steps={rule.every_steps} is below the model's steps_per_execution={self._execution}: "
                    f"rules act between executions of the train step; valid: every_steps >= {self._execution}"
                )
        if self._open is None:  # first training of this Adapt: open the windows whose period has begun
            self._drawn[:] = self._step
            self._open = [schedule.opening <= (self._step if schedule.unit == "step" else -1) for schedule in self._schedules]
        self._next_event = self._next_step_event()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Between two executions of the train step (an Adapt with step rules only): runs the
        rules whose time has come. The step count is read only when an execution may have
        reached the next event (each applies at most ``steps_per_execution`` steps): reading a
        variable costs as much as the rest of this hook."""
        self._unread += self._execution
        if self._step + self._unread < self._next_event:
            return
        after, self._step, self._unread = self._step, self._optimizer_steps(), 0
        self._advance("step", after, self._step)
        self._next_event = self._next_step_event()

    def _next_step_event(self) -> float:
        """The first step after the last read at which a step rule acts or its window opens."""
        events = [schedule.next_time(self._step) for schedule in self._schedules if schedule.unit == "step"]
        events += [
            schedule.opening
            for schedule, is_open in zip(self._schedules, self._open)
            if schedule.unit == "step" and not is_open and schedule.opening > self._step
        ]
        return min((event for event in events if event is not None), default=float("inf"))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._step, self._unread = self._optimizer_steps(), 0  # no step event lies between the last read and here
        self._advance("epoch", epoch - 1, epoch)
        stats, self._epoch_stats = self._epoch_stats, None
        active = self.units.active
        columns = {
            "epoch": epoch,
            "step": self._step,
            "layer": self.layer_name,
            "unit": np.arange(self.units.size),
            "active": active,
            "age": self.units.age,
            "scale": self.units.scales,
        }
        self._unit_rows.append(pd.DataFrame({**columns, **stats.as_dict()}, columns=UNIT_COLUMNS))
        if logs is not None:
            logs[f"active_units/{self.layer_name}"] = int(active.sum())
            if len(_ADAPTS.get(self.watch.model, ())) == 1:
                logs["active_units"] = int(active.sum())

    def _optimizer_steps(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _advance(self, unit: str, after: int, upto: int) -> None:
        """The clock of ``unit`` moved from ``after`` to ``upto``: collect the statistics, run the
        rules due, open the windows whose period begins."""
        on_clock = [(i, schedule) for i, schedule in enumerate(self._schedules) if schedule.unit == unit]
        due = [i for i, schedule in on_clock if schedule.fires(after, upto)]
        opening = [
            i
            for i, schedule in on_clock
            if not self._open[i] and i not in due and schedule.opening <= upto and schedule.next_time(upto) is not None
        ]
        if unit == "epoch":
            self._collect(required=True)
            if self.oracle_data is not None and (upto + 1) % self.oracle_every == 0:
                self._oracle_rows.append(self._measure_oracle(self._epoch_stats, upto))
            self.units.tick()
        elif due or opening:
            self._collect(required=False)
        for i in due:
            self._act(i, self._windows[i])
            self._windows[i] = None
            self._open[i] = self._schedules[i].next_time(upto) is not None
        for i in opening:
            self._open[i] = True

    def _collect(self, *, required: bool) -> None:
        """Move the watch's sums into the epoch's statistics and every open window, and zero it.
        Nothing since the last collection is fine, except at the end of an epoch that saw nothing
        (then the watch's error says why)."""
        try:
            snapshot = self.watch.stats()
        except RuntimeError:
            if required and self._epoch_stats is None:
                raise
            return
        self.watch.reset()
        self._epoch_stats = _sum(self._epoch_stats, snapshot)
        for i, is_open in enumerate(self._open):
            if is_open:
                self._windows[i] = _sum(self._windows[i], snapshot)

    def _measure_oracle(self, stats: OutputGradientStats, epoch: int) -> pd.DataFrame:
        """One row per unit: the oracle of both edits, every criterion the statistics allow, each
        rule's score (``rule.<label>``); the model as it is before this epoch's edits."""
        layer = self.watch.layer
        gate = oracle(self.watch.model, layer, self.oracle_data, edit="gate")
        output = (
            oracle(self.watch.model, layer, self.oracle_data, edit="zero_output") if _instrument.is_recurrent(layer) else gate
        )
        columns: dict[str, Any] = {
            "epoch": epoch,
            "layer": self.layer_name,
            "unit": np.arange(self.units.size),
            "active": self.units.active,
            "oracle": gate,
            "oracle_zero_output": output,
        }
        columns.update({name: score(name, stats) for name, c in CRITERIA.items() if c.reads <= stats.fields})
        for rule in self.rules:
            try:
                columns[f"rule.{rule.label}"] = rule.score(stats, self.units)
            except NotImplementedError:
                continue
        return pd.DataFrame(columns)

    def _act(self, i: int, stats: OutputGradientStats | None) -> None:
        rule = self.rules[i]
        if stats is None:  # every step of its window was skipped (mixed precision overflow)
            self._record(rule, "skip_empty")
            return
        if not stats.finite:
            self._record(rule, "skip_nonfinite")
            return
        unit = rule.schedule.unit
        age = self.units.age if unit == "epoch" else self._step - self._drawn
        when = Moment(epoch=self._epoch, step=self._step, unit=unit, age=age)
        self._apply(rule, stats, when if self._takes_when[i] else None)

    def _apply(self, rule: AdaptationRule, stats: OutputGradientStats, when: Moment | None) -> None:
        """One rule's edits, all or none: a rule that raises leaves the layer as it found it."""
        self.units.min_active = rule.floor(self.units.size)
        self.units.edits.clear()
        try:
            with self.units.transaction():
                if when is None:
                    rule.apply(stats, self.units, self._epoch)
                else:
                    rule.apply(stats, self.units, self._epoch, when=when)
        except Exception:
            self._record(rule, "failed")
            raise
        for edit in self.units.edits:
            self._record(rule, edit.action, edit.unit, edit.value)
            if edit.action in REDRAWS:
                self._drawn[edit.unit] = self._step
        self.units.edits.clear()

    def _record(self, rule: AdaptationRule, action: str, unit: int = -1, value: float = float("nan")) -> None:
        self._action_rows.append((self._epoch, self._step, self.layer_name, rule.label, action, unit, value))

    # -- state and tables -----------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly from an epoch end: unit gates/scales/ages, rule
        states, the rules' open statistics windows, the steps at which units were drawn, recorded rows."""
        return {
            "units": self.units.get_state(),
            "rules": [rule.get_state() for rule in self.rules],
            "windows": [None if window is None else _plain(window) for window in self._windows],
            "open": None if self._open is None else list(self._open),
            "drawn": self._drawn.copy(),
            "unit_rows": list(self._unit_rows),
            "action_rows": list(self._action_rows),
            "oracle_rows": list(self._oracle_rows),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (same rules, same layer)."""
        self.units.set_state(state["units"])
        for rule, rule_state in zip(self.rules, state["rules"], strict=True):
            rule.set_state(rule_state)
        self._windows = [None if window is None else OutputGradientStats(**window) for window in state["windows"]]
        self._open = None if state["open"] is None else list(state["open"])
        self._drawn = np.asarray(state["drawn"], dtype=np.int64).copy()
        self._unit_rows = list(state["unit_rows"])
        self._action_rows = list(state["action_rows"])
        self._oracle_rows = list(state.get("oracle_rows", []))

    def units_frame(self) -> pd.DataFrame:
        """One row per (epoch, unit): ``step`` (optimizer steps at the epoch's end), ``layer``, the
        epoch's statistics, ``active``, ``age`` and ``scale`` after the edits."""
        if not self._unit_rows:
            return pd.DataFrame(columns=UNIT_COLUMNS)
        return pd.concat(self._unit_rows, ignore_index=True)

    def oracle_frame(self) -> pd.DataFrame:
        """One row per (oracle epoch, unit): ``epoch, layer, unit, active``, ``oracle`` (the loss
        change of gating the unit alone), ``oracle_zero_output`` (of zeroing its output), then each
        criterion's score and each rule's (``rule.<label>``); empty without ``oracle=``."""
        if not self._oracle_rows:
            return pd.DataFrame(columns=["epoch", "layer", "unit", "active", "oracle", "oracle_zero_output"])
        return pd.concat(self._oracle_rows, ignore_index=True)

    def actions_frame(self) -> pd.DataFrame:
        """One row per edit: ``epoch, step, layer, rule, action, unit, value``; ``step`` counts the
        optimizer steps applied when the rule acted (``failed``: a rule raised, its edits undone;
        ``skip_nonfinite``: NaN/inf statistics, rule not run; ``skip_empty``: no statistics in its
        window; unit -1 for these)."""
        frame = pd.DataFrame(self._action_rows, columns=ACTION_COLUMNS)
        return frame.astype({"epoch": "int64", "step": "int64", "unit": "int64", "value": "float64"})


def _accepts_when(rule: AdaptationRule) -> bool:
    """Whether ``rule.apply`` takes the keyword ``when`` (by name, or through ``**kwargs``)."""
    parameters = inspect.signature(rule.apply).parameters.values()
    return any(p.name == "when" and p.kind != p.POSITIONAL_ONLY or p.kind == p.VAR_KEYWORD for p in parameters)


def _sum(total: OutputGradientStats | None, more: OutputGradientStats) -> OutputGradientStats:
    return more if total is None else total + more


def _plain(stats: OutputGradientStats) -> dict[str, Any]:
    """The keyword arguments that rebuild ``stats`` (plain values, for a checkpoint)."""
    return {
        **{name: getattr(stats, name) for name in stats.fields},
        "units": stats.units,
        "batches": stats.batches,
        "count": stats.count,
    }
