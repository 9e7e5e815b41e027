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
import re
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from adaptgrad.atomic import write_atomic, write_json, write_text
from adaptgrad.composition import Composer, command_line, launcher, register
from adaptgrad.config import CONF_DIR
from adaptgrad.jobdir import Busy, lock, plan, refusal
from adaptgrad.preflight import Point, check_invocation

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

OUTCOMES = ".adaptgrad.outcomes"
"""The folder in a sweep's dir where each job records what the invocation did with it
(``<job number>.json``), for the report: in the sweep's dir, not the job's, so that a job refused
because its dir is another run's is counted too."""


class SweepReport(Callback):
    """Hydra callback: at the end of a sweep, count what each job did in *this* invocation and
    list the jobs that did not complete (the command then exits non-zero).

    Jobs never raise (a failure is recorded in the job's files), so Hydra always reaches
    ``on_multirun_end``; the counts come from each job's record in :data:`OUTCOMES`, tagged with
    the id this callback writes into the sweep dir at the start (:data:`INVOCATION`).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        write_text(Path(config.hydra.sweep.dir) / INVOCATION, uuid.uuid4().hex)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report(Path(config.hydra.sweep.dir))


def report(sweep: Path) -> None:
    """Print what this invocation did with each job of ``sweep`` and its table; list the jobs
    that did not complete for :func:`main`'s exit code."""
    invocation = _invocation(sweep)
    counts: Counter[str] = Counter()
    for path in sorted((sweep / OUTCOMES).glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
        try:
            outcome = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(outcome, dict) or outcome.get("invocation") != invocation:
            continue
        counts[str(outcome.get("outcome"))] += 1
        if outcome.get("status") != "ok":
            _failed_jobs.append(f"{outcome.get('directory')}: {outcome.get('status')}: {outcome.get('message', '')}")
    refused = f" ({counts['refused']} refused: another run holds their dir)" if counts["refused"] else ""
    print(
        f"sweep {sweep}: {counts['ran']} ran, {counts['resumed']} resumed, {counts['skipped']} skipped "
        f"(completed earlier), {len(_failed_jobs)} did not complete{refused}",
        flush=True,
    )
    print(sweep_table(sweep), flush=True)


def _invocation(sweep: Path) -> str | None:
    try:
        return (sweep / INVOCATION).read_text(encoding="utf-8")
    except OSError:
        return None


def _record_outcome(number: int, job_dir: Path, sweep: Path, result: dict[str, Any]) -> None:
    """In the job's process: what this invocation did with the job, for :func:`report`."""
    record = {
        "invocation": _invocation(sweep),
        "outcome": result.get("outcome"),
        "status": result.get("status"),
        "directory": str(job_dir),
        "message": str((result.get("error") or {}).get("message", "")),
    }
    try:
        write_json(sweep / OUTCOMES / f"{number}.json", record)
    except OSError as error:
        log.error("cannot record the job's end in %s: %s", sweep / OUTCOMES, error)


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


def missing_launcher(argv: list[str]) -> str | None:
    """A clear message if the command line ``argv`` (without the program) selects
    ``hydra/launcher=NAME``, a launcher whose plugin is not installed."""
    args = command_line(argv)
    name = launcher(args.overrides) if args is not None else None
    if name in LAUNCHERS:
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
    """In a worker process that the ``adaptgrad`` command started, directly (joblib's loky
    workers) or through a process of the launcher (``submitit_local``'s controller), exit as soon
    as that command's process is gone (killed), instead of training on unsupervised. The job is
    left as a killed job is: ``running``, with its checkpoints, and resumes when the sweep is
    rerun. Elsewhere (the command's own process, Slurm or Ray workers) nothing happens."""
    parent = int(os.environ.get(MAIN_PID_ENV, "0"))
    if _watching or not parent or os.getpid() == parent or parent not in _ancestors():
        return

    def watch() -> None:
        while parent in _ancestors():
            time.sleep(poll)
        log.error("the adaptgrad process %d that started this worker is gone; stopping (rerun the sweep to resume)", parent)
        os._exit(1)

    _watching.append(threading.Thread(target=watch, name="adaptgrad-stop-with-parent", daemon=True))
    _watching[0].start()


def _ancestors() -> list[int]:
    """The pids of this process's parent, its parent's parent... (only the parent where there is
    no ``/proc``). A process whose parent dies is adopted by another: the dead one leaves the list."""
    found, pid = [], os.getppid()
    while pid > 1 and pid not in found:
        found.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])  # after "pid (command)": state, then the parent's pid
    return found


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
        _record_outcome(hydra_cfg.job.num, output_dir, Path(hydra_cfg.sweep.dir), result)
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
_records: dict[Path, bytes] = {}
"""Hydra's records (``.hydra/*.yaml``, ``multirun.yaml``) of the jobs this invocation skips, as
they were before Hydra rewrites them: put back when the invocation ends (see :func:`preflight`)."""
RERUN = "rerun the same command to resume"
_invoked: dict[str, Any] = {}
"""What :func:`preflight` found out about this invocation: ``rerun`` (how to resume it, with the
output dir it pinned) and ``sweep`` (the sweep's dir, for a sweep)."""


