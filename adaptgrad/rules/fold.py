"""Where a rule's per-unit gain goes, so that the captured ``sum a*g`` is exactly its derivative.

Example:
    >>> import keras, adaptgrad
    >>> from adaptgrad.cells import MinimalRNNCell
    >>> from adaptgrad.rules.fold import gain_fold
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.RNN(MinimalRNNCell(4), name="rnn"),
    ...                           keras.layers.Dense(1)])
    >>> units = adaptgrad.unit_view(model, "rnn")
    >>> gain_fold("gain_rescale", adaptgrad.watch(model, "rnn"), units)
    'outgoing'

A gain gamma_j on unit j has ``dL/dlog gamma_j = sum a_j * g_j`` over the positions where the
gain acts. The capture mode decides those positions, hence which edit the statistic is exact for:

- **output mode** (``watch(..., through_time=False)``): ``a`` is the layer's output as the next
  layer reads it. A gain there is the same as multiplying the next layer's input-kernel rows
  that read unit j (``UnitView.scale_outgoing``) - exactly, for every layer type, since the
  consumer is linear in its input. The layer's own recurrence is not touched.
- **through time** (``through_time=True``): ``a`` is the hidden state at every step, including
  its path into the next step. A gain on the state at every step equals multiplying the unit's
  incoming weights (kernel and recurrent columns, bias; ``UnitView.scale``) only when the cell
  is positively homogeneous, ``f(gamma z) = gamma f(z)``: ``MinimalRNNCell`` and a SimpleRNN
  with ``relu`` or ``linear`` activation. For GRU, LSTM and tanh cells it is only first order
  (against a central finite difference of the edit, max error relative to the largest derivative:
  GRU 0.87, LSTM 0.29, tanh SimpleRNN 1.32; see :class:`~adaptgrad.rules.GainRescale`), so
  :func:`gain_fold` refuses them and names output mode.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

    from adaptgrad.capture import GradientWatch
    from adaptgrad.units import UnitView

HOMOGENEOUS_ACTIVATIONS = ("relu", "linear")


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What a rule needs to know of a layer to choose its capture mode, without TensorFlow.

    Example:
        >>> LayerKind(recurrent=True, homogeneous=False)
        LayerKind(recurrent=True, homogeneous=False)

    ``homogeneous``: scaling a unit's incoming weights by gamma scales its state by gamma at every
    step (:func:`positively_homogeneous`).
    """

    recurrent: bool
    homogeneous: bool

    @classmethod
    def of(cls, layer: Any) -> LayerKind:
        """The kind of a Keras layer."""
        import keras  # here: rules load without TensorFlow

        return cls(recurrent=isinstance(layer, keras.layers.RNN), homogeneous=positively_homogeneous(layer))


def positively_homogeneous(layer: keras.layers.Layer) -> bool:
    """True if scaling a unit's incoming weights by gamma scales its state by gamma at every step."""
    import keras  # here: rules load without TensorFlow (the app checks every sweep point without it)

    from adaptgrad.cells import MinimalRNNCell

    cell = getattr(layer, "cell", None)
    if isinstance(cell, MinimalRNNCell):
        return True
    if isinstance(cell, keras.layers.SimpleRNNCell):
        return getattr(cell.activation, "__name__", "") in HOMOGENEOUS_ACTIVATIONS
    return False


def gain_fold(rule: str, watch: GradientWatch, units: UnitView) -> str:
    """``"outgoing"`` (output mode) or ``"incoming"`` (through time, homogeneous cell): the edit
    whose ``dL/dlog gamma`` the watch's ``act_grad_sum`` is. Raises ValueError, naming the mode to
    use, where no edit matches the statistic, or where the next layer is needed but unknown."""
    layer = units.layer
    if not watch.through_time:
        if units.next_layer is None:
            raise ValueError(
                f"{rule} with output-mode capture folds each unit's gain into the next layer's input rows, "
                f"but the layer that consumes {layer.name!r} is unknown; pass next_layer=<its name> to adaptgrad.Adapt"
            )
        return "outgoing"
    if positively_homogeneous(layer):
        return "incoming"
    cell = type(getattr(layer, "cell", layer)).__name__
    raise ValueError(
        f"{rule} cannot use through-time capture on layer {layer.name!r} ({cell}): sum h*g over every step is the "
        f"derivative of a gain folded into the incoming weights only for positively homogeneous cells "
        f"(MinimalRNNCell, SimpleRNN with relu/linear activation). Use output mode: "
        f"adaptgrad.watch(model, {layer.name!r}, through_time=False) (runner: through_time=false), where the gain "
        f"is folded exactly into the next layer's input rows."
    )


def checked_fold(rule: Any) -> str:
    """The fold :meth:`check` chose, or a RuntimeError saying to call it (Adapt does)."""
    fold = getattr(rule, "fold", None)
    if fold is None:
        raise RuntimeError(
            f"{rule.label}: call rule.check(watch, units) before apply (adaptgrad.Adapt does): where the gain "
            f"goes depends on the capture mode"
        )
    return fold


def exact_mode(layer: LayerKind) -> bool | None:
    """The capture mode in which ``sum a*g`` is exactly a folded gain's derivative on a layer of
    this kind: None (either) for a positively homogeneous cell or a layer without recurrence,
    False (output mode) for any other recurrent cell (:meth:`~adaptgrad.AdaptationRule.through_time`)."""
    return False if layer.recurrent and not layer.homogeneous else None
