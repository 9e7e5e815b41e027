"""Unit surgery: rescale, gate, ungate and re-initialise single units of a layer.

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

"Unit j" is output feature j. Its *incoming* weights are the slices along the last axis of every
weight that feeds it: the kernel column, the recurrent-kernel column and the bias entry — for a
GRU or LSTM the unit's column in every gate block (z, r, h / i, f, c, o), so that a unit is
edited as a whole. Its *outgoing* weights are the next layer's input rows it feeds (found through
Flatten, Reshape, Permute, pooling, dropout, TimeDistributed...) and, in a recurrent layer, row j
of its own recurrent kernel except the unit's own columns.

Gating is part of the model. A gated unit's incoming and outgoing weights are set to exactly 0;
a GRU, LSTM, SimpleRNN, MinimalRNN or Dense unit whose incoming weights are 0 outputs exactly 0
at every step from a zero initial state (its candidate is ``activation(0) = 0``; layers whose
activation does not map 0 to 0 are refused). With its outgoing weights 0 as well, every gradient
reaching the unit's weights is exactly 0, so no optimizer moves them, and a
:class:`adaptgrad.gates.UnitGate` constraint — applied by the optimizer inside the compiled step,
its mask a variable the step reads — keeps the incoming weights 0 whatever happens. The gate and a
gate-aware initializer are stored in the layer's config, so ``model.save`` / ``load_model``,
``get_config`` / ``from_config`` and ``save_weights`` / ``load_weights`` keep the units gated, and
a new view on the loaded model sees them. Gating never changes how Keras runs the layer (a GRU or
LSTM keeps ``use_cudnn``). :meth:`UnitView.ungate` restores the weights the unit had when it was
gated; after a reload, where those are gone, it draws fresh incoming weights (outgoing stay 0).

A layer or cell following Keras's conventions — weights ``kernel``, ``recurrent_kernel``,
``bias`` whose last axis is k·units, output = first state, initialisers in ``*_initializer``
attributes — is adaptable as it is. Another one declares its weights by defining
``adaptgrad_unit_weights(self)``, returning ``[(variable, gate_blocks, initializer), ...]``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np

from adaptgrad import _instrument, _keras, slots
from adaptgrad.gates import GatedInitializer, UnitGate
from adaptgrad.layers import find_layer

__all__ = ["Edit", "UnitView", "unit_view"]

UnitWeight = tuple[Any, int, Any]
"""``(variable, gate_blocks, initializer or None)``: unit j owns indices ``j + k*units`` of the last axis."""

Index = tuple[Any, ...]
_CONVENTION = {"kernel": "kernel", "recurrent_kernel": "recurrent", "bias": "bias"}  # weight -> attribute prefix


@dataclasses.dataclass(frozen=True)
class Edit:
    """One change made to one unit: ``action`` in gate / ungate / grow / scale / reinit / zero_outgoing."""

    action: str
    unit: int
    value: float = float("nan")


@dataclasses.dataclass(frozen=True)
class _Outgoing:
    """A weight holding outgoing slices: ``index(unit)`` selects them."""

    variable: Any
    index: Callable[[int], Index]


def weight_owner(layer: keras.layers.Layer) -> Any:
    """The object holding a layer's unit weights: the cell of a recurrent layer, else the layer."""
    return layer.cell if _instrument.is_recurrent(layer) else layer


def _base(value: Any) -> Any:
    """An initializer or constraint without adaptgrad's gate wrapped around it."""
    return value.inner if isinstance(value, (GatedInitializer, UnitGate)) else value


def _lstm_bias_initializer(cell: keras.layers.LSTMCell, bias_initializer: Any) -> Any:
    if not cell.unit_forget_bias:
        return bias_initializer

    def initializer(shape: tuple[int, ...], dtype: Any = None) -> Any:
        units = cell.units
        return keras.ops.concatenate(
            [
                bias_initializer((units,), dtype=dtype),
                keras.ops.ones((units,), dtype=dtype),
                bias_initializer((units * 2,), dtype=dtype),
            ]
        )

    return initializer


def _units_of(layer: keras.layers.Layer) -> int:
    if _instrument.is_recurrent(layer):
        return _instrument.hidden_units(layer)
    return int(layer.units)


