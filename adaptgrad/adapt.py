"""The Keras callback that runs adaptation rules at the end of every epoch.

Example:
    >>> import keras, numpy as np, adaptgrad
    >>> from adaptgrad.rules import TaylorPrune
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.GRU(8, name="gru"),
    ...                           keras.layers.Dense(1)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> adapt = adaptgrad.Adapt(adaptgrad.watch(model, "gru"), [TaylorPrune(fraction=0.25)])
    >>> x, y = np.ones((16, 5, 1)), np.ones((16, 1))
    >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[adapt])
    >>> int(adapt.units.active.sum())
    4
    >>> adapt.actions_frame().action.unique().tolist()
    ['gate']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
import pandas as pd

from adaptgrad.capture import GradientWatch
from adaptgrad.rules.base import AdaptationRule
from adaptgrad.stats import DERIVED_FIELDS, SUM_FIELDS
from adaptgrad.units import UnitView, unit_view

UNIT_COLUMNS = ["epoch", "unit", "active", "scale", "batches", "count", *SUM_FIELDS, *DERIVED_FIELDS]
ACTION_COLUMNS = ["epoch", "rule", "action", "unit", "value"]


class Adapt(keras.callbacks.Callback):
    """At each epoch end: stats of ``watch`` -> each rule in order -> unit edits -> reset.

    Args:
        watch: the :class:`~adaptgrad.GradientWatch` on the layer to adapt (either mode).
        rules: rules applied in order; a rule whose schedule does not fire is not called, and a
            rule facing NaN/inf statistics is skipped and the skip recorded as an action.
        units: the :class:`~adaptgrad.UnitView` to edit; made from the watched layer if None
            (the model must be built). ``next_layer`` and ``seed`` are passed to
            :func:`~adaptgrad.unit_view`.

    Records, as pandas DataFrames: :meth:`units_frame` (one row per epoch and unit: the
    epoch's statistics and the unit's ``active`` flag and cumulative ``scale`` after the
    epoch's edits) and :meth:`actions_frame` (one row per edit). Adds ``active_units`` to the
    epoch logs, so it shows in ``History``. Works at epoch level only: no per-batch hook, so
    Keras keeps its asynchronous dispatch.
    """

    def __init__(
        self,
        watch: GradientWatch,
        rules: AdaptationRule | Iterable[AdaptationRule],
        units: UnitView | None = None,
        *,
        next_layer: str | keras.layers.Layer | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.watch = watch
        self.rules = [rules] if isinstance(rules, AdaptationRule) else list(rules)
        for rule in self.rules:
            if not isinstance(rule, AdaptationRule):
                raise TypeError(f"rules must be AdaptationRule instances, got {type(rule).__name__}: {rule!r}")
        self.units = units if units is not None else unit_view(watch.model, watch.layer, next_layer=next_layer, seed=seed)
        for rule in self.rules:
            if rule.min_active > self.units.size:
                raise ValueError(
                    f"{rule.label}: min_active={rule.min_active} exceeds the {self.units.size} units of "
                    f"layer {watch.layer.name!r}; valid: 1..{self.units.size}"
                )
        self._unit_rows: list[pd.DataFrame] = []
        self._action_rows: list[tuple[int, str, str, int, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        stats = self.watch.stats()
        for rule in self.rules:
            if not rule.applies_at(epoch):
                continue
            if not stats.finite:
                self._action_rows.append((epoch, rule.label, "skip_nonfinite", -1, float("nan")))
                continue
            self.units.min_active = rule.min_active
            self.units.edits.clear()
            rule.apply(stats, self.units, epoch)
            self._action_rows.extend((epoch, rule.label, e.action, e.unit, e.value) for e in self.units.edits)
            self.units.edits.clear()
        self.watch.reset()
        active = self.units.active
        columns = {"epoch": epoch, "unit": np.arange(self.units.size), "active": active, "scale": self.units.scales}
        self._unit_rows.append(pd.DataFrame({**columns, **stats.as_dict()}, columns=UNIT_COLUMNS))
        if logs is not None:
            logs["active_units"] = int(active.sum())

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: unit gates/scales, rule states, recorded rows."""
        return {
            "units": self.units.get_state(),
            "rules": [rule.get_state() for rule in self.rules],
            "unit_rows": list(self._unit_rows),
            "action_rows": list(self._action_rows),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (same rules, same layer)."""
        self.units.set_state(state["units"])
        for rule, rule_state in zip(self.rules, state["rules"], strict=True):
            rule.set_state(rule_state)
        self._unit_rows = list(state["unit_rows"])
        self._action_rows = list(state["action_rows"])

    def units_frame(self) -> pd.DataFrame:
        """One row per (epoch, unit): statistics, ``active`` and ``scale`` after the edits."""
        if not self._unit_rows:
            return pd.DataFrame(columns=UNIT_COLUMNS)
        return pd.concat(self._unit_rows, ignore_index=True)

    def actions_frame(self) -> pd.DataFrame:
        """One row per edit: ``epoch, rule, action, unit, value``."""
        frame = pd.DataFrame(self._action_rows, columns=ACTION_COLUMNS)
        return frame.astype({"epoch": "int64", "unit": "int64", "value": "float64"})
