"""From a composed config to plain objects: everything a job needs, validated before training.

Example:
    >>> from adaptgrad.composition import compose
    >>> from adaptgrad.config import check
    >>> spec = check(compose(["data=toy", "rule=taylor_prune", "rule.fraction=0.5"]), "taylor_prune")
    >>> spec.rule, spec.trainer.epochs, spec.layers
    (TaylorPrune(start_epoch=0, every=1, stop_epoch=None, every_steps=None, start_step=0, stop_step=None, min_active=1, \
fraction=0.5, max_sparsity=0.5, criterion='taylor_example_abs'), 20, ())

:func:`check` needs neither TensorFlow nor Hydra (the app runs it on every sweep point before any
job starts); :func:`prepare` adds what needs TensorFlow (the data, the optimizer, the seeded
runtime). Composing the config is :mod:`adaptgrad.composition`'s job; every ``_target_`` is
called through :func:`adaptgrad.targets.bind`. The config folder
``conf/`` and the ``experiments/`` presets ship inside the package (``adaptgrad/conf``,
``adaptgrad/experiments``) and are read from the checkout when it is one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import math
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from adaptgrad.checkpoint import config_digest
from adaptgrad.checks import boolean, did_you_mean, integer
from adaptgrad.data import Dataset
from adaptgrad.models import CELLS, MODEL_KEYS
from adaptgrad.rules.base import REGISTRY, AdaptationRule
from adaptgrad.rules.fold import LayerKind
from adaptgrad.stats import requested_fields
from adaptgrad.targets import bind, findable, keywords, resolve

if TYPE_CHECKING:
    import keras

log = logging.getLogger("adaptgrad")

TOP_KEYS = (
    "model",
    "data",
    "rule",
    "optimizer",
    "trainer",
    "seed",
    "layer",
    "through_time",
    "stats",
    "oracle",
    "rules_module",
    "rule_settings",
)
"""The keys of a job's config."""


def _shipped(name: str) -> Path:
    """``adaptgrad/NAME`` in an installed package, ``NAME/`` beside the package in a checkout."""
    here = Path(__file__).parent
    return next((p for p in (here / name, here.parent / name) if p.is_dir()), here / name)


CONF_DIR = _shipped("conf")
"""The config folder: ``config.yaml`` and one folder per config group."""
EXPERIMENTS_DIR = _shipped("experiments")
"""The ``experiment=NAME`` presets."""


