"""Tests of adaptgrad.data: shapes, determinism, task semantics, validation and Hydra configs."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from statsmodels.datasets import sunspots as sunspot_data

from adaptgrad import data
from adaptgrad.config import load_data

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "data"

# Small sizes keep the synthetic tasks fast; the real datasets take their defaults.
SMALL = {
    "toy": {},
    "adding": {"length": 12, "samples": 200},
    "copy_memory": {"length": 10, "symbols": 4, "copy": 3, "samples": 200},
    "sunspots": {},
    "digits": {},
}
EXPECTED = {  # name: (input_shape, task, outputs)
    "toy": ((5, 1), "regression", 4),
    "adding": ((12, 2), "regression", 1),
    "copy_memory": ((10, 6), "classification", 4),
    "sunspots": ((20, 1), "regression", 1),
    "digits": ((8, 8), "classification", 10),
}
SYNTHETIC = ("adding", "copy_memory")


@pytest.fixture(autouse=True)
def _fresh_keras_session() -> None:
    """Override conftest's per-test Keras reset (~0.25 s each): these tests build no model."""


def all_x(ds: data.Dataset) -> np.ndarray:
    return np.concatenate([ds.x_train, ds.x_val])


def all_y(ds: data.Dataset) -> np.ndarray:
    return np.concatenate([ds.y_train, ds.y_val])


def test_registry_names() -> None:
    assert sorted(data.DATASETS) == ["adding", "copy_memory", "digits", "sunspots", "toy"]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_dtypes_and_task(name: str) -> None:
    ds = data.load(name, **SMALL[name])
    input_shape, task, outputs = EXPECTED[name]
    assert ds.name == name
    assert (ds.input_shape, ds.task, ds.outputs) == (input_shape, task, outputs)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):
        assert x.dtype == np.float32 and x.ndim == 3 and x.shape[1:] == input_shape
        assert len(x) == len(y) > 0
        if task == "regression":
            assert y.dtype == np.float32 and y.shape[1:] == (outputs,)
        else:
            assert y.dtype == np.int32 and y.ndim == 1
            assert 0 <= y.min() and y.max() < outputs


@pytest.mark.parametrize("name", ["adding", "copy_memory", "digits"])
def test_shuffled_split_sizes(name: str) -> None:
    ds = data.load(name, **SMALL[name], val_fraction=0.25)
    n = len(ds.x_train) + len(ds.x_val)
    assert len(ds.x_val) == round(0.25 * n)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_arrays(name: str) -> None:
    a = data.load(name, **SMALL[name], seed=7)
    b = data.load(name, **SMALL[name], seed=7)
    for field in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize("name", [*SYNTHETIC, "digits"])
def test_different_seed_different_arrays(name: str) -> None:
    a = data.load(name, **SMALL[name], seed=0)
    b = data.load(name, **SMALL[name], seed=1)
    assert not np.array_equal(a.x_train, b.x_train)


def test_dataset_is_immutable() -> None:
    ds = data.toy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0] = 1.0


def test_toy_is_the_question_data() -> None:
    ds = data.toy()
    x = np.array([[[3], [0], [1], [2], [3]]] * 2, np.float32)
    y = np.array([[0, 1, 2, 3]] * 2, np.float32)
    for got_x, got_y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)


