"""Everything adaptgrad asks of Hydra besides running the app: reading override strings, the
config groups it adds (``experiment=NAME``, rules of the user's modules), composing a job's
config, and the jobs of a sweep with their configs and output dirs.

Example:
    >>> from adaptgrad.composition import compose, given_keys, rules_modules
    >>> cfg = compose(["data=toy", "rule=taylor_prune", "rule.fraction=0.5"])
    >>> cfg.rule.fraction, cfg.data._target_
    (0.5, 'adaptgrad.data.toy')
    >>> sorted(given_keys(["+rule._target_=my.Rule", "model=gru", "seed=1,2"]))
    ['model', 'rule._target_', 'seed']
    >>> rules_modules(["rules_module=[mine,theirs]", "seed=0"]), rules_modules(["rules_module=a,b"])
    (['mine', 'theirs'], ['a', 'b'])

Override strings are read by one parser, Hydra's own (``OverridesParser``, from
``hydra.core``, the API Hydra's sweeper plugins use): quoting, ``+``/``~``/``++`` prefixes,
sweeps and lists are read exactly as Hydra will read them, where a hand-written split on ``=``
and ``,`` reads ``rules_module=[a,b]``, ``key='x,y'`` or ``+~key`` wrongly. The Hydra internals
this needs are in :mod:`adaptgrad._hydra`, each with its reason. The app (:mod:`adaptgrad.app`)
uses Hydra's public app API (``hydra.main``, ``HydraConfig``, callbacks); the validated job
(:mod:`adaptgrad.config`) needs no Hydra.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import importlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict

from adaptgrad import _hydra
from adaptgrad.checks import did_you_mean, first_line
from adaptgrad.config import CONF_DIR, EXPERIMENTS_DIR, TOP_KEYS, own_model
from adaptgrad.rules.base import REGISTRY, AdaptationRule

GROUPS = ("model", "data", "rule", "optimizer", "trainer")
"""The config groups of ``conf/`` that a job's config holds (``experiment`` and ``hparams_search`` only select values)."""
VALUE_KEYS = tuple(key for key in TOP_KEYS if key not in GROUPS)
"""Top-level keys of the config that are values, not config groups."""
JOB_NAME = "app"
"""Hydra's job name for the app (the task function's module)."""


# -- override strings ---------------------------------------------------------------------------


def parse(overrides: Sequence[str]) -> list[Override]:
    """``overrides`` as Hydra reads them (raises ``OverrideParseException`` on bad syntax)."""
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    return OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))


def given_keys(overrides: Sequence[str]) -> set[str]:
    """The keys and config groups ``overrides`` set (``rule._target_``, ``model``, ``hydra/launcher``)."""
    return {override.key_or_group for override in parse(overrides)}


def _values(overrides: Sequence[str], key: str) -> list[Any]:
    """The values ``overrides`` give ``key``: each choice of a sweep, each item of a list (none
    when the overrides do not parse: Hydra refuses them, saying why)."""
    try:
        parsed = parse(overrides)
    except OverrideParseException:
        return []
    found: list[Any] = []
    for override in parsed:
        if override.key_or_group != key or override.is_delete():
            continue
        value = override.value()
        for choice in getattr(value, "list", None) or [value]:  # a sweep: its choices
            found += choice if isinstance(choice, list) else [choice]
    return [value for value in found if value not in (None, "")]


def rules_modules(overrides: Sequence[str]) -> list[str]:
    """The modules named by ``rules_module=NAME``, ``rules_module=[A,B]`` or a sweep over them."""
    return [str(value) for value in _values(overrides, "rules_module")]


def launcher(overrides: Sequence[str]) -> str | None:
    """The launcher ``hydra/launcher=NAME`` selects, if any."""
    found = _values(overrides, "hydra/launcher")
    return str(found[0]) if found else None


def command_line(argv: Sequence[str]) -> argparse.Namespace | None:
    """The app's command line (without the program) as ``hydra.main`` will read it; None if it
    will refuse it (Hydra reports that)."""
    try:
        return _hydra.args_parser().parse_args(list(argv))
    except SystemExit:
        return None


# -- config groups adaptgrad adds ---------------------------------------------------------------


def register_experiments() -> None:
    """Make every ``experiments/*.yaml`` selectable as ``experiment=NAME`` (package _global_)."""
    store = ConfigStore.instance()
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        stat = path.stat()
        store.store(group="experiment", name=path.stem, node=_load(path, stat.st_mtime_ns, stat.st_size), package="_global_")