def _unknown_keys(where: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise a ValueError naming the first key of ``given`` not in ``valid``, with the valid ones."""
    valid = list(valid)
    for key in given:
        if key not in valid:
            raise ValueError(
                f"{where}{key} is not a key of {where.rstrip('.') or 'the config'}; valid: {', '.join(valid)}{did_you_mean(key, valid)}"
            )


@dataclasses.dataclass(frozen=True)
class Trainer:
    """How ``model.fit`` runs; validated on construction."""

    epochs: int = 20
    batch_size: int = 32
    steps_per_execution: int = 1
    jit_compile: bool = False
    deterministic: bool = True
    shuffle: bool = True
    distribution: str = "none"
    cpu_devices: int | None = None
    mixed_precision: bool = False
    checkpoint: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "steps_per_execution"):
            integer(f"trainer.{name}", getattr(self, name))
        for name in ("jit_compile", "deterministic", "shuffle", "mixed_precision", "checkpoint"):
            boolean(f"trainer.{name}", getattr(self, name))
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"trainer.distribution={self.distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
        for name in ("cpu_devices", "threads"):
            integer(f"trainer.{name}", getattr(self, name), optional=True)
        if self.distribution == "mirrored" and self.cpu_devices and self.batch_size % self.cpu_devices:
            raise ValueError(
                f"trainer.batch_size={self.batch_size} does not split evenly over trainer.cpu_devices={self.cpu_devices} "
                f"replicas; use a multiple of {self.cpu_devices}"
            )


DISTRIBUTIONS = ("none", "mirrored")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A job's config as plain, validated objects that need no TensorFlow.

    ``layers`` empty means every recurrent layer of the model; ``model`` is the model config
    (a built-in ``cell`` or a ``_target_`` function and its keywords); ``digest`` identifies the
    resolved config (checkpoints record it)."""

    seed: int
    layers: tuple[str, ...]
    through_time: bool | None
    """None: ``auto``, the mode whose statistics describe the rule's edit (see :func:`capture_mode`)."""
    stats: frozenset[str] | None
    """The sums every watch captures besides what the rule reads; None: all of them."""
    oracle: int
    """Record the oracle every this many epochs (0: never)."""
    model: dict[str, Any]
    rule: AdaptationRule
    optimizer: dict[str, Any]
    trainer: Trainer
    digest: str


@dataclasses.dataclass(frozen=True)
class Job(Spec):
    """Everything one run needs, as plain objects (no Hydra config below this point)."""

    dataset: Dataset
    make_optimizer: Callable[[], keras.optimizers.Optimizer]


def rule_name(rule_cfg: DictConfig, preset: str | None, given: Collection[str] = ()) -> str:
    """The rule's one name, recorded in ``result.json``: the config choice ``preset``
    (``rule=NAME``), unless ``rule._target_`` names another class (among the keys the command line
    sets, ``given``: :func:`adaptgrad.composition.given_keys`, or not the class registered as
    ``preset``); then that class's registered name, else its name."""
    target = str(rule_cfg.get("_target_", ""))
    try:
        cls = resolve("rule", target)
    except ValueError:  # not importable: the job fails in prepare, with the reason
        cls = None
    if preset and "rule._target_" not in given and REGISTRY.get(preset) in (None, cls):
        return preset
    if isinstance(cls, type) and issubclass(cls, AdaptationRule):
        return cls.name or cls.__name__
    return target.rsplit(".", 1)[-1]  # not a rule: the job fails in prepare, with the reason


def rule_settings(value: Any) -> dict[str, dict[str, Any]]:
    """``rule_settings`` checked: ``{rule name: {key: value}}``, each name a rule (registered, or a
    ``conf/rule`` preset) and each key one its class takes. ``rule_settings.NAME.KEY=VALUE`` sets
    ``KEY`` for the jobs whose rule is ``NAME`` only, so a sweep over rules can vary one rule's
    parameter (``-m rule=none,taylor_prune rule_settings.taylor_prune.fraction=0.1,0.2``).

    Example:
        >>> rule_settings({"taylor_prune": {"fraction": 0.2}})
        {'taylor_prune': {'fraction': 0.2}}
        >>> rule_settings({"taylor_prune": {"fractoin": 0.2}})
        Traceback (most recent call last):
        ...
        ValueError: rule_settings.taylor_prune.fractoin: fractoin is not a parameter of rule taylor_prune; valid: ...; did you mean 'fraction'?
    """
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"rule_settings={value!r} must be a mapping rule name -> {{key: value}}")
    names = sorted({*REGISTRY, *(p.stem for p in (CONF_DIR / "rule").glob("*.yaml"))})
    for name, keys in value.items():
        if name not in names:
            raise ValueError(f"rule_settings.{name} names no rule; valid: {', '.join(names)}{did_you_mean(str(name), names)}")
        if not isinstance(keys, dict):
            raise ValueError(f"rule_settings.{name}={keys!r} must be a mapping key -> value (rule_settings.{name}.KEY=VALUE)")
        accepted = keywords(REGISTRY[name]) if name in REGISTRY else None
        for key in keys:
            if accepted is not None and key not in accepted:
                valid = sorted(accepted)
                raise ValueError(
                    f"rule_settings.{name}.{key}: {key} is not a parameter of rule {name}; valid: {', '.join(valid)}"
                    f"{did_you_mean(str(key), valid)}"
                )
    return value


