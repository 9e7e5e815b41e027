"""The ``adaptgrad`` command: a Hydra 1.3 app that runs one job, or a sweep with ``-m``.

Example (shell)::

    adaptgrad                                         # the default job, < 60 s on 2 cores
    adaptgrad model=gru data=digits rule=dormant_reset trainer.epochs=5
    adaptgrad -m rule=none,taylor_prune seed=0,1,2 hydra/launcher=joblib
    adaptgrad experiment=adding_gru                   # a preset from experiments/

Each job writes its files (see :mod:`adaptgrad.recorder`) into its Hydra output dir and never
raises: a failed job is recorded as such and the sweep goes on. The command exits non-zero, with
one line per job that did not complete, if any job failed or diverged.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info lines

import importlib.util
import json
import logging
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from adaptgrad.config import CONF_DIR, INVOCATION_ENV, register_experiments

log = logging.getLogger("adaptgrad")

LAUNCHERS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
}
"""Launcher name -> (plugin module, adaptgrad extra that installs it)."""

_failed_jobs: list[str] = []


class SweepReport(Callback):
    """Hydra callback: at the end of a sweep, count what each job did in *this* invocation and
    list the jobs that did not complete (the command then exits non-zero).

    Jobs never raise (a failure is recorded in the job's files), so Hydra always reaches
    ``on_multirun_end``; the counts come from each job's ``outcome.json``, tagged with an id
    this callback puts in the environment that launcher workers inherit.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[INVOCATION_ENV] = uuid.uuid4().hex

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        invocation = os.environ.get(INVOCATION_ENV)
        counts: Counter[str] = Counter()
        for path in sorted(sweep.rglob("outcome.json")):
            try:
                outcome = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if outcome.get("invocation") != invocation:
                continue
            counts[outcome["outcome"]] += 1
            if outcome.get("status") != "ok":
                _failed_jobs.append(f"{path.parent}: {outcome.get('status')}: {_error_message(path.parent)}")
        print(
            f"sweep {sweep}: {counts['ran']} ran, {counts['resumed']} resumed, {counts['skipped']} skipped "
            f"(completed earlier), {len(_failed_jobs)} did not complete",
            flush=True,
        )


def _error_message(job_dir: Path) -> str:
    try:
        result = json.loads((job_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "no readable result.json"
    return str((result.get("error") or {}).get("message", ""))



def missing_launcher(argv: list[str]) -> str | None:
    """A clear message if ``hydra/launcher=NAME`` names a launcher whose plugin is not installed."""
    for arg in argv:
        key, _, name = arg.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and name in LAUNCHERS:
            module, extra = LAUNCHERS[name]
            if _find(module) is None:
                return (
                    f"error: hydra/launcher={name} needs the {extra} launcher plugin, which is not installed.\n"
                    f"Install it with:  pip install 'adaptgrad[{extra}]'"
                )
    return None


def _find(module: str) -> Any:
    """The module's spec, or None when it (or its parent package) is not installed."""
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    from adaptgrad.run import run, summary_table  # TensorFlow loads in the process that trains

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    result = run(
        cfg,
        output_dir,
        rule_preset=hydra_cfg.runtime.choices.get("rule"),
        overrides=list(hydra_cfg.overrides.task),
    )
    print(summary_table(result, output_dir), flush=True)
    if result["status"] != "ok" and hydra_cfg.mode.name == "RUN":  # sweeps: see SweepReport
        message = (result.get("error") or {}).get("message", "")
        _failed_jobs.append(f"{output_dir}: {result['status']}: {message}")
    return float(result.get("final", {}).get("val_loss", float("nan")))


def main() -> None:
    """Console-script entry point (``adaptgrad`` and ``python -m adaptgrad``)."""
    _failed_jobs.clear()  # main() may run more than once in a process (tests)
    message = missing_launcher(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
    register_experiments()
    _app()
    if _failed_jobs:
        print(f"{len(_failed_jobs)} job(s) did not complete:", file=sys.stderr)
        for line in _failed_jobs:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