def incoming_weights(layer: keras.layers.Layer) -> tuple[list[UnitWeight], list[str | None]]:
    """The per-unit incoming weights of a layer and, for each, its attribute prefix (``kernel``,
    ``recurrent``, ``bias``: where its ``*_initializer`` / ``*_constraint`` live) or None.

    Raises:
        TypeError: the layer follows neither Keras's conventions nor the protocol.
    """
    owner = weight_owner(layer)
    if hasattr(owner, "adaptgrad_unit_weights"):
        weights = [tuple(weight) for weight in owner.adaptgrad_unit_weights()]
        return weights, [None] * len(weights)  # type: ignore[return-value]
    if not (isinstance(layer, keras.layers.Dense) or _instrument.is_recurrent(layer)) or not isinstance(
        getattr(owner, "kernel", None), keras.Variable
    ):
        raise TypeError(
            f"adaptgrad cannot edit units of layer {layer.name!r} ({type(owner).__name__}); supported: Dense, "
            f"SimpleRNN, GRU, LSTM, RNN over a cell with weights kernel / recurrent_kernel / bias whose last axis "
            f"is k*units (SimpleRNNCell, GRUCell, LSTMCell, MinimalRNNCell, your own), or any layer or cell that "
            f"defines adaptgrad_unit_weights()"
        )
    units = _units_of(layer)
    weights, prefixes = [], []
    for name, prefix in _CONVENTION.items():
        variable = getattr(owner, name, None)
        if not isinstance(variable, keras.Variable):
            continue
        if variable.shape[-1] % units:
            raise TypeError(
                f"weight {name!r} of layer {layer.name!r} has a last axis of {variable.shape[-1]}, not a multiple of "
                f"its {units} units; define adaptgrad_unit_weights() on {type(owner).__name__}"
            )
        initializer = _base(getattr(owner, f"{prefix}_initializer", None))
        if name == "bias" and initializer is not None and isinstance(owner, keras.layers.LSTMCell):
            initializer = _lstm_bias_initializer(owner, initializer)
        weights.append((variable, variable.shape[-1] // units, initializer))
        prefixes.append(prefix)
    return weights, prefixes


def _seeded(initializer: Any, seed: int) -> Any:
    """A copy of a Keras initializer with a fixed seed (others, e.g. LSTM's bias, as they are)."""
    config = initializer.get_config() if hasattr(initializer, "get_config") else None
    if isinstance(config, dict) and "seed" in config:
        return type(initializer).from_config({**config, "seed": seed})
    return initializer


def _numpy(variable: Any) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(variable))


def _set(variable: Any, index: Index, values: Any) -> None:
    array = _numpy(variable)
    array[index] = values
    variable.assign(array)


# -- outgoing weights ------------------------------------------------------------------------------


def input_kernels(consumer: keras.layers.Layer) -> list[Any]:
    """The weights whose axis ``ndim - 2`` indexes ``consumer``'s input features (last input axis)."""
    if isinstance(consumer, keras.layers.TimeDistributed):
        return input_kernels(consumer.layer)
    if isinstance(consumer, keras.layers.Bidirectional):
        return input_kernels(consumer.forward_layer) + input_kernels(consumer.backward_layer)
    owner = weight_owner(consumer)
    kernel = getattr(owner, "kernel", None)
    if isinstance(consumer, (keras.layers.Dense, keras.layers.RNN)) or (
        isinstance(consumer, keras.layers.Layer) and type(consumer).__name__.startswith("Conv") and kernel is not None
    ):
        if getattr(consumer, "data_format", "channels_last") != "channels_last":
            return []
        return [kernel] if isinstance(kernel, keras.Variable) else []
    return []


def _row_index(kernel: Any, rows: np.ndarray) -> Index:
    return (slice(None),) * (len(kernel.shape) - 2) + (rows,)


def consumer_chain(layer: keras.layers.Layer) -> tuple[list[keras.layers.Layer], keras.layers.Layer] | None:
    """The weightless layers between ``layer`` and the first layer with weights it feeds, following a
    single chain in a Sequential/functional graph; None where the consumer is not unique."""
    chain: list[keras.layers.Layer] = []
    current = layer
    while True:
        consumers = {id(operation): operation for operation in _keras.consumers(current)}
        found = [c for c in consumers.values() if isinstance(c, keras.layers.Layer)]
        if len(found) != 1:
            return None
        current = found[0]
        if current.weights or isinstance(current, keras.Model):
            return chain, current
        chain.append(current)


def _trace_rows(layer: keras.layers.Layer, chain: list[keras.layers.Layer], size: int, features: int) -> list[np.ndarray]:
    """For each unit, the positions of the consumer's last input axis that carry exactly that unit.

    Every unit gets a random integer code, broadcast over the layer's output and run through the
    weightless chain; a consumer input position must carry one unit's code (or 0) everywhere. Three
    independent codings rule out a mix of units passing for one unit by chance. Raises ValueError
    where the chain does not keep units apart.
    """
    shape = tuple(1 if i == 0 else (dim or 2) for i, dim in enumerate(layer.output.shape))
    rows: list[np.ndarray] | None = None
    for seed in range(3):
        codes = np.random.default_rng(seed).choice(np.arange(1, 2**16), size=size, replace=False).astype(np.float32)
        values = np.broadcast_to(codes, shape)
        for step in chain:
            values = keras.ops.convert_to_numpy(step(values))
        values = np.asarray(values).reshape(-1, values.shape[-1])
        if values.shape[-1] != features:
            raise ValueError(f"reaches the consumer with {values.shape[-1]} input features, its kernel has {features}")
        unit_of = {float(code): unit for unit, code in enumerate(codes)}
        owner = np.full(features, -1)
        for position in range(features):
            carried = {unit_of.get(float(v), -2) for v in np.unique(values[:, position]) if v != 0}
            if -2 in carried or len(carried) > 1:
                raise ValueError(f"consumer input feature {position} mixes units (or changes their values)")
            owner[position] = carried.pop() if carried else -1
        found = [np.flatnonzero(owner == unit) for unit in range(size)]
        if rows is not None and any(not np.array_equal(a, b) for a, b in zip(rows, found)):
            raise ValueError("the units' positions differ between codings")
        rows = found
    assert rows is not None
    return rows


def unit_rows(layer: keras.layers.Layer, size: int, next_layer: keras.layers.Layer, explicit: bool) -> list[np.ndarray]:
    """For each unit of ``layer``, the rows (axis ``ndim - 2``) of ``next_layer``'s input kernels it feeds.

    Raises:
        ValueError: the consumer, or the chain of layers to it, cannot be mapped exactly.
    """
    hint = "pass next_layer=<the layer whose kernel rows are these units' outgoing weights> to unit_view"
    kernels = input_kernels(next_layer)
    if not kernels:
        raise ValueError(
            f"unit_view cannot map the outgoing weights of layer {layer.name!r} onto {next_layer.name!r} "
            f"({type(next_layer).__name__}): supported consumers are Dense, recurrent layers, channels-last "
            f"convolutions, TimeDistributed and Bidirectional over them; {hint}"
        )
    features = int(kernels[0].shape[-2])
    if explicit:
        if features != size:
            raise ValueError(
                f"next_layer {next_layer.name!r} has {features} input features, layer {layer.name!r} has {size} "
                f"units; pass the layer that consumes {layer.name!r}'s output directly"
            )
        return [np.array([unit]) for unit in range(size)]
    chain, _ = consumer_chain(layer)  # type: ignore[misc]
    try:
        rows = _trace_rows(layer, chain, size, features)
    except Exception as error:  # noqa: BLE001 - any failure to trace means: not exactly mappable
        path = " -> ".join(step.name for step in [layer, *chain, next_layer])
        raise ValueError(
            f"unit_view cannot map the outgoing weights of layer {layer.name!r} exactly onto "
            f"{next_layer.name!r} ({type(next_layer).__name__}) through {path}: {error}; {hint}"
        ) from error
    _check_training_chain(layer, chain, rows, next_layer)
    return rows


def _check_training_chain(
    layer: keras.layers.Layer, chain: list[keras.layers.Layer], rows: list[np.ndarray], next_layer: keras.layers.Layer
) -> None:
    """Refuse a chain that, called in training mode, lets a unit reach consumer rows other than its
    own, or turns a zero output into a non-zero input of the consumer (``GaussianNoise``,
    ``AlphaDropout``): a gated unit's outgoing rows would then get gradient and drift from 0.
    Layers that only rescale or drop entries in training (``Dropout``, ``GaussianDropout``) pass.

    Each unit's code alone, and an all-zero input, run through the chain as one batch with
    ``training=True``."""
    size = len(rows)
    shape = tuple(dim or 2 for dim in layer.output.shape[1:])
    codes = np.random.default_rng(3).choice(np.arange(1, 2**16), size=size, replace=False).astype(np.float32)
    values = np.zeros((size + 1, *shape), np.float32)  # the last example: every unit outputs 0
    for unit, code in enumerate(codes):
        values[unit, ..., unit] = code
    advice = f"move it before {layer.name!r} or after {next_layer.name!r}, or leave it out"
    for step in chain:
        values = np.asarray(keras.ops.convert_to_numpy(step(values, training=True)))
        if np.any(values[-1] != 0):
            raise ValueError(
                f"layer {step.name!r} ({type(step).__name__}) between {layer.name!r} and its consumer "
                f"{next_layer.name!r} turns a zero input into a non-zero output in training, so a gated unit of "
                f"{layer.name!r} would still feed {next_layer.name!r}, whose rows for it would get gradient and "
                f"drift from 0; {advice}"
            )
    reached = values[:-1].reshape(size, -1, values.shape[-1]) != 0
    for unit in range(size):
        stray = np.setdiff1d(np.flatnonzero(reached[unit].any(axis=0)), rows[unit])
        if stray.size:
            training = [step.name for step in chain if _keras.call_takes_training(step)]
            raise ValueError(
                f"in training, unit {unit} of {layer.name!r} reaches input features {stray.tolist()} of "
                f"{next_layer.name!r} that are not its own (training-mode layers on the way: {training}); {advice}"
            )


def _next_outgoing(
    layer: keras.layers.Layer, size: int, next_layer: keras.layers.Layer | None, explicit: bool
) -> list[_Outgoing]:
    if next_layer is None:
        return []
    rows = unit_rows(layer, size, next_layer, explicit)
    return [_Outgoing(kernel, lambda unit, k=kernel: _row_index(k, rows[unit])) for kernel in input_kernels(next_layer)]


def _recurrent_outgoing(weights: list[UnitWeight], owner: Any, size: int) -> list[_Outgoing]:
    recurrent = getattr(owner, "recurrent_kernel", None)
    for variable, blocks, _ in weights:
        if variable is recurrent:
            columns = int(variable.shape[-1])

            def index(unit: int, blocks: int = blocks, columns: int = columns) -> Index:
                return (unit, np.setdiff1d(np.arange(columns), unit + size * np.arange(blocks)))

            return [_Outgoing(variable, index)]
    return []


# -- the view --------------------------------------------------------------------------------------


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
        if not layer.built:
            raise ValueError(
                f"layer {layer.name!r} is not built yet: call the model on a batch (or "
                f"model.build(input_shape)) before making a unit view"
            )
        slots.check_supported(getattr(model, "optimizer", None))
        self.model = model
        self.layer = layer
        self.next_layer = next_layer
        self.weights, prefixes = incoming_weights(layer)
        first, blocks, _ = self.weights[0]
        self.size = int(first.shape[-1]) // blocks
        owner = weight_owner(layer)
        self._outgoing = _recurrent_outgoing(self.weights, owner, self.size) + _next_outgoing(
            layer, self.size, next_layer, explicit_next_layer
        )
        self.min_active = 1
        self.edits: list[Edit] = []
        self.seed = int(seed)
        self._scales = np.ones((2, self.size))  # each unit's gain in its incoming weights, in the next layer's rows
        self._age = np.zeros(self.size, dtype=np.int64)
        self._draws = 0  # reinit calls so far: each draws with its own seed, so resumes repeat them
        self._saved: dict[int, list[np.ndarray]] = {}  # gated unit -> its incoming, then outgoing slices
        self._gate, self._restore = self._install_gate(owner, prefixes)
        _instrument.invalidate_compiled(model)

    def _install_gate(self, owner: Any, prefixes: list[str | None]) -> tuple[UnitGate, list[tuple[Any, str, Any]]]:
        """Put one shared :class:`UnitGate` on every incoming weight (and in the layer's config);
        adopt the gated units of gates already there (a loaded model), else the units whose incoming
        weights are all 0. Returns the gate and what
        :meth:`remove` puts back."""
        existing = [v.constraint for v, _, _ in self.weights if isinstance(v.constraint, UnitGate)]
        if any(getattr(gate, "view", None) is not None for gate in existing):
            raise ValueError(f"layer {self.layer.name!r} already has a unit view; reuse it")
        gated = sorted({unit for gate in existing for unit in gate.gated}) if existing else self._zero_units()
        gate = UnitGate(self.size, gated)
        gate.view = self
        restore: list[tuple[Any, str, Any]] = []
        for (variable, _, _), prefix in zip(self.weights, prefixes):
            restore.append((variable, "constraint", variable.constraint))
            variable.constraint = _wrap(gate, _base(variable.constraint))
            if prefix is None:
                continue
            for attribute, value in ((f"{prefix}_constraint", variable.constraint), (f"{prefix}_initializer", None)):
                if hasattr(owner, attribute):
                    old = getattr(owner, attribute)
                    restore.append((owner, attribute, old))
                    new = value if value is not None else GatedInitializer(gate, _base(old))
                    object.__setattr__(owner, attribute, new)
        return gate, restore

    def _zero_units(self) -> list[int]:
        """Units whose incoming weights are all exactly 0: gated in a model saved without its gates'
        config (a subclassed model rebuilds its layers from code)."""
        zero = np.ones(self.size, dtype=bool)
        for variable, blocks, _ in self.weights:
            array = np.asarray(keras.ops.convert_to_numpy(variable))
            zero &= np.all(array.reshape(-1, blocks, self.size) == 0, axis=(0, 1))
        return np.flatnonzero(zero).tolist() if not zero.all() else []

    # -- reading ----------------------------------------------------------------------------------

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
        return self._scales.prod(axis=0)

    @property
    def age(self) -> np.ndarray:
        """Completed epochs since each unit was built, re-initialised, gated or ungated: for an
        active unit, the age of its incoming weights; for a gated unit, how long it has been gated."""
        return self._age.copy()

    def saved(self, unit: int) -> list[np.ndarray] | None:
        """The weights :meth:`ungate` would restore for a gated unit: its incoming slices (one per
        entry of :attr:`weights`, the unit's columns of every gate block on the last axis), then
        its outgoing slices; None for an active unit or one whose weights are unknown (loaded gated)."""
        saved = self._saved.get(int(unit))
        return None if saved is None else [array.copy() for array in saved]

    def incoming_norms(self) -> np.ndarray:
        """L2 norm of each unit's incoming weights (all its slices of every incoming weight)."""
        squares = np.zeros(self.size)
        for variable, blocks, _ in self.weights:
            array = np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)
            per_column = (array**2).reshape(-1, array.shape[-1]).sum(axis=0)
            squares += per_column.reshape(blocks, self.size).sum(axis=0)
        return np.sqrt(squares)

    def columns(self, unit: int, blocks: int) -> np.ndarray:
        """Indices along the last axis that belong to ``unit`` in a weight with ``blocks`` blocks."""
        return unit + self.size * np.arange(blocks)

    # -- editing ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Add one completed epoch to every unit's :attr:`age` (:class:`adaptgrad.Adapt` calls it)."""
        self._age += 1

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
        ages, the reinit draw counter, the weights saved for :meth:`ungate` and :attr:`edits`.
        """
        variables = self._touchable_variables()
        saved = [_numpy(variable) for variable in variables]
        python = (self._scales.copy(), self._age.copy(), self._draws, list(self.edits), copy.deepcopy(self._saved))
        try:
            yield self
        except BaseException:
            for variable, value in zip(variables, saved):
                variable.assign(value)
            self._scales, self._age, self._draws, self.edits[:], self._saved = python
            raise

    def scale(self, units: Iterable[int], factors: float | Sequence[float]) -> None:
        """Multiply each unit's incoming weights (all gate blocks, bias included) by its factor.

        A gated unit's weights are 0; its saved weights (that :meth:`ungate` restores) are scaled.
        """
        units = self._check(units)
        factors = np.broadcast_to(np.asarray(factors, dtype=np.float64), (len(units),))
        if not np.all(np.isfinite(factors)):
            raise ValueError(f"scale factors must be finite, got {factors.tolist()}")
        unit_factors = np.ones(self.size)
        np.multiply.at(unit_factors, units, factors)  # a unit listed twice is scaled twice
        for variable, blocks, _ in self.weights:
            array = np.asarray(keras.ops.convert_to_numpy(variable))
            variable.assign(array * np.tile(unit_factors, blocks).astype(array.dtype))
        for unit, saved in self._saved.items():
            for i in range(len(self.weights)):
                saved[i] = (saved[i] * unit_factors[unit]).astype(saved[i].dtype)
        self._scales[0] *= unit_factors
        self.edits.extend(Edit("scale", unit, float(factor)) for unit, factor in zip(units, factors))

    def scale_outgoing(self, units: Iterable[int], factors: float | Sequence[float]) -> None:
        """Multiply each unit's weights in the next layer (the rows of its input kernels that read the
        unit) by its factor: a gain on the unit's output as the next layer sees it; the layer itself,
        recurrence included, is unchanged. A gated unit's saved outgoing weights are scaled. The
        factor enters the unit's :attr:`scales` as :meth:`scale`'s do."""
        units = self._check(units)
        factors = np.broadcast_to(np.asarray(factors, dtype=np.float64), (len(units),))
        if not np.all(np.isfinite(factors)):
            raise ValueError(f"scale factors must be finite, got {factors.tolist()}")
        for position, out in self._consumer_weights("scale outgoing weights"):
            array = _numpy(out.variable)
            for unit, factor in zip(units, factors):
                if unit in self._saved:
                    self._saved[unit][position] = (self._saved[unit][position] * factor).astype(array.dtype)
                else:
                    array[out.index(unit)] *= factor
            out.variable.assign(array)
        np.multiply.at(self._scales[1], units, factors)
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
        active = self.active
        budget = int(active.sum()) - max(int(self.min_active), 0)
        chosen = []
        for unit in units:
            if active[unit] and budget > 0:
                chosen.append(unit)
                active[unit] = False
                budget -= 1
        variables, indexers = self._slices()
        true = {id(variable): _numpy(variable) for variable in variables}
        for unit, saved in self._saved.items():  # a recurrent kernel's entry can be two gated units' slices
            for variable, index, values in zip(variables, indexers, saved):
                true[id(variable)][index(unit)] = values
        for unit in chosen:
            self._saved[unit] = [true[id(v)][index(unit)].copy() for v, index in zip(variables, indexers)]
        self._gate.set_gated(np.flatnonzero(~active))
        self._write(chosen, incoming=True, outgoing=True, values=lambda unit, i: 0.0)
        self._age[chosen] = 0  # a gated unit's age counts the epochs it has been gated
        self.edits.extend(Edit("gate", unit) for unit in chosen)
        return chosen

    def ungate(self, units: Iterable[int], *, zero_outgoing: bool = False) -> list[int]:
        """Switch gated units back on with the weights they had when gated, and fresh optimizer slots.

        Where those weights are unknown (the model was loaded with the unit gated), the unit
        starts as :meth:`reinit` draws it, outgoing weights 0. Returns the units ungated.
        """
        active = self.active
        chosen = [unit for unit in self._check(units) if not active[unit]]
        fresh = [unit for unit in chosen if unit not in self._saved]
        drawn = self._draw(fresh)
        saved = {unit: self._saved.pop(unit) for unit in chosen if unit in self._saved}
        active[chosen] = True
        self._gate.set_gated(np.flatnonzero(~active))

        def values(unit: int, i: int) -> Any:
            if unit in saved:
                return 0.0 if zero_outgoing and i >= len(self.weights) else saved[unit][i]
            return drawn[i][..., self.columns(unit, self.weights[i][1])] if i < len(self.weights) else 0.0

        self._write(chosen, incoming=True, outgoing=True, values=values)
        self._write(sorted(self._saved), incoming=True, outgoing=True, values=lambda unit, i: 0.0)  # shared entries
        self._age[chosen] = 0
        self._scales[:, fresh] = 1.0
        if zero_outgoing:
            self._scales[1, chosen] = 1.0
        self.edits.extend(Edit("ungate", unit) for unit in chosen)
        if zero_outgoing and chosen:
            self.edits.extend(Edit("zero_outgoing", unit) for unit in chosen)
        return chosen

    def grow(self, units: Iterable[int], outgoing: Callable[[int, Any, Index], Any], values: Sequence[float] = ()) -> list[int]:
        """Switch gated units on as new units: incoming weights 0, outgoing slices
        ``outgoing(unit, variable, index)`` (``variable[index]`` is the unit's slice of that
        outgoing weight), fresh optimizer slots, age 0. The network's function does not change
        (the units output 0). Returns the units grown; ``values`` (one per unit) go to the edits.
        """
        active = self.active
        chosen = [unit for unit in self._check(units) if not active[unit]]
        values = list(values) or [float("nan")] * len(chosen)
        for unit in chosen:
            self._saved.pop(unit, None)
        active[chosen] = True
        self._gate.set_gated(np.flatnonzero(~active))
        count = len(self.weights)

        def value(unit: int, i: int) -> Any:
            if i < count:
                return 0.0
            out = self._outgoing[i - count]
            return outgoing(unit, out.variable, out.index(unit))

        self._write(chosen, incoming=True, outgoing=True, values=value)
        self._write(sorted(self._saved), incoming=True, outgoing=True, values=lambda unit, i: 0.0)  # shared entries
        self._age[chosen] = 0
        self._scales[:, chosen] = 1.0
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
        drawn = self._draw(units)
        gated = [unit for unit in units if unit in self._saved]
        for unit in gated:
            for i, (_, blocks, _) in enumerate(self.weights):
                self._saved[unit][i] = drawn[i][..., self.columns(unit, blocks)]
        live = [unit for unit in units if unit not in self._saved]
        self._write(
            live, incoming=True, outgoing=False, values=lambda unit, i: drawn[i][..., self.columns(unit, self.weights[i][1])]
        )
        self._scales[0, units] = 1.0
        self._age[units] = 0
        self.edits.extend(Edit("reinit", unit) for unit in units)
        if zero_outgoing:
            self.zero_outgoing(units)

    def zero_outgoing(self, units: Iterable[int]) -> None:
        """Zero the units' outgoing weights (next layer's input rows, recurrent rows) and their slots."""
        units = self._check(units)
        if not units:
            return
        if self.next_layer is None:
            raise ValueError(
                f"cannot zero outgoing weights of layer {self.layer.name!r}: no next layer is known "
                f"(pass next_layer=... to unit_view for a subclassed model)"
            )
        for unit in units:
            for i in range(len(self.weights), len(self.weights) + len(self._outgoing)):
                if unit in self._saved:
                    self._saved[unit][i] = np.zeros_like(self._saved[unit][i])
        live = [unit for unit in units if unit not in self._saved]
        self._write(live, incoming=False, outgoing=True, values=lambda unit, i: 0.0)
        self._scales[1, units] = 1.0
        self.edits.extend(Edit("zero_outgoing", unit) for unit in units)

    def get_state(self) -> dict[str, Any]:
        """Gates, scales, ages, the reinit counter and the gated units' saved weights (see :meth:`set_state`)."""
        return {
            "mask": self._gate.mask.numpy().copy(),
            "scales": self._scales.copy(),
            "age": self._age.copy(),
            "draws": self._draws,
            "saved": copy.deepcopy(self._saved),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (the weights themselves are the model's)."""
        self._gate.set_gated(np.flatnonzero(np.asarray(state["mask"]) < 0.5))
        scales = np.asarray(state["scales"], dtype=np.float64)
        self._scales = np.stack([scales, np.ones_like(scales)]) if scales.ndim == 1 else scales.copy()  # 1-D: incoming only
        self._age = np.asarray(state["age"], dtype=np.int64).copy()
        self._draws = int(state["draws"])
        self._saved = copy.deepcopy(state["saved"])

    def remove(self) -> None:
        """Ungate every unit and put back the constraints and initializers the layer had."""
        self.ungate(np.flatnonzero(~self.active))
        for owner, attribute, value in reversed(self._restore):
            object.__setattr__(owner, attribute, _base(value))  # a loaded model's stale gate goes too
        self._gate.view = None
        _instrument.invalidate_compiled(self.model)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def _optimizer(self) -> Any:
        return getattr(self.model, "optimizer", None)

    def _slices(self) -> tuple[list[Any], list[Callable[[int], Index]]]:
        """Every incoming, then every outgoing weight, each with the function selecting a unit's slice."""
        incoming = [(v, lambda unit, b=b: self._in_index(unit, b)) for v, b, _ in self.weights]
        outgoing = [(out.variable, out.index) for out in self._outgoing]
        variables, indexers = zip(*(incoming + outgoing))
        return list(variables), list(indexers)

    def _in_index(self, unit: int, blocks: int) -> Index:
        return (Ellipsis, self.columns(unit, blocks))

    def _consumer_weights(self, what: str) -> list[tuple[int, _Outgoing]]:
        """The next layer's outgoing slices (not the layer's own recurrent rows), each with its
        position in a gated unit's saved slices."""
        if self.next_layer is None:
            raise ValueError(
                f"cannot {what} of layer {self.layer.name!r}: no next layer is known "
                f"(pass next_layer=... to unit_view for a subclassed model)"
            )
        own = {id(variable) for variable, _, _ in self.weights}
        outgoing = enumerate(self._outgoing, start=len(self.weights))
        return [(position, out) for position, out in outgoing if id(out.variable) not in own]

    def _check(self, units: Iterable[int]) -> list[int]:
        given = np.asarray(units if np.isscalar(units) else list(units)).ravel()
        if given.size and (given.dtype.kind not in "iuf" or (given.dtype.kind == "f" and not np.all(given == np.round(given)))):
            raise ValueError(f"unit indices must be integers, got {given.tolist()} for layer {self.layer.name!r}")
        units = given.astype(np.int64).tolist()
        bad = [u for u in units if not 0 <= u < self.size]
        if bad:
            raise ValueError(f"unit indices {bad} out of range for layer {self.layer.name!r} with {self.size} units")
        return units

    def _check_gateable(self) -> None:
        activation = getattr(weight_owner(self.layer), "activation", None)
        if activation is not None and float(keras.ops.convert_to_numpy(activation(keras.ops.zeros((1,))))[0]) != 0.0:
            name = getattr(activation, "__name__", repr(activation))
            raise ValueError(
                f"cannot gate units of layer {self.layer.name!r}: its activation {name!r} maps 0 to a non-zero value, "
                f"so a unit with zero weights does not output 0; gating needs an activation with f(0) = 0 "
                f"(linear, relu, tanh, ...)"
            )
        optimizer = slots.inner_optimizer(self._optimizer)
        if self.next_layer is None and getattr(optimizer, "use_ema", False):
            raise ValueError(
                f"cannot gate units of layer {self.layer.name!r} under {type(optimizer).__name__}(use_ema=True) without "
                f"knowing its next layer: the weight average written back at the end of fit would revive them; "
                f"pass next_layer=... to unit_view"
            )

    def _draw(self, units: list[int]) -> list[np.ndarray]:
        """Fresh values for every incoming weight (whole arrays), one seed per call."""
        if not units:
            return []
        missing = [variable.path for variable, _, initializer in self.weights if initializer is None]
        if missing:
            raise ValueError(
                f"cannot draw fresh weights for layer {self.layer.name!r}: no initializer known for {missing}; give "
                f"its cell kernel_initializer / recurrent_initializer / bias_initializer attributes, or define "
                f"adaptgrad_unit_weights()"
            )
        seeds = np.random.SeedSequence([self.seed, self._draws]).generate_state(len(self.weights))
        self._draws += 1
        return [
            keras.ops.convert_to_numpy(_seeded(initializer, int(seed) % 2**31)(tuple(variable.shape), dtype=variable.dtype))
            for (variable, _, initializer), seed in zip(self.weights, seeds)
        ]

    def _write(self, units: list[int], *, incoming: bool, outgoing: bool, values: Callable[[int, int], Any]) -> None:
        """Set the units' incoming and/or outgoing slices to ``values(unit, i)`` (i numbers the
        incoming weights, then the outgoing ones) and give those slices fresh optimizer slots.
        Incoming slices are written last: a recurrent kernel's own columns are incoming."""
        if not units:
            return
        targets = (
            [(i, out.variable, out.index) for i, out in enumerate(self._outgoing, start=len(self.weights))] if outgoing else []
        )
        if incoming:
            targets += [(i, v, lambda unit, b=b: self._in_index(unit, b)) for i, (v, b, _) in enumerate(self.weights)]
        for i, variable, index in targets:
            array = _numpy(variable)
            for unit in units:
                array[index(unit)] = values(unit, i)
            variable.assign(array)
            slots.reset_slots(self._optimizer, variable, [index(unit) for unit in units])

    def _touchable_variables(self) -> list[Any]:
        """Every variable an edit can change: incoming and outgoing weights, the gate, their slots."""
        weights = [variable for variable, _, _ in self.weights] + [out.variable for out in self._outgoing]
        variables = [*weights, self._gate.mask]
        for variable in weights:
            variables += [slot for _, slot, _ in slots.slots_of(self._optimizer, variable)]
        return list({id(variable): variable for variable in variables}.values())

    def __repr__(self) -> str:
        return f"<UnitView layer={self.layer.name!r} size={self.size} active={int(self.active.sum())}>"


def _wrap(gate: UnitGate, inner: Any) -> UnitGate:
    """The view's gate itself where the weight had no constraint, else a gate sharing its mask around ``inner``."""
    if inner is None:
        return gate
    wrapped = copy.copy(gate)
    wrapped.inner = inner
    return wrapped


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
