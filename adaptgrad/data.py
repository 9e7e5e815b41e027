"""Small sequence datasets for many-to-one recurrent models, generated or loaded offline.

Example:
    >>> from adaptgrad import data
    >>> ds = data.load("adding", length=10, samples=100, seed=1)
    >>> ds.name, ds.task, ds.outputs, ds.input_shape
    ('adding', 'regression', 1, (10, 2))
    >>> ds.x_train.shape, ds.y_train.shape, ds.x_val.shape, ds.y_val.dtype
    ((80, 10, 2), (80, 1), (20, 10, 2), dtype('float32'))
    >>> sorted(data.DATASETS)
    ['adding', 'copy_memory', 'digits', 'sunspots', 'toy']

Every dataset is a :class:`Dataset` of float32 inputs of shape ``(N, T, F)`` (N sequences
of T steps of F features) and one target per sequence: float32 ``(N, outputs)`` for
regression, int32 class indices ``(N,)`` for classification. Nothing is downloaded: the
synthetic tasks are generated with ``numpy.random.default_rng(seed)``, the real ones
come with statsmodels and scikit-learn. Loaders take keyword arguments only, validate
them (raising :class:`ValueError` naming the bad value) and are deterministic for a
given ``seed``. Unless a loader says otherwise, the validation set is the last
``round(val_fraction * N)`` examples after a seeded shuffle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from adaptgrad.checks import integer, number_in

TASKS: tuple[str, ...] = ("regression", "classification")
"""Values :attr:`Dataset.task` may take."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Training and validation arrays of one sequence task, ready for ``model.fit``.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((3, 4, 2), np.float32)
        >>> ds = Dataset("zeros", x, np.zeros(3, np.int32), x, np.ones(3, np.int32),
        ...              task="classification", outputs=2)
        >>> ds.input_shape
        (4, 2)

    The arrays are stored as read-only copies with the canonical dtypes (float32 inputs;
    float32 regression targets, int32 class labels), so a dataset never changes after
    it is made.

    Attributes:
        name: Short name of the task, e.g. ``"adding"``.
        x_train: Training inputs, float32 of shape ``(N_train, T, F)``.
        y_train: Training targets: float32 ``(N_train, outputs)`` or int32 ``(N_train,)``.
        x_val: Validation inputs, float32 of shape ``(N_val, T, F)``.
        y_val: Validation targets, shaped like ``y_train``.
        task: ``"regression"`` or ``"classification"``.
        outputs: Regression output dimension, or number of classes.

    Raises:
        ValueError: If ``task`` or ``outputs`` is invalid, an array has the wrong shape,
            inputs and targets differ in number of examples, train and validation inputs
            differ in ``(T, F)``, a value is NaN or infinite, or a class label lies
            outside ``[0, outputs)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: str
    outputs: int

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is invalid; valid: {', '.join(TASKS)}")
        integer("outputs", self.outputs, 1)
        object.__setattr__(self, "outputs", int(self.outputs))
        for split in ("train", "val"):
            x = self._frozen(f"x_{split}", np.float32)
            y = self._frozen(f"y_{split}", np.float32 if self.task == "regression" else np.int32)
            if x.ndim != 3:
                raise ValueError(f"x_{split} has shape {x.shape}; expected 3 dimensions (N, T, F)")
            if self.task == "regression" and (y.ndim != 2 or y.shape[1] != self.outputs):
                raise ValueError(
                    f"y_{split} has shape {y.shape}; regression with outputs={self.outputs} expects (N, {self.outputs})"
                )
            if self.task == "classification" and y.ndim != 1:
                raise ValueError(f"y_{split} has shape {y.shape}; classification expects (N,) labels")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{split} has {x.shape[0]} examples but y_{split} has {y.shape[0]}; they must match")
            for array, field in ((x, f"x_{split}"), (y, f"y_{split}")):
                if not np.isfinite(array).all():
                    raise ValueError(f"{field} contains NaN or infinite values")
            if self.task == "classification" and y.size:
                low, high = int(y.min()), int(y.max())
                if low < 0 or high >= self.outputs:
                    raise ValueError(
                        f"y_{split} has labels in [{low}, {high}]; "
                        f"with outputs={self.outputs} they must lie in [0, {self.outputs - 1}]"
                    )
        if self.x_train.shape[1:] != self.x_val.shape[1:]:
            raise ValueError(f"x_train steps/features {self.x_train.shape[1:]} differ from x_val's {self.x_val.shape[1:]}")

    def _frozen(self, field: str, dtype: type[np.generic]) -> np.ndarray:
        """Replace array ``field`` by a read-only copy of dtype ``dtype`` and return it."""
        value = np.asarray(getattr(self, field))
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"{field} has dtype {value.dtype}; classification labels must be integers")
        array = np.array(value, dtype=dtype, copy=True)
        array.setflags(write=False)
        object.__setattr__(self, field, array)
        return array

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(T, F)``: steps per sequence and features per step, as Keras' ``Input`` wants."""
        return int(self.x_train.shape[1]), int(self.x_train.shape[2])


