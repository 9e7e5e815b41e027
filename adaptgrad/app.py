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

import contextlib
import importlib.util
import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from adaptgrad.atomic import write_json, write_text
from adaptgrad.config import CONF_DIR, register_experiments, register_rules, rules_modules
from adaptgrad.jobdir import Busy, lock, plan, refusal
from adaptgrad.preflight import check_invocation, pinned_dir

log = logging.getLogger("adaptgrad")

LAUNCHERS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
}
"""Launcher name -> (plugin module, adaptgrad extra that installs it)."""

_failed_jobs: list[str] = []

PRIMARY_METRIC = "val_loss"
"""The metric the app returns to sweepers (e.g. Optuna) and tabulates at the end of a sweep."""


INVOCATION = ".adaptgrad.invocation"
"""The file in a sweep's dir naming the invocation that runs it. A file, not an environment
variable: Ray's workers (and a cluster's) do not inherit the command's environment, and the
sweep dir's lock (see :func:`preflight`) keeps any other invocation out of it meanwhile."""

OUTCOME = "outcome.json"
"""The file in a sweep job's dir saying what the invocation did with the job, for the report."""


class SweepReport(Callback):
    """Hydra callback: at the end of a sweep, count what each job did in *this* invocation and
    list the jobs that did not complete (the command then exits non-zero).

    Jobs never raise (a failure is recorded in the job's files), so Hydra always reaches
    ``on_multirun_end``; the counts come from each job's ``outcome.json``, tagged with the id
    this callback writes into the sweep dir at the start (:data:`INVOCATION`).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        write_text(Path(config.hydra.sweep.dir) / INVOCATION, uuid.uuid4().hex)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        invocation = _invocation(sweep)
        counts: Counter[str] = Counter()
        for path in sorted(sweep.rglob(OUTCOME)):
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
        print(sweep_table(sweep), flush=True)


def _invocation(sweep: Path) -> str | None:
    try:
        return (sweep / INVOCATION).read_text(encoding="utf-8")
    except OSError:
        return None


def _record_outcome(job_dir: Path, sweep: Path, result: dict[str, Any]) -> None:
    """In the job's process: what this invocation did with the job (a refused job's dir is another
    run's and is left alone)."""
    if result.get("outcome") == "refused":
        return
    record = {"invocation": _invocation(sweep), "outcome": result.get("outcome"), "status": result.get("status")}
    try:
        write_json(job_dir / OUTCOME, record)
    except OSError as error:
        log.error("cannot record the job's end in %s: %s", job_dir, error)


def sweep_table(sweep: Path, metric: str = PRIMARY_METRIC) -> str:
    """The sweep's primary metric (last epoch) as mean ± std per group of the varying config keys."""
    import warnings

    from adaptgrad.results import collect
    from adaptgrad.results.cli import summary_markdown

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a job's unreadable file is reported by adaptgrad-results, not here
        try:
            results = collect(sweep)
            by = results.varying_keys()
            return f"{metric} (last epoch) per group:\n" + summary_markdown(results.summary([metric], by), by).rstrip()
        except (OSError, ValueError) as error:
            return f"no {metric} table: {error}"