def test_toy_ignores_split_arguments() -> None:
    a, b = data.toy(), data.load("toy", val_fraction=0.5, seed=3)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_adding_markers_and_targets() -> None:
    length = 12
    ds = data.adding(length=length, samples=300, seed=2)
    x, y = all_x(ds), all_y(ds)
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= 0 and values.max() < 1
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers.sum(axis=1) == 2).all()
    assert (markers[:, : length // 2].sum(axis=1) == 1).all()
    assert (markers[:, length // 2 :].sum(axis=1) == 1).all()
    expected = np.array([v[m == 1].sum() for v, m in zip(values, markers)])
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-6)


def test_adding_shortest_sequences() -> None:
    x = all_x(data.adding(length=2, samples=10))
    np.testing.assert_array_equal(x[..., 1], np.ones((10, 2)))


def test_copy_memory_layout_and_target() -> None:
    length, symbols, copy = 10, 4, 3
    ds = data.copy_memory(length=length, symbols=symbols, copy=copy, samples=300, seed=4)
    x, y = all_x(ds), all_y(ds)
    assert (x.sum(axis=-1) == 1).all()  # exactly one channel on per step
    assert (x[:, :copy, :symbols].sum(axis=-1) == 1).all()  # leading random symbols
    assert (x[:, copy:-1, symbols] == 1).all()  # blanks
    assert (x[:, -1, symbols + 1] == 1).all()  # delimiter
    np.testing.assert_array_equal(y, np.argmax(x[:, 0, :symbols], axis=-1))
    assert len(np.unique(y)) == symbols


@pytest.mark.parametrize(("window", "horizon", "val_fraction"), [(20, 1, 0.2), (5, 3, 0.3)])
def test_sunspots_windows_match_raw_series(window: int, horizon: int, val_fraction: float) -> None:
    raw = sunspot_data.load_pandas().data["SUNACTIVITY"].to_numpy()
    ds = data.sunspots(window=window, horizon=horizon, val_fraction=val_fraction)
    n = len(raw) - window - horizon + 1
    n_val = round(val_fraction * n)
    assert (len(ds.x_train), len(ds.x_val)) == (n - n_val, n_val)
    seen = raw[: n - n_val + window + horizon - 1]  # values touched by training windows
    mean, std = seen.mean(), seen.std()
    x, y = all_x(ds)[..., 0] * std + mean, all_y(ds)[:, 0] * std + mean
    for i in (0, 1, n - n_val - 1, n - n_val, n - 1):  # chronological: val continues train
        np.testing.assert_allclose(x[i], raw[i : i + window], atol=1e-3)
        np.testing.assert_allclose(y[i], raw[i + window + horizon - 1], atol=1e-3)


def test_sunspots_ignores_seed() -> None:
    np.testing.assert_array_equal(data.sunspots(seed=0).x_val, data.sunspots(seed=9).x_val)


def test_digits_match_sklearn() -> None:
    ds = data.digits(seed=3)
    bunch = load_digits()
    assert len(ds.x_train) + len(ds.x_val) == len(bunch.images) == 1797
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1

    def rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        table = np.column_stack([images.reshape(len(images), -1), labels])
        return table[np.lexsort(table.T[::-1])]

    np.testing.assert_allclose(rows(all_x(ds), all_y(ds)), rows(bunch.images / 16.0, bunch.target), atol=1e-7)


def test_unknown_name_lists_valid_names() -> None:
    valid = "valid: adding, copy_memory, digits, sunspots, toy"
    with pytest.raises(ValueError, match=f"unknown dataset 'foo'; {valid}"):
        data.load("foo")


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("adding", {"length": 1}, "length=1"),
        ("adding", {"samples": 0}, "samples=0"),
        ("adding", {"length": 2.5}, "length=2.5"),
        ("adding", {"val_fraction": 0.0}, "val_fraction=0.0"),
        ("adding", {"val_fraction": 1.0}, "val_fraction=1.0"),
        ("adding", {"val_fraction": 1.5}, "val_fraction=1.5"),
        ("adding", {"samples": 10, "val_fraction": 0.01}, "val_fraction=0.01"),
        ("copy_memory", {"length": 6, "copy": 5}, "length=6"),
        ("copy_memory", {"length": 6, "copy": 5}, "copy=5"),
        ("copy_memory", {"symbols": 1}, "symbols=1"),
        ("copy_memory", {"copy": 0}, "copy=0"),
        ("copy_memory", {"samples": -3}, "samples=-3"),
        ("sunspots", {"window": 0}, "window=0"),
        ("sunspots", {"horizon": 0}, "horizon=0"),
        ("sunspots", {"window": 300, "horizon": 10}, "window=300"),
        ("sunspots", {"val_fraction": -0.1}, "val_fraction=-0.1"),
        ("digits", {"val_fraction": 2}, "val_fraction=2"),
    ],
)
def test_bad_arguments_name_the_value(name: str, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        data.load(name, **kwargs)


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(TypeError):
        data.load("adding", lenght=10)


def _arrays(n: int = 4, t: int = 3, f: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, t, f), np.float32), np.zeros((n, 1), np.float32)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"y_train": np.zeros((3, 1))}, "x_train has 4 examples but y_train has 3"),
        ({"x_val": np.full((4, 3, 2), np.nan)}, "x_val contains NaN"),
        ({"y_val": np.full((4, 1), np.nan)}, "y_val contains NaN"),
        ({"x_train": np.zeros((4, 3))}, "expected 3 dimensions"),
        ({"y_train": np.zeros((4, 2))}, r"expects \(N, 1\)"),
        ({"x_val": np.zeros((4, 5, 2))}, "differ"),
        ({"task": "ranking"}, "task='ranking'"),
        ({"outputs": 0}, "outputs=0"),
    ],
)
def test_dataset_validation(change: dict[str, object], fragment: str) -> None:
    x, y = _arrays()
    fields = dict(name="t", x_train=x, y_train=y, x_val=x, y_val=y, task="regression", outputs=1)
    with pytest.raises(ValueError, match=fragment):
        data.Dataset(**{**fields, **change})


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (np.array([0, 1, 2, 3]), r"must lie in \[0, 2\]"),
        (np.zeros(4), "must be integers"),
        (np.zeros((4, 1), int), r"\(N,\)"),
    ],
)
def test_dataset_validates_labels(labels: np.ndarray, fragment: str) -> None:
    x, _ = _arrays()
    with pytest.raises(ValueError, match=fragment):
        data.Dataset("t", x, labels, x, np.zeros(4, np.int32), task="classification", outputs=3)


