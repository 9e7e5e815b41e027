"""Every use adaptgrad makes of Hydra's internals, one function each.

Example:
    >>> from adaptgrad import _hydra
    >>> from hydra.core.override_parser.overrides_parser import OverridesParser
    >>> parsed = OverridesParser.create().parse_overrides(["seed=0,1", "rule=none,taylor_prune", "data=toy"])
    >>> _hydra.sweep_jobs(parsed)  # doctest: +NORMALIZE_WHITESPACE
    [['seed=0', 'rule=none', 'data=toy'], ['seed=0', 'rule=taylor_prune', 'data=toy'],
     ['seed=1', 'rule=none', 'data=toy'], ['seed=1', 'rule=taylor_prune', 'data=toy']]
    >>> _hydra.args_parser().parse_args(["-m", "seed=0,1"]).overrides
    ['seed=0,1']

Nothing else in adaptgrad touches ``hydra._internal`` (or a private attribute of Hydra or
OmegaConf): when Hydra changes one of these, this module is the one place to adapt.
``pyproject.toml`` bounds ``hydra-core`` to the minor version these were checked against
(1.3). The public face of Hydra for the rest of adaptgrad is :mod:`adaptgrad.composition`.
Each function says why adaptgrad needs the internal and what public API would replace it.
"""

from __future__ import annotations

import argparse

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
"""The ``_target_`` of Hydra's default sweeper (``hydra.sweeper._target_``), whose job list
:func:`sweep_jobs` reproduces. Why: to know whether the points of a sweep are Hydra's basic
product (then checked up front) or another sweeper's (Optuna: checked by each job)."""


def args_parser() -> argparse.ArgumentParser:
    """The parser of an ``@hydra.main`` app's command line (``-m``, ``--cfg``, overrides...).

    Why private (``hydra._internal.utils.get_args_parser``): the up-front check reads the command
    line before ``hydra.main`` does, exactly as it will. Public API needed: a hook of
    ``hydra.main`` that runs before launching, with the parsed arguments."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def sweep_jobs(overrides: list[Override]) -> list[list[str]]:
    """The overrides of every job of a basic-sweeper sweep, in the order Hydra launches them.

    Why private (``BasicSweeper.split_arguments``): the up-front check must name each job by the
    number Hydra gives it. Public API needed: a sweeper's list of jobs without launching them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(overrides, None)[0]


def apply_values(overrides: list[Override], cfg: DictConfig) -> None:
    """Apply value overrides (``seed=1``, ``rule.fraction=0.5``, ``+data.scale=2``) to a
    composed config in place, as Hydra applies them after composing.

    Why private (``ConfigLoaderImpl._apply_overrides_to_config``): checking a sweep of 70 jobs
    composes each distinct set of config-group choices once and applies each job's values to a
    copy (composing every job takes seconds each). Public API needed: ``compose`` from an
    already composed base config."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)


def override_dirname(task: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str) -> str:
    """``hydra.job.override_dirname`` of a job with these task overrides (an output dir may name it).

    Why private (``hydra._internal.config_loader_impl.get_overrides_dirname``): a job composed by
    :func:`apply_values` must get the value Hydra would set. Public API needed: the same as
    :func:`apply_values`."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    return get_overrides_dirname(task, exclude_keys, item_sep, kv_sep)