@functools.cache
def _load(path: Path, mtime_ns: int, size: int) -> DictConfig:
    """A YAML file's config, read again only when the file changes (the store copies it)."""
    return OmegaConf.load(path)


def register_rules(modules: Sequence[str] = ()) -> None:
    """Import ``modules`` (the user's rule modules), then make every rule they register with
    ``name=`` that has no ``conf/rule/NAME.yaml`` selectable as ``rule=NAME`` with its defaults."""
    import adaptgrad.rules  # noqa: F401 - the shipped rules register themselves

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"rules_module={module!r} cannot be imported ({error}); give a module on PYTHONPATH") from error
        except Exception as error:  # noqa: BLE001 - the user's module is broken: say where, without a traceback
            raise ValueError(
                f"rules_module={module!r} raised {type(error).__name__} on import: {error}; fix the module"
            ) from error
    store = ConfigStore.instance()
    for name, cls in REGISTRY.items():  # only the named modules' rules: others imported by chance may shadow a config file
        named = any(cls.__module__ == module or cls.__module__.startswith(f"{module}.") for module in modules)
        if named and not (CONF_DIR / "rule" / f"{name}.yaml").is_file():
            store.store(group="rule", name=name, node=_rule_node(cls))


def register(overrides: Sequence[str]) -> None:
    """Every config group adaptgrad adds, for an invocation with ``overrides``: the experiments
    and the rules of the ``rules_module`` they name (ValueError: a module that cannot be imported)."""
    register_experiments()
    register_rules(rules_modules(overrides))


def _rule_node(cls: type[AdaptationRule]) -> dict[str, Any]:
    """``_target_`` and the default keyword arguments of a rule class (only the target when the
    class cannot be built without arguments: those are then given as ``+rule.KEY=VALUE``)."""
    try:
        defaults = cls().get_config()
    except Exception:  # noqa: BLE001 - required arguments: no defaults to show
        defaults = {}
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **defaults}


# -- composing jobs -----------------------------------------------------------------------------


def compose(overrides: Sequence[str] | None = None) -> DictConfig:
    """The config the app would run with these command-line overrides, without launching it."""
    overrides = list(overrides or [])
    register(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return own_model(hydra_compose(config_name="config", overrides=overrides), given_keys(overrides))


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Hydra's compose API on the app's config dir; Hydra's global job config left as it was."""
    register_experiments()
    saved = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=JOB_NAME):
            yield
    finally:
        HydraConfig.instance().cfg = saved


@dataclasses.dataclass
class Composed:
    """One job as Hydra would start it: its config without ``hydra``, its rule preset (the
    ``rule=`` choice), the run's or sweep's dir ``root``, its own ``directory``, and where Hydra
    writes its records (``.hydra``), if it does."""

    config: DictConfig
    rule_preset: str | None
    root: Path
    directory: Path
    records: Path | None