def job_config(cfg: DictConfig, given: Collection[str], rule_preset: str | None) -> DictConfig:
    """``cfg`` as the job runs it and records it in ``config.yaml``: the user's model as given
    (:func:`own_model`) and the rule's keys from ``rule_settings`` for its name applied, so that
    the ``rule`` section holds what the rule gets. ``given``: the keys the command line sets
    (:func:`adaptgrad.composition.given_keys`). Bad settings are left for :func:`check`."""
    cfg = own_model(cfg, given)
    settings = cfg.get("rule_settings") or {}
    try:
        name = rule_name(cfg.rule, rule_preset, given)
    except Exception:  # noqa: BLE001 - a bad rule config is reported by check
        return cfg
    keys = settings.get(name) if isinstance(settings, DictConfig) else None
    if not isinstance(keys, DictConfig) or not keys:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.rule = OmegaConf.merge(cfg.rule, keys)
    return cfg


def own_model(cfg: DictConfig, given: Collection[str]) -> DictConfig:
    """``cfg`` as the job runs it: with ``model._target_`` among the keys the command line sets
    (``given``), the model config is that ``_target_`` and the ``model.KEY=...`` keys the
    command line gives; the selected built-in preset's keys are dropped (the function's own
    defaults apply, and ``config.yaml``, summaries and tables name no cell it does not build).

    Example:
        >>> from adaptgrad.composition import compose
        >>> cfg = compose(["model._target_=my_models.build", "model.units=8"])
        >>> dict(cfg.model)
        {'_target_': 'my_models.build', 'units': 8}
    """
    if "model._target_" not in given:
        return cfg
    cfg = cfg.copy()
    cfg.model = {k: v for k, v in cfg.model.items() if k == "_target_" or f"model.{k}" in given}
    return cfg


def build_rule(rule_cfg: DictConfig, preset: str | None, settings: dict[str, dict[str, Any]] | None = None) -> AdaptationRule:
    """Instantiate the rule, with the keys ``settings`` (checked ``rule_settings``) gives for
    its name; keys of a preset that a ``rule._target_`` override cannot take are dropped with a
    warning (``adaptgrad rule._target_=my.Rule`` keeps working whatever preset is selected), and
    anything else wrong gets a clear error."""
    target = str(rule_cfg.get("_target_"))
    cls = resolve("rule", target, "Class")
    if not (isinstance(cls, type) and issubclass(cls, AdaptationRule)):
        raise ValueError(f"rule._target_={target!r} is not an adaptgrad.AdaptationRule subclass")
    kwargs = {k: v for k, v in OmegaConf.to_container(rule_cfg, resolve=True).items() if k != "_target_"}
    kwargs.update((settings or {}).get(rule_name(rule_cfg, preset), {}))
    preset_cls = REGISTRY.get(preset or "")
    make = bind(
        "rule",
        cls,
        kwargs,
        foreign=kwargs if preset_cls not in (None, cls) else (),
        hint=" (in a sweep over rules, rule_settings.RULE.KEY=VALUE sets a key of one rule only)",
    )
    try:
        return make()
    except TypeError as error:
        raise ValueError(f"rule {cls.__name__} rejected its arguments {make.keywords}: {error}") from error


def check_model(model: dict[str, Any]) -> dict[str, Any]:
    """The model config, checked: a built-in ``cell`` with its keys, or a ``_target_`` function
    of an importable module (found, not imported: it may import TensorFlow)."""
    target = model.get("_target_")
    if target is not None:
        findable("model", target)
        reserved = sorted({"input_shape", "outputs", "task"} & set(model))
        if reserved:
            raise ValueError(f"model.{reserved[0]} comes from the data; remove it from the model config")
        return model
    _unknown_keys("model.", model, MODEL_KEYS)
    if model.get("cell") not in CELLS:
        raise ValueError(f"model.cell={model.get('cell')!r}; valid: {', '.join(CELLS)}, or give model._target_")
    integer("model.units", model.get("units"))
    integer("model.depth", model.get("depth", 1))
    boolean("model.return_sequences", model.get("return_sequences", False))
    integer("model.head_units", model.get("head_units"), optional=True)
    return model


OPTIMIZER_RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.0, math.inf, False),
    "momentum": (0.0, 1.0, True),
    "beta_1": (0.0, 1.0, False),
    "beta_2": (0.0, 1.0, False),
    "rho": (0.0, 1.0, True),
    "epsilon": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, True),
    "clipnorm": (0.0, math.inf, False),
    "clipvalue": (0.0, math.inf, False),
    "global_clipnorm": (0.0, math.inf, False),
    "ema_momentum": (0.0, 1.0, True),
}
"""Numeric arguments of Keras's optimizers: (low, high, low allowed); checked up front, without
TensorFlow, so a bad value stops a sweep before any job trains (Keras would refuse it in the job)."""


