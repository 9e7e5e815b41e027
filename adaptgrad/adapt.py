"""The Keras callback that runs adaptation rules at the end of every epoch.

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
"""

from __future__ import annotations

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
from adaptgrad.stats import DERIVED_FIELDS, SUM_FIELDS, OutputGradientStats
from adaptgrad.units import UnitView, unit_view

UNIT_COLUMNS = ["epoch", "layer", "unit", "active", "age", "scale", "batches", "count", *SUM_FIELDS, *DERIVED_FIELDS]
ACTION_COLUMNS = ["epoch", "layer", "rule", "action", "unit", "value"]

_ADAPTS: weakref.WeakKeyDictionary[keras.Model, weakref.WeakSet[Adapt]] = weakref.WeakKeyDictionary()
"""Model -> the Adapt callbacks alive on it (weakly held: an Adapt that is dropped stops counting)."""


class Adapt(keras.callbacks.Callback):
    """At each epoch end: stats of ``watch`` -> unit ages + 1 -> each rule in order -> reset.

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
            capture mode, or ``min_active`` exceeds the layer.

    Each rule's ``apply`` runs inside :meth:`UnitView.transaction`: if it raises, its edits of
    that call are undone, a ``failed`` action is recorded, and the exception propagates (so
    ``fit`` stops). Unit ages (:attr:`UnitView.age`) grow by one at every epoch end before the
    rules run, so a unit re-initialised at the end of epoch t has age 1 when rules run at the
    end of epoch t+1.

    Records, as pandas DataFrames: :meth:`units_frame` (one row per epoch and unit: the
    epoch's statistics and the unit's ``active`` flag, ``age`` and ``scale``, its cumulative gain
    whichever weights it went into (:attr:`UnitView.scales`), after the epoch's edits) and :meth:`actions_frame` (one row per edit); both carry the
    ``layer`` name, so the tables of several Adapts concatenate. Adds ``active_units/<layer>``
    to the epoch logs (it shows in ``History``), and plain ``active_units`` too when this is the
    only Adapt alive on the model (Adapts register themselves, weakly, per model when built).
    Works at epoch level only: no per-batch hook, so Keras keeps its asynchronous dispatch.
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
        self._action_rows: list[tuple[int, str, str, str, int, float]] = []
        self._oracle_rows: list[pd.DataFrame] = []
        if oracle_every < 1:
            raise ValueError(f"oracle_every={oracle_every!r} must be an integer >= 1")
        self.oracle_data, self.oracle_every = oracle, int(oracle_every)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        stats = self.watch.stats()
        if self.oracle_data is not None and (epoch + 1) % self.oracle_every == 0:
            self._oracle_rows.append(self._measure_oracle(stats, epoch))
        self.units.tick()
        for rule in self.rules:
            if not rule.applies_at(epoch):
                continue
            if not stats.finite:
                self._record(epoch, rule, "skip_nonfinite")
                continue
            self._apply(rule, stats, epoch)
        self.watch.reset()
        active = self.units.active
        columns = {
            "epoch": epoch,
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

    def _apply(self, rule: AdaptationRule, stats: Any, epoch: int) -> None:
        """One rule's edits, all or none: a rule that raises leaves the layer as it found it."""
        self.units.min_active = rule.floor(self.units.size)
        self.units.edits.clear()
        try:
            with self.units.transaction():
                rule.apply(stats, self.units, epoch)
        except Exception:
            self._record(epoch, rule, "failed")
            raise
        for edit in self.units.edits:
            self._record(epoch, rule, edit.action, edit.unit, edit.value)
        self.units.edits.clear()

    def _record(self, epoch: int, rule: AdaptationRule, action: str, unit: int = -1, value: float = float("nan")) -> None:
        self._action_rows.append((epoch, self.layer_name, rule.label, action, unit, value))

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: unit gates/scales/ages, rule states, recorded rows."""
        return {
            "units": self.units.get_state(),
            "rules": [rule.get_state() for rule in self.rules],
            "unit_rows": list(self._unit_rows),
            "action_rows": list(self._action_rows),
            "oracle_rows": list(self._oracle_rows),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (same rules, same layer)."""
        self.units.set_state(state["units"])
        for rule, rule_state in zip(self.rules, state["rules"], strict=True):
            rule.set_state(rule_state)
        self._unit_rows = list(state["unit_rows"])
        self._action_rows = list(state["action_rows"])
        self._oracle_rows = list(state.get("oracle_rows", []))

    def units_frame(self) -> pd.DataFrame:
        """One row per (epoch, unit): ``layer``, statistics, ``active``, ``age`` and ``scale`` after the edits."""
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
        """One row per edit: ``epoch, layer, rule, action, unit, value`` (``failed``: a rule raised,
        its edits undone; ``skip_nonfinite``: NaN/inf statistics, rule not run; unit -1 for both)."""
        frame = pd.DataFrame(self._action_rows, columns=ACTION_COLUMNS)
        return frame.astype({"epoch": "int64", "unit": "int64", "value": "float64"})
