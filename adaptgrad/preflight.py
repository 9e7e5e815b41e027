"""Every job of an ``adaptgrad`` invocation checked before Hydra starts any (no TensorFlow).

Example:
    >>> from adaptgrad.preflight import check_invocation
    >>> points = check_invocation(["data=toy", "rule=taylor_prune", "rule.fraction=0.1,1.5"], multirun=True)
    >>> [(p.number, p.overrides[-1], p.error) for p in points]  # doctest: +NORMALIZE_WHITESPACE
    [(0, 'rule.fraction=0.1', None),
     (1, 'rule.fraction=1.5', 'taylor_prune: fraction=1.5 is out of range; valid: (0.0, 1.0)')]

The app composes each sweep point the way Hydra's basic sweeper expands it (command-line sweeps
and ``hydra.sweeper.params``), turns it into plain objects (:func:`adaptgrad.config.check`),
loads its data once per distinct data config, and works out the job's output dir. So a typo or a
bad value anywhere in a sweep of 70 jobs stops the sweep within seconds, before any job trains,
with the point's overrides and a one-line message, whatever the launcher. With another sweeper
(Optuna) the command line's fixed part is checked; the points it chooses are checked by each job.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from adaptgrad.checks import did_you_mean
from adaptgrad.config import CONF_DIR, check, job_config, load_data, register_experiments

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
VALUE_KEYS = ("seed", "layer", "through_time", "stats", "oracle", "rules_module", "rule_settings")
"""Top-level keys of the config that are values, not config groups."""
JOB_NAME = "app"
"""Hydra's job name for the app (the task function's module)."""


@dataclasses.dataclass
class Point:
    """One job of the invocation: its number, overrides, output dir (and the run's or sweep's
    dir, ``root``), resolved config, or the one-line error that stops the invocation."""

    number: int
    overrides: list[str]
    directory: Path | None = None
    root: Path | None = None
    config_text: str | None = None
    error: str | None = None
    records: Path | None = None
    """Where Hydra writes the job's records (``.hydra``), if it does."""


@contextlib.contextmanager
def _hydra() -> Iterator[None]:
    """Hydra's compose API on the app's config dir; Hydra's global job config left as it was."""
    register_experiments()
    saved = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=JOB_NAME):
            yield
    finally:
        HydraConfig.instance().cfg = saved


def check_invocation(overrides: list[str], *, multirun: bool, pin: list[str] | None = None) -> list[Point]:
    """Compose and check every job that ``adaptgrad [-m] OVERRIDES`` would run; ``pin`` are more
    Hydra overrides for every point (see :func:`pinned_dir`).

    Returns an empty list when the points cannot be known here (a sweep syntax only another
    sweeper understands): Hydra then reports or runs them as usual.
    """
    with _hydra():
        jobs = _expand(overrides, multirun)
        if jobs is None:
            return []
        composer, data = _Composer(pin or []), {}
        return [_point(i, job, composer, multirun, data) for i, job in enumerate(jobs)]


def pinned_dir(overrides: list[str], *, multirun: bool) -> list[str]:
    """``[hydra.run.dir=...]`` (or ``hydra.sweep.dir``) fixing an output dir that depends on the
    time (``${now:...}``) to its value now, so that the dir checked here is the one Hydra uses."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    with _hydra():
        fixed = [o.input_line for o in _parser().parse_overrides(overrides) if not o.is_sweep_override()]
        try:
            base = compose("config", fixed, return_hydra_config=True)
        except Exception:  # noqa: BLE001 - reported with the points
            return []
        raw = OmegaConf.to_container(base.hydra.sweep if multirun else base.hydra.run, resolve=False)["dir"]
        if "${now:" not in str(raw):
            return []
        HydraConfig.instance().set_config(base)
        value = str(OmegaConf.select(base, key))
    return [f"{key}={value}" if re.fullmatch(r"[\w./:+@%-]+", value) else f"{key}='{value}'"]


def _parser() -> OverridesParser:
    return OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())


def _expand(overrides: list[str], multirun: bool) -> list[list[str]] | None:
    """The overrides of every job, in Hydra's job order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parser = _parser()
    parsed = parser.parse_overrides(overrides)
    if not multirun:
        return None if any(o.is_sweep_override() for o in parsed) else [list(overrides)]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        base = compose("config", fixed, return_hydra_config=True)
    except Exception:  # noqa: BLE001 - the points report it
        return [fixed]
    sweeper = base.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return [fixed]
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        return BasicSweeper.split_arguments(parser.parse_overrides([*params, *overrides]), None)[0]
    except HydraException:
        return None