def check_optimizer(optimizer: dict[str, Any]) -> dict[str, Any]:
    """The optimizer config with the numeric arguments of :data:`OPTIMIZER_RANGES` as floats,
    checked finite and in range (``learning_rate`` > 0, ``momentum`` in [0, 1], ...); null
    stands for Keras's default.

    Example:
        >>> check_optimizer({"_target_": "keras.optimizers.SGD", "learning_rate": 1, "momentum": 0})
        {'_target_': 'keras.optimizers.SGD', 'learning_rate': 1.0, 'momentum': 0.0}
        >>> check_optimizer({"_target_": "keras.optimizers.SGD", "momentum": -3})
        Traceback (most recent call last):
        ...
        ValueError: optimizer.momentum=-3 must be a number in [0, 1]
    """
    if "_target_" not in optimizer:
        raise ValueError("optimizer has no _target_; give e.g. optimizer=adam or optimizer._target_=keras.optimizers.SGD")
    checked = dict(optimizer)
    for key, (low, high, closed) in OPTIMIZER_RANGES.items():
        value = optimizer.get(key)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or not (low <= value if closed else low < value) or value > high:
            shown = (
                f"> {low:g}"
                if high == math.inf and not closed
                else f">= {low:g}"
                if high == math.inf
                else f"in [{low:g}, {high:g}]"
            )
            raise ValueError(f"optimizer.{key}={value!r} must be a {'finite ' if high == math.inf else ''}number {shown}")
        checked[key] = float(value)
    return checked


def _layers(value: Any) -> tuple[str, ...]:
    """``layer`` as a tuple of names (empty: null, every recurrent layer)."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"layer={value!r} must be null, a layer name or a list of layer names")
    if len(set(names)) != len(names):
        raise ValueError(f"layer={names} names a layer twice")
    return tuple(names)


def _through_time(value: Any) -> bool | None:
    if value == "auto":
        return None
    if not isinstance(value, bool):
        raise ValueError(f"through_time={value!r} must be auto, true or false")
    return value


def _stats(value: Any) -> frozenset[str] | None:
    if value == "all":
        return None
    if value == "rule":
        return frozenset()
    if not isinstance(value, list):
        raise ValueError(f"stats={value!r} must be all, rule, or a list of statistics, e.g. stats=[grad_sq_sum,act_abs_sum]")
    return requested_fields(value)


def check(cfg: DictConfig, rule_preset: str | None = None) -> Spec:
    """Turn the config into plain objects and validate everything that needs no TensorFlow
    (names and types of keys, values, the rule); no data is loaded.

    Raises:
        ValueError: one line naming the bad key or value and what is valid.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    _unknown_keys("", plain, TOP_KEYS)
    trainer = dict(plain["trainer"])
    _unknown_keys("trainer.", trainer, [f.name for f in dataclasses.fields(Trainer)])
    spec = Spec(
        seed=integer("seed", plain["seed"], 0),
        layers=_layers(plain.get("layer")),
        through_time=_through_time(plain["through_time"]),
        stats=_stats(plain["stats"]),
        oracle=integer("oracle", plain["oracle"], 0),
        model=check_model(dict(plain["model"])),
        rule=build_rule(cfg.rule, rule_preset, rule_settings(plain.get("rule_settings"))),
        optimizer=check_optimizer(dict(plain["optimizer"])),
        trainer=Trainer(**trainer),
        digest=config_digest(OmegaConf.to_yaml(cfg, resolve=True)),
    )
    execution = spec.trainer.steps_per_execution
    if spec.rule.every_steps is not None and spec.rule.every_steps < execution:
        raise ValueError(
            f"rule.every_steps={spec.rule.every_steps} is below trainer.steps_per_execution={execution}: rules act "
            f"between executions of the train step; valid: rule.every_steps >= {execution}"
        )
    _check_capture_mode(spec)
    return spec