class _JobTag(logging.Filter):
    """Prefixes every adaptgrad log line of a sweep job with ``[job N]`` (parallel jobs interleave)."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.tag = f"[job {number}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.tag):
            record.msg = self.tag + str(record.msg)
        return True


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


MAIN_PID_ENV = "ADAPTGRAD_MAIN_PID"
"""Environment variable holding the pid of the ``adaptgrad`` process that launched the jobs."""
_watching: list[threading.Thread] = []


def stop_with_parent(poll: float = 1.0) -> None:
    """In a worker process that the ``adaptgrad`` command started (joblib's loky workers,
    ``submitit_local``'s jobs), exit as soon as that command's process is gone (killed), instead
    of training on unsupervised. The job is left as a killed job is: ``running``, with its
    checkpoints, and resumes when the sweep is rerun. Elsewhere (the command's own process, Slurm
    or Ray workers) nothing happens."""
    parent = int(os.environ.get(MAIN_PID_ENV, "0"))
    if _watching or not parent or os.getpid() == parent or os.getppid() != parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        log.error("the adaptgrad process %d that started this worker is gone; stopping (rerun the sweep to resume)", parent)
        os._exit(1)

    _watching.append(threading.Thread(target=watch, name="adaptgrad-stop-with-parent", daemon=True))
    _watching[0].start()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    stop_with_parent()
    from adaptgrad.run import run, summary_table  # TensorFlow loads only if the job trains

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode.name == "MULTIRUN"
    tag = _JobTag(hydra_cfg.job.num) if sweeping else None
    if tag is not None:
        log.addFilter(tag)
    try:
        result = run(cfg, output_dir, rule_preset=hydra_cfg.runtime.choices.get("rule"), overrides=list(hydra_cfg.overrides.task))
    finally:
        if tag is not None:
            log.removeFilter(tag)
    if sweeping:  # one line per job; the sweep ends with one table (SweepReport)
        _record_outcome(output_dir, Path(hydra_cfg.sweep.dir), result)
        final = (result.get("final") or {}).get(PRIMARY_METRIC)
        shown = f" {PRIMARY_METRIC}={final:.4g}" if isinstance(final, float) else ""
        print(
            f"[job {hydra_cfg.job.num}] {' '.join(hydra_cfg.overrides.task)}: {result['status']}{shown}  {output_dir}", flush=True
        )
    else:
        print(summary_table(result, output_dir), flush=True)
        if result["status"] != "ok":  # sweeps: see SweepReport
            message = (result.get("error") or {}).get("message", "")
            _failed_jobs.append(f"{output_dir}: {result['status']}: {message}")
    return float(result.get("final", {}).get(PRIMARY_METRIC, float("nan")))


_locks = contextlib.ExitStack()


def preflight(argv: list[str]) -> int:
    """Check every job of the invocation before Hydra starts any (see :mod:`adaptgrad.preflight`):
    print one line per bad job and return the exit code (0: go on). Pins a time-dependent output
    dir in ``argv`` and takes the lock of the run's (or the sweep's) dir, held until the process
    ends, so that no other ``adaptgrad`` writes there meanwhile; a job dir that holds another
    config's run is refused before Hydra writes anything into it."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv[1:])
    except SystemExit:
        return 0  # Hydra reports it
    if any(
        getattr(args, name, None)
        for name in (
            "help",
            "hydra_help",
            "version",
            "cfg",
            "info",
            "shell_completion",
            "config_path",
            "config_name",
            "config_dir",
            "experimental_rerun",
        )
    ):
        return 0
    multirun = bool(args.multirun)
    try:
        pin = pinned_dir(args.overrides, multirun=multirun)
        points = check_invocation(args.overrides, multirun=multirun, pin=pin)
    except OverrideParseException:
        return 0  # Hydra reports it with the grammar's hint
    bad = [p for p in points if p.error]
    for point in bad[:10]:
        shown = " ".join(o for o in point.overrides if not o.startswith("hydra"))
        where = f"job {point.number} ({shown}): " if multirun else ""
        print(f"error: {where}{point.error}", file=sys.stderr)
    if bad:
        if multirun:
            print(f"error: {len(bad)} of {len(points)} jobs cannot run; no job was started", file=sys.stderr)
        return 2
    argv.extend(pin)
    if not points:
        return 0
    own = points[0].root  # the run's or the sweep's dir
    try:
        _locks.enter_context(lock(own))
    except (Busy, OSError) as error:
        print(
            f"error: {error}" if isinstance(error, Busy) else f"error: cannot use {own}: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    refused = [p for p in points if p.directory is not None and plan(p.directory, p.config_text) == "refuse"]
    for point in refused:
        print(f"error: {refusal(point.directory)}", file=sys.stderr)
    if refused and multirun:
        print(
            f"sweep {own}: 0 ran, 0 resumed, 0 skipped (completed earlier), {len(refused)} refused; nothing was written",
            flush=True,
        )
    return 1 if refused else 0


def main() -> None:
    """Console-script entry point (``adaptgrad`` and ``python -m adaptgrad``)."""
    _failed_jobs.clear()  # main() may run more than once in a process (tests)
    message = missing_launcher(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
    register_experiments()
    try:
        register_rules(rules_modules(sys.argv[1:]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    _failed_jobs.clear()
    os.environ[MAIN_PID_ENV] = str(os.getpid())
    code = preflight(sys.argv)
    if code:
        _locks.close()
        raise SystemExit(code)
    try:
        _app()
    finally:
        _locks.close()
    if _failed_jobs:
        print(f"{len(_failed_jobs)} job(s) did not complete:", file=sys.stderr)
        for line in _failed_jobs:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