class _Composer:
    """Hydra's composition of many jobs, fast: the config of each distinct set of config-group
    and Hydra overrides is composed once, and each job's value overrides (``seed=1``,
    ``rule.fraction=0.5``) are applied to a copy, as Hydra applies them after composing."""

    def __init__(self, pin: list[str]) -> None:
        self.pin = pin
        self.composed: dict[tuple[str, ...], DictConfig | Exception] = {}

    def __call__(self, overrides: list[str]) -> DictConfig:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        parsed = _parser().parse_overrides(overrides)
        values = [o for o in parsed if _is_value(o)]
        key = tuple(o.input_line for o in parsed if not _is_value(o))
        if key not in self.composed:
            try:
                self.composed[key] = compose("config", [*key, *self.pin], return_hydra_config=True)
            except Exception as error:  # noqa: BLE001 - raised again for every job with these overrides
                self.composed[key] = error
        base = self.composed[key]
        if isinstance(base, Exception):
            raise base
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in task]
            names = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(task, names.exclude_keys, names.item_sep, names.kv_sep)
        return cfg


def _is_value(override: Override) -> bool:
    """A task override of a value (``seed=1``, ``rule.fraction=0.5``, ``+data.scale=2``), not of
    a config group or of Hydra."""
    key = override.key_or_group
    return not override.is_hydra_override() and override.package is None and ("." in key or key in VALUE_KEYS)


def _point(number: int, overrides: list[str], composer: _Composer, multirun: bool, data: dict[str, str | None]) -> Point:
    point = Point(number, list(overrides))
    try:
        cfg = composer(overrides)
    except Exception as error:  # noqa: BLE001 - any composition error stops the invocation
        point.error = _explain(error, overrides)
        return point
    with open_dict(cfg):
        cfg.hydra.job.num = number
        cfg.hydra.job.id = f"{JOB_NAME}_{number}"
    HydraConfig.instance().set_config(cfg)
    try:
        if multirun:
            point.root = Path(str(cfg.hydra.sweep.dir))
            point.directory = point.root / str(cfg.hydra.sweep.subdir)
        else:
            point.root = point.directory = Path(str(cfg.hydra.run.dir))
        if cfg.hydra.output_subdir is not None:
            point.records = point.directory / str(cfg.hydra.output_subdir)
        task = copy.deepcopy(cfg)
        with open_dict(task):
            del task["hydra"]
        task = job_config(task, overrides, cfg.hydra.runtime.choices.get("rule"))
        point.config_text = OmegaConf.to_yaml(task, resolve=True)
        check(task, cfg.hydra.runtime.choices.get("rule"))
        point.error = _data_error(task.data, data)
    except Exception as error:  # noqa: BLE001
        point.error = _line(error)
    return point


def _data_error(data_cfg: DictConfig, seen: dict[str, str | None]) -> str | None:
    """The error loading this data config gives (each distinct config loaded once)."""
    key = OmegaConf.to_yaml(data_cfg, resolve=True)
    if key not in seen:
        try:
            load_data(data_cfg)
            seen[key] = None
        except Exception as error:  # noqa: BLE001
            seen[key] = _line(error)
    return seen[key]


def _line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _explain(error: Exception, overrides: list[str]) -> str:
    """One line for a composition error, with a "did you mean" from the config's real keys or
    the group's options."""
    if isinstance(error, MissingConfigException) and error.options:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        return f"Could not find '{group}/{option}'; valid {group} options: {', '.join(error.options)}{did_you_mean(option, error.options)}"
    match = re.search(r"Could not override '([^']+)'", str(error))
    if isinstance(error, ConfigCompositionException) and match:
        key = match.group(1)
        others = [o for o in overrides if o.partition("=")[0].lstrip("+~") != key]
        try:
            keys = _dotted(compose("config", others))
        except Exception:  # noqa: BLE001
            keys = []
        hint = ""
        if key.startswith("rule."):
            hint = f"; to set it only for the rules that take it (a sweep over rules): +rule_settings.RULE.{key[5:]}=..."
        return f"{key} is not a key of the config{did_you_mean(key, keys)} (to add a new key: +{key}=...){hint}"
    return _line(error)


def _dotted(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg:
        value = cfg._get_node(key)
        name = f"{prefix}{key}"
        keys += _dotted(value, f"{name}.") if isinstance(value, DictConfig) else [name]
    return keys