def _check_capture_mode(spec: Spec) -> None:
    """Refuse an explicit ``through_time`` whose statistics describe another edit than the rule's,
    where the layer is known without TensorFlow (a built-in model's recurrent layer)."""
    if spec.through_time is None or spec.layers or spec.model.get("_target_"):
        return
    cell = spec.model["cell"]
    wanted = spec.rule.through_time(LayerKind(recurrent=True, homogeneous=cell == "minimal_rnn"))
    if wanted is not None and wanted != spec.through_time:
        raise ValueError(
            f"through_time={str(spec.through_time).lower()} with rule {spec.rule.label} on a {cell} layer: the rule's "
            f"edit needs statistics captured {'through time' if wanted else 'in output mode'}; use through_time="
            f"{str(wanted).lower()} or auto (the default picks the mode each rule needs)"
        )


def load_data(data_cfg: DictConfig) -> Dataset:
    """The dataset the config names (no TensorFlow needed for the shipped ones), checked to have
    training examples and time steps."""
    target = data_cfg.get("_target_")
    keys = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k != "_target_"}
    load = bind("data", str(target), keys)
    try:
        dataset = load()
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"data {target!r} failed to load: {_cause(error)}") from error
    if not isinstance(dataset, Dataset):
        raise ValueError(f"data._target_ must return an adaptgrad.data.Dataset, got {type(dataset).__name__}")
    if len(dataset.x_train) == 0:
        raise ValueError(f"data {target!r} has no training examples")
    if dataset.input_shape[0] == 0:
        raise ValueError(f"data {target!r} has sequences of 0 time steps; a recurrent layer needs at least 1")
    return dataset


def prepare(cfg: DictConfig, rule_preset: str | None = None) -> Job:
    """Turn the config into plain objects, validating everything that can fail before training."""
    spec = check(cfg, rule_preset)
    import keras  # here, not at the top: the app's main process never needs TensorFlow

    from adaptgrad import _keras, runtime

    runtime.configure(spec.trainer.threads, spec.trainer.cpu_devices)  # before TensorFlow's first op here
    _import_modules(spec.model.get("_target_"), cfg.data.get("_target_"))
    # joblib reuses worker processes: no state from a previous job. Without gc.collect(), which costs
    # 0.2-0.3 s a job in a process that has run others (measured); Python collects the cycles anyway
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(spec.seed)
    trainer = spec.trainer
    if trainer.jit_compile and trainer.deterministic:
        log.warning("trainer.jit_compile=true turns op determinism off (Keras compiles no XLA under it): reruns may differ")
    _keras.set_op_determinism(trainer.deterministic and not trainer.jit_compile)
    dataset = load_data(cfg.data)
    keys = {k: v for k, v in spec.optimizer.items() if k != "_target_"}
    make_optimizer = bind("optimizer", str(spec.optimizer["_target_"]), keys)  # built inside the strategy scope
    try:
        made = make_optimizer()  # bad arguments fail here, before training
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"optimizer {spec.optimizer['_target_']!r}: {_cause(error)}") from error
    if not isinstance(made, keras.optimizers.Optimizer):
        raise ValueError(
            f"optimizer._target_={spec.optimizer['_target_']!r} made a {type(made).__name__}, not a keras.optimizers.Optimizer; "
            f"give e.g. optimizer=sgd or optimizer._target_=keras.optimizers.RMSprop"
        )
    return Job(
        **{f.name: getattr(spec, f.name) for f in dataclasses.fields(Spec)}, dataset=dataset, make_optimizer=make_optimizer
    )


def _import_modules(*targets: Any) -> None:
    """Import the modules of the user's ``module.function`` targets before the job seeds: one
    that does work at import (builds a model, draws numbers) then changes no job's numbers,
    whether it is the first job of a worker process to import it or a later one. A module that
    fails here fails again, with the reason, where the job uses it."""
    for target in targets:
        if target:
            with contextlib.suppress(Exception):
                importlib.import_module(str(target).rpartition(".")[0])


def _cause(error: BaseException) -> str:
    """The innermost message of a chain."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"