def _validation_size(n: int, val_fraction: float) -> int:
    """``round(val_fraction * n)``, the validation size; raise ValueError if a part is empty."""
    is_number = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
    if not is_number or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} is invalid; it must be a number in (0, 1)")
    n_val = round(val_fraction * n)
    if not 0 < n_val < n:
        raise ValueError(
            f"val_fraction={val_fraction!r} of {n} examples gives {n_val} for validation; "
            f"choose it so that between 1 and {n - 1} examples go to validation"
        )
    return n_val


def _shuffle_split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    task: str,
    outputs: int,
    val_fraction: float,
    rng: np.random.Generator,
) -> Dataset:
    """Shuffle examples with ``rng`` and hold out the last ``round(val_fraction * N)``."""
    n_val = _validation_size(len(x), val_fraction)
    order = rng.permutation(len(x))
    train, val = order[:-n_val], order[-n_val:]
    return Dataset(name, x[train], y[train], x[val], y[val], task=task, outputs=outputs)


def toy(*, samples: int | None = None, noise: float = 0.1, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The two sequences of the StackOverflow question this project started from.

    Example:
        >>> from adaptgrad.data import toy
        >>> toy().x_train.shape, toy(samples=40).x_train.shape, toy(samples=40).x_val.shape
        ((2, 5, 1), (32, 5, 1), (8, 5, 1))

    Inputs have shape ``(2, 5, 1)``, both sequences ``[3, 0, 1, 2, 3]``; targets have
    shape ``(2, 4)``, both rows ``[0, 1, 2, 3]``: a regression with ``outputs=4``.

    The question trained with ``validation_split=0.2`` on these 2 examples, which Keras
    rounds to an empty or single-example split. To keep validation metrics defined, both
    examples are used for training *and* for validation: its validation loss is a training loss.
    With ``samples=N`` the task has held-out validation data instead: N copies of the question's
    sequence with Gaussian noise of standard deviation ``noise`` added to every input (drawn with
    ``seed``), the same targets, ``round(val_fraction * N)`` of them held out.

    Args:
        samples: None (the question's 2 examples, validated on themselves) or the number of noisy copies, >= 2.
        noise: standard deviation of the input noise of the copies, >= 0.
        val_fraction: share of the copies held out for validation (with ``samples``).
        seed: draws the noise and the split (with ``samples``).

    Returns:
        The toy :class:`Dataset`.
    """
    base = np.array([3, 0, 1, 2, 3], np.float32).reshape(1, 5, 1)
    target = np.array([0, 1, 2, 3], np.float32)
    if samples is None:
        x, y = np.tile(base, (2, 1, 1)), np.tile(target, (2, 1))
        return Dataset("toy", x, y, x, y, task="regression", outputs=4)
    integer("samples", samples, 2)
    noise = number_in("noise", noise, 0.0, math.inf, closed="left")
    rng = np.random.default_rng(seed)
    x = (base + rng.normal(0.0, noise, size=(samples, 5, 1))).astype(np.float32)
    return _shuffle_split("toy", x, np.tile(target, (samples, 1)), "regression", 4, val_fraction, rng)


def adding(*, length: int = 50, samples: int = 2000, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    Each step has 2 features: a value drawn uniformly from ``[0, 1)`` and a marker that
    is 1 at exactly two steps, one in the first half (``t < length // 2``) and one in
    the second half, and 0 elsewhere. The target is the sum of the two marked values
    (regression, ``outputs=1``).

    Args:
        length: Steps per sequence, >= 2.
        samples: Number of sequences, split into training and validation.
        val_fraction: Fraction of sequences held out for validation, in (0, 1).
        seed: Seed of the generator and of the split.

    Returns:
        A :class:`Dataset` with inputs ``(N, length, 2)`` and targets ``(N, 1)``.

    Raises:
        ValueError: If an argument is out of range.
    """
    integer("length", length, 2)
    integer("samples", samples, 2)
    _validation_size(samples, val_fraction)
    rng = np.random.default_rng(seed)
    values = rng.random((samples, length), dtype=np.float32)
    half = length // 2
    first = rng.integers(0, half, samples)
    second = rng.integers(half, length, samples)
    markers = np.zeros((samples, length), np.float32)
    rows = np.arange(samples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values[rows, first] + values[rows, second])[:, None]
    return _shuffle_split("adding", x, y, "regression", 1, val_fraction, rng)


def copy_memory(
    *,
    length: int = 20,
    symbols: int = 8,
    copy: int = 5,
    samples: int = 2000,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """The copy-memory task, cut down to a many-to-one classification.

    Each sequence has ``symbols + 2`` features per step: one-hot channels for the
    ``symbols`` symbols, then a blank channel and a delimiter channel. The first ``copy``
    steps hold random symbols, the following steps are blanks and the last step is the
    delimiter. The original task asks for all ``copy`` symbols back after the delimiter,
    which needs a sequence output; a model that reads only the last RNN state through a
    Dense head instead has to classify the *first* symbol (``outputs=symbols``), kept
    across ``length - 1`` steps while the other ``copy - 1`` symbols act as distractors.

    Args:
        length: Steps per sequence; must exceed ``copy + 1`` so at least one blank remains.
        symbols: Size of the symbol alphabet (number of classes), >= 2.
        copy: Number of leading random symbols, >= 1.
        samples: Number of sequences, split into training and validation.
        val_fraction: Fraction of sequences held out for validation, in (0, 1).
        seed: Seed of the generator and of the split.

    Returns:
        A :class:`Dataset` with inputs ``(N, length, symbols + 2)`` and int32 labels ``(N,)``.

    Raises:
        ValueError: If an argument is out of range.
    """
    integer("symbols", symbols, 2)
    integer("copy", copy, 1)
    integer("length", length, 1)
    if length <= copy + 1:
        raise ValueError(
            f"length={length} is invalid with copy={copy}; length must be > copy + 1 = {copy + 1} "
            "to leave room for a blank and the delimiter"
        )
    integer("samples", samples, 2)
    _validation_size(samples, val_fraction)
    rng = np.random.default_rng(seed)
    tokens = np.full((samples, length), symbols, np.int64)  # blank
    tokens[:, :copy] = rng.integers(0, symbols, (samples, copy))
    tokens[:, -1] = symbols + 1  # delimiter
    x = np.eye(symbols + 2, dtype=np.float32)[tokens]
    y = tokens[:, 0].astype(np.int32)
    return _shuffle_split("copy_memory", x, y, "classification", symbols, val_fraction, rng)


def sunspots(*, window: int = 20, horizon: int = 1, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """One-step (or ``horizon``-step) forecasting of yearly sunspot activity, 1700-2008.

    The 309 yearly values of ``statsmodels.api.datasets.sunspots`` are cut into windows:
    ``x`` holds ``window`` consecutive values (one feature per step) and ``y`` the value
    ``horizon`` steps after the window's last one (regression, ``outputs=1``).

    The split is chronological, with no shuffle, so that validation lies in the future
    of training: the last ``round(val_fraction * N)`` windows are validation. Values are
    standardised with the mean and (population) standard deviation of the training
    portion of the series, i.e. the first ``N_train + window + horizon - 1`` values, which
    are all the values any training window or target touches.

    Args:
        window: Steps per input sequence, >= 1.
        horizon: How many steps after the window the target lies, >= 1.
        val_fraction: Fraction of windows held out for validation, in (0, 1).
        seed: Accepted so that every loader can be called alike; unused (nothing is random).

    Returns:
        A :class:`Dataset` with inputs ``(N, window, 1)`` and targets ``(N, 1)``,
        ``N = 310 - window - horizon``.

    Raises:
        ValueError: If an argument is out of range or leaves fewer than 2 windows.
    """
    del seed  # Chronological split; see the docstring.
    integer("window", window, 1)
    integer("horizon", horizon, 1)
    from statsmodels.datasets import sunspots as sunspot_data  # = statsmodels.api.datasets.sunspots

    series = sunspot_data.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)
    n = len(series) - window - horizon + 1
    if n < 2:
        raise ValueError(
            f"window={window} and horizon={horizon} leave {max(n, 0)} windows "
            f"of {len(series)} values; "
            f"window + horizon must be <= {len(series) - 1}"
        )
    n_train = n - _validation_size(n, val_fraction)
    seen = series[: n_train + window + horizon - 1]
    scaled = ((series - seen.mean()) / seen.std()).astype(np.float32)
    starts = np.arange(n)
    x = scaled[starts[:, None] + np.arange(window)][..., None]
    y = scaled[starts + window + horizon - 1][:, None]
    return Dataset("sunspots", x[:n_train], y[:n_train], x[n_train:], y[n_train:], task="regression", outputs=1)


def digits(*, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1797 images of 8x8 pixels), read row by row.

    Each image is a sequence of 8 steps (its rows) of 8 features (the pixels of a row),
    scaled from ``0..16`` to ``[0, 1]``. The label is the digit (classification,
    ``outputs=10``).

    Args:
        val_fraction: Fraction of images held out for validation, in (0, 1).
        seed: Seed of the shuffle before the split.

    Returns:
        A :class:`Dataset` with inputs ``(N, 8, 8)`` and int32 labels ``(N,)``.

    Raises:
        ValueError: If ``val_fraction`` is out of range.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    return _shuffle_split("digits", x, y, "classification", 10, val_fraction, rng)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "toy": toy,
    "adding": adding,
    "copy_memory": copy_memory,
    "sunspots": sunspots,
    "digits": digits,
}
"""Loaders by name; :func:`load` looks names up here."""


def load(name: str, **kwargs: object) -> Dataset:
    """Load the dataset registered as ``name`` in :data:`DATASETS` with the loader's ``kwargs``.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names) or an
            argument is out of range.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kwargs)