def preflight(argv: list[str]) -> int:
    """Check every job of the invocation before Hydra starts any (see :mod:`adaptgrad.preflight`):
    print one line per bad job and return the exit code (0: go on). Pins a time-dependent output
    dir in ``argv`` and takes the lock of the run's (or the sweep's) dir, held until the process
    ends, so that no other ``adaptgrad`` writes there meanwhile; a job dir that holds another
    config's run is refused before Hydra writes anything into it."""
    args = command_line(argv[1:])
    if args is None:
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
        composer = Composer()
        pin = composer.pin_dir(args.overrides, multirun=multirun)
        points = check_invocation(args.overrides, multirun=multirun, composer=composer)
    except OverrideParseException:
        unquoted = next((o for o in args.overrides if not o.isascii() and not re.search(r"=\s*(['\"]).*\1\s*$", o)), None)
        if unquoted is None:
            return 0  # Hydra reports it with the grammar's hint
        key, _, value = unquoted.partition("=")
        print(
            f"error: {unquoted}: Hydra takes a value with non-ASCII characters only in quotes: {key}='{value}'", file=sys.stderr
        )
        return 2
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
    if pin:
        _invoked["rerun"] = f"rerun the same command with {pin[0]} to resume"
    if not points:
        return 0
    if multirun:
        _invoked["sweep"] = points[0].root
    own = points[0].root  # the run's or the sweep's dir
    try:
        _locks.enter_context(lock(own))
    except (Busy, OSError) as error:
        print(
            f"error: {error}" if isinstance(error, Busy) else f"error: cannot use {own}: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    plans = {p.number: plan(p.directory, p.config_text) for p in points if p.directory is not None}
    refused = [p for p in points if plans.get(p.number) == "refuse"]
    skipped = [p for p in points if plans.get(p.number) == "skip"]
    _keep_records(skipped, own / "multirun.yaml" if multirun and len(skipped) == len(points) else None)
    for point in refused:
        print(f"error: {refusal(point.directory)}", file=sys.stderr)
    if refused and multirun:
        print(
            f"sweep {own}: 0 ran, 0 resumed, 0 skipped (completed earlier), {len(refused)} refused; nothing was written",
            flush=True,
        )
    return 1 if refused else 0


def _keep_records(skipped: list[Point], sweep_record: Path | None) -> None:
    """Remember Hydra's records of the jobs this invocation skips (and the sweep's, when it skips
    every job): Hydra rewrites them before a job starts, with this invocation's launcher and
    overrides, although the job's files are those of the run that completed it."""
    files = [f for p in skipped if p.records is not None and p.records.is_dir() for f in p.records.glob("*.yaml")]
    if sweep_record is not None and sweep_record.is_file():
        files.append(sweep_record)
    for path in files:
        with contextlib.suppress(OSError):
            _records[path] = path.read_bytes()


def _restore_records() -> None:
    for path, content in _records.items():
        try:
            if not path.is_file() or path.read_bytes() != content:
                write_atomic(path, lambda temp, content=content: temp.write_bytes(content))
        except OSError as error:
            log.error("cannot restore Hydra's record %s: %s", path, error)
    _records.clear()


def _launch() -> None:
    """Hydra's app, with what can escape it turned into a short message and an exit code: Ctrl-C
    (the jobs keep their checkpoints) and a launcher that fails (a joblib worker killed...). Jobs
    themselves never raise. ``HYDRA_FULL_ERROR=1`` (set by the user) shows the traceback."""
    full_error = "HYDRA_FULL_ERROR" in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises instead of printing a traceback
    try:
        _app()
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: jobs that did not complete keep their checkpoints; {_invoked.get('rerun', RERUN)}", file=sys.stderr
        )
        raise SystemExit(130) from None
    except HydraException as error:
        if full_error:
            raise
        cause = f"\n{error.__cause__}" if error.__cause__ is not None else ""
        print(f"error: {error}{cause}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as error:
        if full_error:
            raise
        first = (str(error).strip().splitlines() or [""])[0]
        print(f"error: the sweep stopped: {type(error).__name__}: {first}", file=sys.stderr)
        if _invoked.get("sweep") is not None:
            report(_invoked["sweep"])
        print(
            f"(was a worker process killed or out of memory?) {_invoked.get('rerun', RERUN)} the jobs that did not complete",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    finally:
        if not full_error:
            del os.environ["HYDRA_FULL_ERROR"]


def main() -> None:
    """Console-script entry point (``adaptgrad`` and ``python -m adaptgrad``)."""
    _failed_jobs.clear()  # main() may run more than once in a process (tests)
    _invoked.clear()
    message = missing_launcher(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
    args = command_line(sys.argv[1:])
    try:
        register(args.overrides if args is not None else [])
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
        _launch()
    finally:
        _restore_records()
        _locks.close()
    if _failed_jobs:
        print(f"{len(_failed_jobs)} job(s) did not complete:", file=sys.stderr)
        for line in _failed_jobs:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