class Composer:
    """Hydra's composition of one invocation's jobs, fast: the config of each distinct set of
    config-group and Hydra overrides is composed once, and each job's value overrides
    (``seed=1``, ``rule.fraction=0.5``) are applied to a copy, as Hydra applies them after
    composing. ``pin`` are more Hydra overrides for every job (see :meth:`pin_dir`). Methods
    other than :meth:`pin_dir` run in a :func:`session`."""

    def __init__(self) -> None:
        self.pin: list[str] = []
        self.composed: dict[tuple[str, ...], DictConfig | Exception] = {}

    def pin_dir(self, overrides: list[str], *, multirun: bool) -> list[str]:
        """``[hydra.run.dir=...]`` (or ``hydra.sweep.dir``) fixing an output dir that depends on
        the time (``${now:...}``) to its value now, so that the dir checked up front is the one
        Hydra uses; it becomes :attr:`pin`."""
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        with session():
            try:
                base = self._compose([o.input_line for o in parse(overrides) if not o.is_sweep_override()])
            except Exception:  # noqa: BLE001 - reported with the points
                return []
            raw = OmegaConf.to_container(base.hydra.sweep if multirun else base.hydra.run, resolve=False)["dir"]
            if "${now:" not in str(raw):
                return []
            HydraConfig.instance().set_config(base)
            value = str(OmegaConf.select(base, key))
        self.pin = [f"{key}={value}" if re.fullmatch(r"[\w./:+@%-]+", value) else f"{key}='{value}'"]
        return self.pin

    def expand(self, overrides: list[str], multirun: bool) -> list[list[str]] | None:
        """The overrides of every job, in Hydra's job order; None when the points cannot be known
        here (a sweep syntax only another sweeper understands); with another sweeper than Hydra's
        basic one (Optuna), the command line's fixed part only."""
        parsed = parse(overrides)
        if not multirun:
            return None if any(o.is_sweep_override() for o in parsed) else [list(overrides)]
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        try:
            base = self._compose(fixed)
        except Exception:  # noqa: BLE001 - the points report it
            return [fixed]
        sweeper = base.hydra.sweeper
        if sweeper.get("_target_") != _hydra.BASIC_SWEEPER:
            return [fixed]
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        try:
            return _hydra.sweep_jobs(parse([*params, *overrides]))
        except HydraException:
            return None

    def __call__(self, number: int, overrides: list[str], multirun: bool) -> Composed:
        """Job ``number`` with these overrides: its config and dirs (raises what Hydra would)."""
        cfg = self._compose(overrides)
        with open_dict(cfg):
            cfg.hydra.job.num = number
            cfg.hydra.job.id = f"{JOB_NAME}_{number}"
        HydraConfig.instance().set_config(cfg)  # the dirs may name hydra.job.*, hydra.runtime.*
        if multirun:
            root = Path(str(cfg.hydra.sweep.dir))
            directory = root / str(cfg.hydra.sweep.subdir)
        else:
            root = directory = Path(str(cfg.hydra.run.dir))
        records = directory / str(cfg.hydra.output_subdir) if cfg.hydra.output_subdir is not None else None
        task = copy.deepcopy(cfg)
        with open_dict(task):
            del task["hydra"]
        return Composed(task, cfg.hydra.runtime.choices.get("rule"), root, directory, records)

    def _compose(self, overrides: list[str]) -> DictConfig:
        parsed = parse(overrides)
        values = [o for o in parsed if _is_value(o)]
        key = (*(o.input_line for o in parsed if not _is_value(o)), *self.pin)
        if key not in self.composed:
            try:
                self.composed[key] = hydra_compose("config", list(key), return_hydra_config=True)
            except Exception as error:  # noqa: BLE001 - raised again for every job with these overrides
                self.composed[key] = error
        base = self.composed[key]
        if isinstance(base, Exception):
            raise base
        cfg = copy.deepcopy(base)
        _hydra.apply_values(values, cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in task]
            names = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = _hydra.override_dirname(task, names.exclude_keys, names.item_sep, names.kv_sep)
        return cfg


def _is_value(override: Override) -> bool:
    """A task override of a value (``seed=1``, ``rule.fraction=0.5``, ``+data.scale=2``), not of
    a config group or of Hydra."""
    key = override.key_or_group
    return not override.is_hydra_override() and override.package is None and ("." in key or key in VALUE_KEYS)


def explain(error: Exception, overrides: list[str]) -> str:
    """One line for a composition error, with a "did you mean" from the config's real keys or
    the group's options (in a :func:`session`)."""
    if isinstance(error, MissingConfigException) and error.options:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        return f"Could not find '{group}/{option}'; valid {group} options: {', '.join(error.options)}{did_you_mean(option, error.options)}"
    match = re.search(r"Could not override '([^']+)'", str(error))
    if isinstance(error, ConfigCompositionException) and match:
        key = match.group(1)
        others = [o.input_line for o in parse(overrides) if o.key_or_group != key]
        try:
            keys = _dotted(OmegaConf.to_container(hydra_compose("config", others), resolve=False))
        except Exception:  # noqa: BLE001
            keys = []
        hint = ""
        if key.startswith("rule."):
            hint = f"; to set it only for the rules that take it (a sweep over rules): +rule_settings.RULE.{key[5:]}=..."
        return f"{key} is not a key of the config{did_you_mean(key, keys)} (to add a new key: +{key}=...){hint}"
    return first_line(error)


def _dotted(tree: Any, prefix: str = "") -> list[str]:
    """The dotted keys of every leaf of a nested dict."""
    if not isinstance(tree, dict):
        return [prefix.rstrip(".")]
    return [key for name, value in tree.items() for key in _dotted(value, f"{prefix}{name}.")]
