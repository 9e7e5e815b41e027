"""From a Hydra config to plain objects: everything a job needs, validated before training.

Example:
    >>> from adaptgrad.config import compose, prepare
    >>> job = prepare(compose(["data=toy", "rule=taylor_prune", "rule.fraction=0.5"]), "taylor_prune")
    >>> job.rule, job.trainer.epochs, job.dataset.input_shape
    (TaylorPrune(start_epoch=0, every=1, stop_epoch=None, min_active=1, fraction=0.5), 20, (5, 1))

The config folder ``conf/`` and the ``experiments/`` presets ship inside the package
(``adaptgrad/conf``, ``adaptgrad/experiments``) and are read from the checkout when it is one.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adaptgrad.data import Dataset
from adaptgrad.rules.base import REGISTRY, AdaptationRule

if TYPE_CHECKING:
    import keras

log = logging.getLogger("adaptgrad")

INVOCATION_ENV = "ADAPTGRAD_INVOCATION"
"""Environment variable naming the current ``adaptgrad`` invocation, set by the sweep report."""


def _shipped(name: str) -> Path:
    """``adaptgrad/NAME`` in an installed package, ``NAME/`` beside the package in a checkout."""
    here = Path(__file__).parent
    return next((p for p in (here / name, here.parent / name) if p.is_dir()), here / name)


CONF_DIR = _shipped("conf")
"""The config folder: ``config.yaml`` and one folder per config group."""
EXPERIMENTS_DIR = _shipped("experiments")
"""The ``experiment=NAME`` presets."""


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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"trainer.{name}={value!r} must be an integer >= 1")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"trainer.distribution={self.distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
        for name in ("cpu_devices", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"trainer.{name}={value!r} must be null or an integer >= 1")


DISTRIBUTIONS = ("none", "mirrored")


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything one run needs, as plain objects (no Hydra config below this point)."""

    seed: int
    layer: str | None
    through_time: bool
    dataset: Dataset
    model: dict[str, Any]
    rule: AdaptationRule
    optimizer: Callable[[], keras.optimizers.Optimizer]
    trainer: Trainer


def register_experiments() -> None:
    """Make every ``experiments/*.yaml`` selectable as ``experiment=NAME`` (package _global_)."""
    store = ConfigStore.instance()
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        store.store(group="experiment", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The config the app would run with these command-line overrides, without launching it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_experiments()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def build_rule(rule_cfg: DictConfig, preset: str | None) -> AdaptationRule:
    """Instantiate the rule; keys of a preset that a ``rule._target_`` override cannot take are
    dropped with a warning (``adaptgrad rule._target_=my.Rule`` keeps working whatever preset is
    selected), and anything else wrong gets a clear error."""
    target = str(rule_cfg.get("_target_"))
    module_name, _, attribute = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"rule._target_={target!r} cannot be imported ({error}); give module.Class of a module on PYTHONPATH"
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, AdaptationRule)):
        raise ValueError(f"rule._target_={target!r} is not an adaptgrad.AdaptationRule subclass")
    kwargs = {k: v for k, v in OmegaConf.to_container(rule_cfg, resolve=True).items() if k != "_target_"}
    preset_cls = REGISTRY.get(preset or "")
    if preset_cls is not None and preset_cls is not cls:
        accepted = _keyword_names(cls)
        dropped = sorted(k for k in kwargs if k not in accepted)
        if dropped:
            log.warning("rule %s does not take %s from preset rule=%s; ignored", cls.__name__, dropped, preset)
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"rule {cls.__name__} rejected its arguments {kwargs}: {error}") from error


def _keyword_names(cls: type) -> set[str]:
    """Keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up to AdaptationRule."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters) or klass is AdaptationRule:
            break
    return names


def prepare(cfg: DictConfig, rule_preset: str | None = None) -> Job:
    """Turn the config into plain objects, validating everything that can fail before training."""
    import keras  # here, not at the top: the app's main process never needs TensorFlow

    from adaptgrad import _keras, runtime

    trainer = Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True))
    runtime.configure(trainer.threads, trainer.cpu_devices)  # before TensorFlow's first op here
    seed = int(cfg.seed)
    keras.backend.clear_session()  # joblib reuses worker processes: no state from a previous job
    keras.utils.set_random_seed(seed)
    if trainer.jit_compile and trainer.deterministic:
        log.warning("trainer.jit_compile=true turns op determinism off (Keras compiles no XLA under it): reruns may differ")
    _keras.set_op_determinism(trainer.deterministic and not trainer.jit_compile)
    try:
        dataset = instantiate(cfg.data)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"data {cfg.data.get('_target_')!r} failed to load: {_cause(error)}") from error
    if not isinstance(dataset, Dataset):
        raise ValueError(f"data._target_ must return an adaptgrad.data.Dataset, got {type(dataset).__name__}")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    try:
        optimizer = instantiate(cfg.optimizer, _partial_=True)  # built inside the strategy scope
        optimizer().get_config()  # bad arguments fail here, before training
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"optimizer {cfg.optimizer.get('_target_')!r}: {_cause(error)}") from error
    return Job(
        seed=seed,
        layer=cfg.get("layer"),
        through_time=bool(cfg.through_time),
        dataset=dataset,
        model=model,
        rule=build_rule(cfg.rule, rule_preset),
        optimizer=optimizer,
        trainer=trainer,
    )


def _cause(error: BaseException) -> str:
    """The innermost message of a chain (Hydra wraps errors raised while instantiating)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"
