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
edited as a whole. Its *outgoing* weights are row j of the next layer's input kernel (and, in a
recurrent layer, row j of its own recurrent kernel except the unit's own columns).

Gating multiplies the unit's output — and, in a recurrent cell, every per-unit state — by a 0/1
mask variable that the compiled train step reads, so a gated unit is exactly 0 at every step and
stays 0 while training goes on. Gating also zeroes the unit's optimizer slots, so that neither
momentum nor Adam moves its frozen weights; ungating and re-initialising reset them again.

A custom layer or cell becomes adaptable by defining ``adaptgrad_unit_weights(self)``, returning
``[(variable, gate_blocks, initializer), ...]`` (see :class:`adaptgrad.cells.MinimalRNNCell`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from adaptgrad import _instrument, _keras
from adaptgrad.layers import find_layer

__all__ = ["Edit", "UnitView", "unit_view"]

UnitWeight = tuple[Any, int, Callable[..., Any]]
"""``(variable, gate_blocks, initializer)``: unit j owns indices ``j + k*units`` of the last axis."""


@dataclasses.dataclass(frozen=True)
class Edit:
    """One change made to one unit: ``action`` in gate / ungate / scale / reinit / zero_outgoing."""

    action: str
    unit: int
    value: float = float("nan")


def _lstm_bias_initializer(cell: keras.layers.LSTMCell) -> Callable[..., Any]:
    if not cell.unit_forget_bias:
        return cell.bias_initializer

    def initializer(shape: tuple[int, ...], dtype: Any = None) -> Any:
        units = cell.units
        return keras.ops.concatenate(
            [
                cell.bias_initializer((units,), dtype=dtype),
                keras.ops.ones((units,), dtype=dtype),
                cell.bias_initializer((units * 2,), dtype=dtype),
            ]
        )

    return initializer


def incoming_weights(layer: keras.layers.Layer) -> list[UnitWeight]:
    """The per-unit incoming weights of a supported layer, by the protocol or built-in knowledge.

    Raises:
        TypeError: the layer type is not supported and does not implement the protocol.
    """
    owner = layer.cell if _instrument.is_recurrent(layer) else layer
    if hasattr(owner, "adaptgrad_unit_weights"):
        return list(owner.adaptgrad_unit_weights())
    blocks = {
        keras.layers.Dense: 1,
        keras.layers.SimpleRNNCell: 1,
        keras.layers.GRUCell: 3,
        keras.layers.LSTMCell: 4,
    }.get(type(owner))
    if blocks is None:
        raise TypeError(
            f"adaptgrad cannot edit units of layer {layer.name!r} ({type(owner).__name__}); "
            f"supported: Dense, SimpleRNN, GRU, LSTM, RNN over SimpleRNNCell/GRUCell/LSTMCell/"
            f"MinimalRNNCell, or any layer or cell that defines adaptgrad_unit_weights()"
        )
    weights: list[UnitWeight] = [(owner.kernel, blocks, owner.kernel_initializer)]
    if hasattr(owner, "recurrent_kernel"):
        weights.append((owner.recurrent_kernel, blocks, owner.recurrent_initializer))
    if owner.use_bias:
        bias_init = _lstm_bias_initializer(owner) if isinstance(owner, keras.layers.LSTMCell) else owner.bias_initializer
        weights.append((owner.bias, blocks, bias_init))
    return weights


def input_kernel(layer: keras.layers.Layer) -> Any:
    """The weight whose axis 0 indexes the layer's input features (Dense kernel, RNN cell kernel)."""
    owner = layer.cell if _instrument.is_recurrent(layer) else layer
    kernel = getattr(owner, "kernel", None)
    if kernel is None:
        raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) has no input kernel to zero rows of")
    return kernel


def optimizer_slots(optimizer: Any, variable: Any) -> list[Any]:
    """The optimizer's per-variable state for ``variable`` (momentum, Adam moments...), if built."""
    if optimizer is None:
        return []
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer_slots(optimizer.inner_optimizer, variable)
    tracked = _keras.optimizer_variables(optimizer)
    index = next((i for i, v in enumerate(tracked) if v is variable), None)
    if index is None:
        return []
    slots = []
    for value in vars(optimizer).values():
        if isinstance(value, list) and len(value) == len(tracked) and value is not tracked:
            slot = value[index]
            if isinstance(slot, keras.Variable) and slot is not variable and tuple(slot.shape) == tuple(variable.shape):
                slots.append(slot)
    return slots


def _seeded(initializer: Any, seed: int) -> Any:
    """A copy of a Keras initializer with a fixed seed (others, e.g. LSTM's bias, as they are)."""
    config = initializer.get_config() if hasattr(initializer, "get_config") else None
    if isinstance(config, dict) and "seed" in config:
        return type(initializer).from_config({**config, "seed": seed})
    return initializer


