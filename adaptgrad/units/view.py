"""The per-unit handle on one layer: its edits, its readings, its state.

Example:
    >>> import keras, numpy as np, adaptgrad
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.GRU(4, name="gru"),
    ...                           keras.layers.Dense(1)])
    >>> units = adaptgrad.unit_view(model, "gru")
    >>> units.gate([1])
    [1]
    >>> float(np.abs(model.get_layer("gru")(np.ones((2, 5, 1)))[:, 1]).max())
    0.0
    >>> units.active
    array([ True, False,  True,  True])

:class:`UnitView` edits (gate, ungate, grow, scale, scale_outgoing, reinit, zero_outgoing) and
reads the units; the jobs it delegates live in the modules of :mod:`adaptgrad.units`, named by
job. :meth:`UnitView.ungate` restores the weights the unit had when it was gated; after a
reload, where those are gone, it draws fresh incoming weights (outgoing stay 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np

from adaptgrad import _instrument, slots
from adaptgrad.layers import find_layer
from adaptgrad.units.checks import activation_refusal, check_built, check_factors, check_units, optimizer_refusal
from adaptgrad.units.draws import Draws
from adaptgrad.units.incoming import weight_owner
from adaptgrad.units.install import install_gate
from adaptgrad.units.layout import Layout
from adaptgrad.units.outgoing import Index, consumer_chain
from adaptgrad.units.record import INCOMING, OUTGOING, UnitRecord
from adaptgrad.units.saved import SavedWeights
from adaptgrad.units.transaction import Journal
from adaptgrad.units.writes import Writes

__all__ = ["Edit", "UnitView", "unit_view"]


@dataclasses.dataclass(frozen=True)
class Edit:
    """One change made to one unit: ``action`` in gate / ungate / grow / scale / scale_outgoing / reinit / zero_outgoing."""

    action: str
    unit: int
    value: float = float("nan")


class UnitView:
    """The per-unit handle on one layer's units; made by :func:`unit_view`.

    Example:
        >>> import keras, adaptgrad
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="h"),
        ...                           keras.layers.Dense(1)])
        >>> units = adaptgrad.unit_view(model, "h")
        >>> units.scale([0, 2], [0.5, 2.0])
        >>> units.scales
        array([0.5, 1. , 2. , 1. ])

    ``min_active`` (default 1) is the floor :meth:`gate` never goes below. Every edit is
    appended to :attr:`edits` (the :class:`adaptgrad.Adapt` callback drains it into its action
    table).
    """

    def __init__(
        self,
        model: keras.Model,
        layer: keras.layers.Layer,
        next_layer: keras.layers.Layer | None,
        seed: int = 0,
        *,
        explicit_next_layer: bool = False,
    ) -> None:
        check_built(layer)
        slots.check_supported(getattr(model, "optimizer", None))
        self.model = model
        self.layer = layer
        self.next_layer = next_layer
        self._layout = Layout(layer, next_layer, explicit_next_layer)
        self.weights = self._layout.weights
        self.size = self._layout.size
        self.min_active = 1
        self.edits: list[Edit] = []
        self._draws = Draws(seed)
        self._record = UnitRecord(self.size)
        self._saved = SavedWeights()
        self._journal = Journal()
        self._writes: Writes | None = None  # the open edit's
        self._activation_refusal: str | None | bool = False  # False: not checked yet
        self._installed = install_gate(layer, self._layout, self)
        self._gate = self._installed.gate
        _instrument.invalidate_compiled(model)

    # -- reading ----------------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        """Seeds the fresh weights :meth:`reinit` draws (each call its own)."""
        return self._draws.seed

    @property
    def active(self) -> np.ndarray:
        """Boolean array: True for units that are not gated."""
        return self._gate.mask.numpy() > 0.5

    @property
    def scales(self) -> np.ndarray:
        """Each unit's cumulative gain: the product of every factor :meth:`scale` (into its incoming
        weights) and :meth:`scale_outgoing` (into the next layer's rows that read it) applied to
        it; a factor counts while the weights it went into last: :meth:`reinit` (and an
        :meth:`ungate` that draws) forgets the incoming ones, zeroing the outgoing weights
        (:meth:`zero_outgoing`, ``zero_outgoing=True``) the outgoing ones."""
        return self._record.gains

    @property
    def age(self) -> np.ndarray:
        """Completed epochs since each unit was built, re-initialised, gated or ungated: for an
        active unit, the age of its incoming weights; for a gated unit, how long it has been gated."""
        return self._record.age.copy()

    def saved(self, unit: int) -> list[np.ndarray] | None:
        """The weights :meth:`ungate` would restore for a gated unit: its incoming slices (one per
        entry of :attr:`weights`, the unit's columns of every gate block on the last axis), then
        its outgoing slices; None for an active unit or one whose weights are unknown (loaded gated)."""
        return self._saved.get(int(unit))

    def incoming_norms(self) -> np.ndarray:
        """L2 norm of each unit's incoming weights (all its slices of every incoming weight)."""
        squares = np.zeros(self.size)
        for variable, blocks, _ in self.weights:
            array = np.asarray(variable.numpy(), dtype=np.float64)
            per_column = (array**2).reshape(-1, array.shape[-1]).sum(axis=0)
            squares += per_column.reshape(blocks, self.size).sum(axis=0)
        return np.sqrt(squares)

    def columns(self, unit: int, blocks: int) -> np.ndarray:
        """Indices along the last axis that belong to ``unit`` in a weight with ``blocks`` blocks."""
        return self._layout.columns(unit, blocks)

    # -- editing ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Add one completed epoch to every unit's :attr:`age` (:class:`adaptgrad.Adapt` calls it)."""
        self._record.tick()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[UnitView]:
        """Undo every change the view made inside the block if the block raises, then re-raise.

        Example:
            >>> import keras, adaptgrad
            >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="h")])
            >>> units = adaptgrad.unit_view(model, "h")
            >>> try:
            ...     with units.transaction():
            ...         _ = units.gate([0])
            ...         raise RuntimeError("rule failed")
            ... except RuntimeError:
            ...     pass
            >>> units.active.tolist(), units.edits
            ([True, True, True, True], [])

        Covers incoming and outgoing weights, gates, optimizer slots of those weights, scales,
        ages, the reinit draw counter, the weights saved for :meth:`ungate` and :attr:`edits`
        (:mod:`adaptgrad.units.transaction`: only what the view changed is read back).
        """
        record, draws, edits, saved = self._record.copy(), self._draws.count, list(self.edits), self._saved.snapshot()

        def restore() -> None:
            self._record, self._draws.count, self.edits[:] = record, draws, edits
            self._saved.restore(saved)

        with self._journal.transaction(restore):
            yield self

    def scale(self, units: Iterable[int], factors: float | Sequence[float]) -> None:
        """Multiply each unit's incoming weights (all gate blocks, bias included) by its factor.

        A gated unit's weights are 0; its saved weights (that :meth:`ungate` restores) are scaled.
        """
        units = self._check(units)
        factors = check_factors(factors, len(units))
        unit_factors = np.ones(self.size)
        np.multiply.at(unit_factors, units, factors)  # a unit listed twice is scaled twice
        with self._edit() as writes:
            for variable, blocks, _ in self.weights:
                array = writes.array(variable)
                array *= np.tile(unit_factors, blocks).astype(array.dtype)
                writes.changed(variable)
        self._saved.update(
            self._saved.units, self._layout.incoming, lambda unit, i, values: (values * unit_factors[unit]).astype(values.dtype)
        )
        self._record.multiply(INCOMING, range(self.size), unit_factors)
        self.edits.extend(Edit("scale", unit, float(factor)) for unit, factor in zip(units, factors))

    def scale_outgoing(self, units: Iterable[int], factors: float | Sequence[float]) -> None:
        """Multiply each unit's weights in the next layer (the rows of its input kernels that read the
        unit) by its factor: a gain on the unit's output as the next layer sees it; the layer itself,
        recurrence included, is unchanged. A gated unit's saved outgoing weights are scaled. The
        factor enters the unit's :attr:`scales` as :meth:`scale`'s do."""
        units = self._check(units)
        factors = check_factors(factors, len(units))
        consumer = self._consumer_positions("scale outgoing weights")
        with self._edit() as writes:
            for position in consumer:
                variable = self._layout.variables[position]
                array = writes.array(variable)
                for unit, factor in zip(units, factors):
                    if unit in self._saved:
                        self._saved.update([unit], [position], lambda _, i, values, f=factor: (values * f).astype(values.dtype))
                    else:
                        array[self._layout.indices(unit)[position]] *= factor
                writes.changed(variable)
        self._record.multiply(OUTGOING, units, factors)
        self.edits.extend(Edit("scale_outgoing", unit, float(factor)) for unit, factor in zip(units, factors))

    def gate(self, units: Iterable[int]) -> list[int]:
        """Switch units off, in the order given, never leaving fewer than ``min_active`` active.

        Returns the units actually gated (already-gated units and those over the floor are
        skipped). A gated unit outputs exactly 0 at every time step until :meth:`ungate`: its
        incoming and outgoing weights are set to 0 (and saved for :meth:`ungate`).

        Raises:
            ValueError: the layer's activation does not map 0 to 0, or the optimizer averages
                weights (``use_ema``) while the next layer is unknown.
        """
        units = self._check(units)
        self._check_gateable()
        with self._edit() as writes:
            mask = writes.array(self._gate.mask)
            budget = int((mask > 0.5).sum()) - max(int(self.min_active), 0)
            chosen = []
            for unit in units:
                if mask[unit] > 0.5 and budget > 0:
                    chosen.append(unit)
                    mask[unit] = 0.0
                    budget -= 1
            if not chosen:
                return chosen
            writes.changed(self._gate.mask)
            shared = {id(self._layout.variables[i]) for i in self._layout.shared}
            true = {id(v): writes.array(v).copy() for v in self._layout.variables if id(v) in shared}
            arrays = [true.get(id(variable), writes.array(variable)) for variable in self._layout.variables]
            self._saved.fill(self._layout.shared, arrays, self._layout.indices)  # entries held by gated units
            for unit in chosen:
                self._saved.keep(unit, [array[index].copy() for array, index in zip(arrays, self._layout.indices(unit))])
            self._write(writes, chosen, lambda unit, i: 0.0)
        self._record.restart(chosen)  # a gated unit's age counts the epochs it has been gated
        self.edits.extend(Edit("gate", unit) for unit in chosen)
        return chosen

    def ungate(self, units: Iterable[int], *, zero_outgoing: bool = False) -> list[int]:
        """Switch gated units back on with the weights they had when gated, and fresh optimizer slots.

        Where those weights are unknown (the model was loaded with the unit gated), the unit
        starts as :meth:`reinit` draws it, outgoing weights 0. Returns the units ungated.
        """
        units = self._check(units)
        with self._edit() as writes:
            chosen = self._switch_on(writes, units)
            fresh = [unit for unit in chosen if unit not in self._saved]
            drawn = self._draw(fresh)
            saved = {unit: self._saved.pop(unit) for unit in chosen if unit in self._saved}
            count = len(self.weights)

            def values(unit: int, i: int) -> Any:
                if unit in saved:
                    return 0.0 if zero_outgoing and i >= count else saved[unit][i]
                return drawn[i][self._layout.indices(unit)[i]] if i < count else 0.0

            self._write(writes, chosen, values)
            self._write(writes, self._saved.units, lambda unit, i: 0.0)  # entries shared with gated units
        self._record.restart(chosen)
        self._record.forget(INCOMING, fresh)
        self._record.forget(OUTGOING, chosen if zero_outgoing else fresh)
        self.edits.extend(Edit("ungate", unit) for unit in chosen)
        if zero_outgoing:
            self.edits.extend(Edit("zero_outgoing", unit) for unit in chosen)
        return chosen

    def grow(self, units: Iterable[int], outgoing: Callable[[int, Any, Index], Any], values: Sequence[float] = ()) -> list[int]:
        """Switch gated units on as new units: incoming weights 0, outgoing slices
        ``outgoing(unit, variable, index)`` (``variable[index]`` is the unit's slice of that
        outgoing weight), fresh optimizer slots, age 0. The network's function does not change
        (the units output 0). Returns the units grown; ``values`` (one per unit) go to the edits.
        """
        units = self._check(units)
        count = len(self.weights)
        with self._edit() as writes:
            chosen = self._switch_on(writes, units)
            for unit in chosen:
                self._saved.pop(unit)

            def value(unit: int, i: int) -> Any:
                if i < count:
                    return 0.0
                return outgoing(unit, self._layout.variables[i], self._layout.indices(unit)[i])

            self._write(writes, chosen, value)
            self._write(writes, self._saved.units, lambda unit, i: 0.0)  # entries shared with gated units
        values = list(values) or [float("nan")] * len(chosen)
        self._record.restart(chosen)
        self._record.forget(INCOMING, chosen)
        self._record.forget(OUTGOING, chosen)
        self.edits.extend(Edit("grow", unit, float(v)) for unit, v in zip(chosen, values))
        return chosen

    def reinit(self, units: Iterable[int], *, zero_outgoing: bool = False) -> None:
        """Draw fresh incoming weights from the layer's initialisers; reset their optimizer slots.

        A gated unit stays gated: the fresh weights are what :meth:`ungate` will restore.

        Raises:
            ValueError: a weight has no known initializer (a cell without ``*_initializer``).
        """
        units = self._check(units)
        if not units:
            return
        if zero_outgoing:
            self._require_next_layer("zero outgoing weights")
        with self._edit() as writes:
            drawn = self._draw(units)
            gated = [unit for unit in units if unit in self._saved]
            self._saved.update(gated, self._layout.incoming, lambda unit, i, _: drawn[i][self._layout.indices(unit)[i]])
            live = [unit for unit in units if unit not in self._saved]
            self._write(writes, live, lambda unit, i: drawn[i][self._layout.indices(unit)[i]], outgoing=False)
            self._record.forget(INCOMING, units)
            self._record.restart(units)
            self.edits.extend(Edit("reinit", unit) for unit in units)
            if zero_outgoing:
                self.zero_outgoing(units)

    def zero_outgoing(self, units: Iterable[int]) -> None:
        """Zero the units' outgoing weights (next layer's input rows, recurrent rows) and their slots."""
        units = self._check(units)
        if not units:
            return
        self._require_next_layer("zero outgoing weights")
        with self._edit() as writes:
            gated = [unit for unit in units if unit in self._saved]
            self._saved.update(gated, self._layout.outgoing_positions, lambda unit, i, values: np.zeros_like(values))
            live = [unit for unit in units if unit not in self._saved]
            self._write(writes, live, lambda unit, i: 0.0, incoming=False)
        self._record.forget(OUTGOING, units)
        self.edits.extend(Edit("zero_outgoing", unit) for unit in units)

    # -- state ------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Gates, scales, ages, the reinit counter and the gated units' saved weights (see :meth:`set_state`)."""
        return {
            "mask": self._gate.mask.numpy().copy(),
            **self._record.get_state(),
            "draws": self._draws.count,
            "saved": self._saved.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (the weights themselves are the model's)."""
        self._gate.set_gated(np.flatnonzero(np.asarray(state["mask"]) < 0.5))
        self._record.set_state(state)
        self._draws.count = int(state["draws"])
        self._saved.set_state(state["saved"])

    def remove(self) -> None:
        """Ungate every unit and put back the constraints and initializers the layer had."""
        self.ungate(np.flatnonzero(~self.active))
        self._installed.remove()
        _instrument.invalidate_compiled(self.model)

    # -- helpers ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _edit(self) -> Iterator[Writes]:
        """The writes of the edit under way (an edit calling another shares them), committed at its end."""
        if self._writes is not None:
            yield self._writes
            return
        self._writes = Writes(getattr(self.model, "optimizer", None), self._journal)
        try:
            yield self._writes
            self._writes.commit()
        finally:
            self._writes = None

    def _write(
        self,
        writes: Writes,
        units: list[int],
        values: Callable[[int, int], Any],
        *,
        incoming: bool = True,
        outgoing: bool = True,
    ) -> None:
        """Set the units' outgoing and/or incoming slices to ``values(unit, i)`` (``i``: the position,
        :mod:`adaptgrad.units.layout`), with fresh optimizer slots. Incoming slices are written
        last: a recurrent kernel's own columns are incoming."""
        positions = [*(self._layout.outgoing_positions if outgoing else ()), *(self._layout.incoming if incoming else ())]
        for i in positions:
            variable = self._layout.variables[i]
            for unit in units:
                writes.write(variable, self._layout.indices(unit)[i], values(unit, i))

    def _switch_on(self, writes: Writes, units: list[int]) -> list[int]:
        """Ungate the gated ones among ``units`` in the mask; returns them."""
        mask = writes.array(self._gate.mask)
        chosen = [unit for unit in units if mask[unit] < 0.5]
        if chosen:
            mask[chosen] = 1.0
            writes.changed(self._gate.mask)
        return chosen

    def _draw(self, units: list[int]) -> list[np.ndarray]:
        return self._draws.draw(self.weights, self.layer.name) if units else []

    def _consumer_positions(self, what: str) -> list[int]:
        """The positions of the next layer's outgoing slices (not the layer's own recurrent rows)."""
        self._require_next_layer(what)
        own = {id(variable) for variable, _, _ in self.weights}
        return [i for i in self._layout.outgoing_positions if id(self._layout.variables[i]) not in own]

    def _require_next_layer(self, what: str) -> None:
        if self.next_layer is None:
            raise ValueError(
                f"cannot {what} of layer {self.layer.name!r}: no next layer is known "
                f"(pass next_layer=... to unit_view for a subclassed model)"
            )

    def _check(self, units: Iterable[int]) -> list[int]:
        return check_units(units, self.size, self.layer.name)

    def _check_gateable(self) -> None:
        if self._activation_refusal is False:  # the activation does not change: asked once
            self._activation_refusal = activation_refusal(self.layer, weight_owner(self.layer))
        refusal = self._activation_refusal or optimizer_refusal(
            self.layer, getattr(self.model, "optimizer", None), self.next_layer
        )
        if refusal:
            raise ValueError(refusal)

    def __repr__(self) -> str:
        return f"<UnitView layer={self.layer.name!r} size={self.size} active={int(self.active.sum())}>"


def unit_view(
    model: keras.Model,
    layer: str | keras.layers.Layer,
    *,
    next_layer: str | keras.layers.Layer | None = None,
    seed: int = 0,
) -> UnitView:
    """A :class:`UnitView` on ``layer``'s units (installs the gate; call before ``fit``).

    Example:
        >>> import keras, adaptgrad
        >>> from adaptgrad.question import question_model, toy_data
        >>> model = question_model()
        >>> _ = model(toy_data()[0])                                  # build it
        >>> units = adaptgrad.unit_view(model, "minimalrnn", next_layer="out")
        >>> units.size, units.active.tolist()
        (2, [True, True])

    Args:
        model: a built Keras 3 model (Sequential, functional or subclassed).
        layer: name or object of a Dense, SimpleRNN, GRU, LSTM or ``RNN`` layer over a cell that
            follows Keras's conventions or implements ``adaptgrad_unit_weights``.
        next_layer: the layer that consumes ``layer``'s output directly, whose kernel rows are the
            units' outgoing weights. Found automatically in Sequential and functional models,
            through weightless layers in between; None (unknown) in a subclassed model.
        seed: seeds the fresh weights that :meth:`UnitView.reinit` draws (each call its own).

    Raises:
        ValueError: the layer is not built, the consumer found cannot be mapped exactly (pass
            ``next_layer``), or the model's optimizer is not supported.
        TypeError: the layer type is not supported.
    """
    target = find_layer(model, layer)
    if next_layer is not None:
        return UnitView(model, target, find_layer(model, next_layer), seed, explicit_next_layer=True)
    found = consumer_chain(target)
    return UnitView(model, target, found[1] if found else None, seed)