def test_config_files_cover_registry() -> None:
    assert sorted(p.stem for p in CONF_DIR.glob("*.yaml")) == sorted(data.DATASETS)


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_instantiates(path: Path) -> None:
    cfg = OmegaConf.create({"seed": 0, "data": OmegaConf.load(path)})
    ds = load_data(cfg.data)
    assert isinstance(ds, data.Dataset) and ds.name == path.stem
    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    assert kwargs.pop("_target_") == f"adaptgrad.data.{path.stem}"
    np.testing.assert_array_equal(ds.x_val, data.load(path.stem, **kwargs).x_val)


def test_config_defaults_match_functions() -> None:
    for name, loader in data.DATASETS.items():
        cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{name}.yaml"))
        defaults = {k: p.default for k, p in inspect.signature(loader).parameters.items()}
        for key, value in cfg.items():
            if key == "_target_":
                continue
            assert key in defaults, (name, key)
            if key != "seed":
                assert value == defaults[key], (name, key)


def test_config_seed_reaches_loader() -> None:
    cfg = OmegaConf.create({"seed": 5, "data": OmegaConf.load(CONF_DIR / "adding.yaml")})
    ds = load_data(cfg.data)
    np.testing.assert_array_equal(ds.x_train, data.adding(seed=5).x_train)


def test_toy_copies_hold_out_validation_examples_the_model_never_trains_on():
    toy = data.load("toy", samples=50, noise=0.2, seed=3)
    assert toy.x_train.shape == (40, 5, 1) and toy.x_val.shape == (10, 5, 1)
    train = {row.tobytes() for row in toy.x_train}
    assert not any(row.tobytes() in train for row in toy.x_val)  # held out, not the training set again
    np.testing.assert_allclose(toy.x_train.mean(axis=0).ravel(), [3, 0, 1, 2, 3], atol=0.15)
    assert (toy.y_val == [0, 1, 2, 3]).all()
    np.testing.assert_array_equal(data.load("toy", samples=50, noise=0.2, seed=3).x_val, toy.x_val)
    with pytest.raises(ValueError, match=r"noise=-1 is out of range"):
        data.load("toy", samples=10, noise=-1)