def _edit_columns(variable: Any, columns: np.ndarray, values: np.ndarray | float) -> None:
    array = np.array(keras.ops.convert_to_numpy(variable))
    array[..., columns] = values
    variable.assign(array)


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
        self, model: keras.Model, layer: keras.layers.Layer, next_layer: keras.layers.Layer | None, seed: int = 0
    ) -> None:
        if not layer.built:
            raise ValueError(
                f"layer {layer.name!r} is not built yet: call the model on a batch (or "
                f"model.build(input_shape)) before making a unit view"
            )
        self.model = model
        self.layer = layer
        self.next_layer = next_layer
        self.weights = incoming_weights(layer)
        first, blocks, _ = self.weights[0]
        self.size = int(first.shape[-1]) // blocks
        self.min_active = 1
        self.edits: list[Edit] = []
        self.seed = int(seed)
        self._scales = np.ones(self.size)
        self._draws = 0  # reinit calls so far: each draws with its own seed, so resumes repeat them
        hooks = _instrument.hooks_of(layer)
        if hooks.cell_mask is not None or hooks.output_mask is not None:
            raise ValueError(f"layer {layer.name!r} already has a unit view; reuse it")
        with tf.init_scope(), tf.distribute.get_strategy().scope():
            self._mask = tf.Variable(tf.ones((self.size,)), trainable=False, name=f"adaptgrad_{layer.name}_mask")
        if _instrument.is_recurrent(layer):
            hooks.cell_mask = self._mask
            if hasattr(layer, "use_cudnn"):  # the fused kernel would bypass the cell and its mask
                layer.use_cudnn = False
        else:
            hooks.output_mask = self._mask
        _instrument.invalidate_compiled(model)

    # -- reading ----------------------------------------------------------------------------------

    @property
    def active(self) -> np.ndarray:
        """Boolean array: True for units that are not gated."""
        return self._mask.numpy() > 0.5

    @property
    def scales(self) -> np.ndarray:
        """Cumulative factor applied to each unit's incoming weights by :meth:`scale`."""
        return self._scales.copy()

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

    def scale(self, units: Iterable[int], factors: float | Sequence[float]) -> None:
        """Multiply each unit's incoming weights (all gate blocks, bias included) by its factor."""
        units = self._check(units)
        factors = np.broadcast_to(np.asarray(factors, dtype=np.float64), (len(units),))
        if not np.all(np.isfinite(factors)):
            raise ValueError(f"scale factors must be finite, got {factors.tolist()}")
        unit_factors = np.ones(self.size)
        np.multiply.at(unit_factors, units, factors)  # a unit listed twice is scaled twice
        for variable, blocks, _ in self.weights:
            array = np.asarray(keras.ops.convert_to_numpy(variable))
            variable.assign(array * np.tile(unit_factors, blocks).astype(array.dtype))
        self._scales *= unit_factors
        self.edits.extend(Edit("scale", unit, float(factor)) for unit, factor in zip(units, factors))

    def gate(self, units: Iterable[int]) -> list[int]:
        """Switch units off, in the order given, never leaving fewer than ``min_active`` active.

        Returns the units actually gated (already-gated units and those over the floor are
        skipped). A gated unit outputs exactly 0 at every time step until :meth:`ungate`.
        """
        active = self.active
        budget = int(active.sum()) - max(int(self.min_active), 0)
        chosen = []
        for unit in self._check(units):
            if active[unit] and budget > 0:
                chosen.append(unit)
                active[unit] = False
                budget -= 1
        self._set_mask(chosen, 0.0)
        self._reset_slots(chosen)
        self.edits.extend(Edit("gate", unit) for unit in chosen)
        return chosen

    def ungate(self, units: Iterable[int], *, zero_outgoing: bool = False) -> list[int]:
        """Switch gated units back on with fresh optimizer slots; returns the units ungated."""
        active = self.active
        chosen = [unit for unit in self._check(units) if not active[unit]]
        self._set_mask(chosen, 1.0)
        self._reset_slots(chosen)
        self.edits.extend(Edit("ungate", unit) for unit in chosen)
        if zero_outgoing:
            self.zero_outgoing(chosen)
        return chosen

    def reinit(self, units: Iterable[int], *, zero_outgoing: bool = False) -> None:
        """Draw fresh incoming weights from the layer's initialisers; reset their optimizer slots."""
        units = self._check(units)
        if not units:
            return
        seeds = np.random.SeedSequence([self.seed, self._draws]).generate_state(len(self.weights))
        self._draws += 1
        for (variable, blocks, initializer), seed in zip(self.weights, seeds):
            draw = _seeded(initializer, int(seed) % 2**31)
            fresh = keras.ops.convert_to_numpy(draw(tuple(variable.shape), dtype=variable.dtype))
            columns = np.concatenate([self.columns(unit, blocks) for unit in units])
            array = np.array(keras.ops.convert_to_numpy(variable))
            array[..., columns] = fresh[..., columns]
            variable.assign(array)
        self._scales[units] = 1.0
        self._reset_slots(units)
        self.edits.extend(Edit("reinit", unit) for unit in units)
        if zero_outgoing:
            self.zero_outgoing(units)

    def zero_outgoing(self, units: Iterable[int]) -> None:
        """Zero the units' outgoing weights: next layer's input rows, and recurrent rows."""
        units = self._check(units)
        if not units:
            return
        targets = []
        recurrent = getattr(getattr(self.layer, "cell", None), "recurrent_kernel", None)
        targets += [(variable, blocks) for variable, blocks, _ in self.weights if variable is recurrent]
        if self.next_layer is None:
            raise ValueError(
                f"cannot zero outgoing weights of layer {self.layer.name!r}: no next layer is known "
                f"(pass next_layer=... to unit_view for a subclassed model)"
            )
        targets.append((input_kernel(self.next_layer), None))
        for variable, blocks in targets:
            array = np.array(keras.ops.convert_to_numpy(variable))
            for unit in units:
                own = self.columns(unit, blocks) if blocks else np.array([], dtype=int)
                keep = array[unit, own].copy()
                array[unit] = 0.0
                array[unit, own] = keep
            variable.assign(array)
            for slot in optimizer_slots(self._optimizer, variable):
                slot_array = np.array(keras.ops.convert_to_numpy(slot))
                slot_array[units] = 0.0
                slot.assign(slot_array)
        self.edits.extend(Edit("zero_outgoing", unit) for unit in units)

    def get_state(self) -> dict[str, Any]:
        """Gates, scales and the reinit counter, as plain values (see :meth:`set_state`)."""
        return {"mask": self._mask.numpy().copy(), "scales": self._scales.copy(), "draws": self._draws}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore gates, scales and the reinit counter saved by :meth:`get_state`."""
        self._mask.assign(np.asarray(state["mask"], dtype=np.float32))
        self._scales = np.asarray(state["scales"], dtype=np.float64).copy()
        self._draws = int(state["draws"])

    def remove(self) -> None:
        """Ungate every unit and detach the mask from the layer."""
        self._mask.assign(tf.ones_like(self._mask))
        hooks = _instrument.hooks_of(self.layer)
        hooks.cell_mask = hooks.output_mask = None
        _instrument.release(self.layer)
        _instrument.invalidate_compiled(self.model)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def _optimizer(self) -> Any:
        return getattr(self.model, "optimizer", None)

    def _check(self, units: Iterable[int]) -> list[int]:
        units = np.asarray(units if np.isscalar(units) else list(units), dtype=np.int64).ravel().tolist()
        bad = [u for u in units if not 0 <= u < self.size]
        if bad:
            raise ValueError(f"unit indices {bad} out of range for layer {self.layer.name!r} with {self.size} units")
        return units

    def _set_mask(self, units: list[int], value: float) -> None:
        if units:
            mask = self._mask.numpy()
            mask[units] = value
            self._mask.assign(mask)

    def _reset_slots(self, units: list[int]) -> None:
        if not units:
            return
        for variable, blocks, _ in self.weights:
            columns = np.concatenate([self.columns(unit, blocks) for unit in units])
            for slot in optimizer_slots(self._optimizer, variable):
                _edit_columns(slot, columns, 0.0)

    def __repr__(self) -> str:
        return f"<UnitView layer={self.layer.name!r} size={self.size} active={int(self.active.sum())}>"


def _consumer(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The first layer with weights fed by ``layer`` in a Sequential/functional graph, following a
    single chain through weightless layers (pooling over time, dropout) that keep feature j."""
    while True:
        consumers = {id(operation): operation for operation in _keras.consumers(layer)}
        layers = [c for c in consumers.values() if isinstance(c, keras.layers.Layer) and not isinstance(c, keras.Model)]
        if len(layers) != 1:
            return None
        layer = layers[0]
        if layer.weights:
            return layer


def unit_view(
    model: keras.Model,
    layer: str | keras.layers.Layer,
    *,
    next_layer: str | keras.layers.Layer | None = None,
    seed: int = 0,
) -> UnitView:
    """A :class:`UnitView` on ``layer``'s units (installs the gating mask; call before ``fit``).

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
        layer: name or object of a Dense, SimpleRNN, GRU, LSTM or ``RNN`` layer (any cell that
            implements ``adaptgrad_unit_weights``).
        next_layer: the layer that consumes ``layer``'s output, needed to zero outgoing weights.
            Found automatically in Sequential and functional models.
        seed: seeds the fresh weights that :meth:`UnitView.reinit` draws (each call its own).
    """
    target = find_layer(model, layer)
    consumer = find_layer(model, next_layer) if next_layer is not None else _consumer(target)
    return UnitView(model, target, consumer, seed)
