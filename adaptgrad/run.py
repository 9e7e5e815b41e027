"""One job of the ``adaptgrad`` app: skip, resume or run it, and record how it ended.

Example:
    >>> import tempfile
    >>> from adaptgrad.config import compose
    >>> from adaptgrad.run import run
    >>> cfg = compose(["data=toy", "model=minimal_rnn", "model.units=2", "rule=none", "trainer.epochs=2"])
    >>> result = run(cfg, tempfile.mkdtemp())
    >>> result["status"], result["epochs"], result["outcome"]
    ('ok', 2, 'ran')

Data flows one way: :func:`run` turns the config into plain objects once
(:func:`adaptgrad.config.prepare`), trains them (:func:`adaptgrad.train.train`) and writes the
job's files (:mod:`adaptgrad.recorder`); nothing downstream reads Hydra's config.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from adaptgrad.atomic import write_json, write_text
from adaptgrad.checkpoint import Checkpoints
from adaptgrad.config import INVOCATION_ENV, prepare, rule_name
from adaptgrad.recorder import git_commit, versions
from adaptgrad.results.markdown import markdown_table
from adaptgrad.tensorboard import run_name
from adaptgrad.train import train

log = logging.getLogger("adaptgrad")


def run(
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    *,
    rule_preset: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run one job into ``output_dir`` and return what was written to ``result.json``.

    Rerun into the same dir with the same resolved config, a job that completed is skipped, one
    that was interrupted resumes from its last checkpoint, and one that failed or diverged runs
    again from scratch. A dir that holds another config is left untouched and the job fails.
    Never raises for a failure of the job itself: the error (type, message, epoch) is recorded
    with status ``failed``, the history up to that point is kept, and the result is returned.
    """
    directory = Path(output_dir)
    config_text = OmegaConf.to_yaml(cfg, resolve=True)
    previous = _previous(directory)
    if previous is not None and previous["config"] != config_text:
        message = (
            f"output dir {directory} holds a run of a different config; choose another dir "
            f"(hydra.run.dir / hydra.sweep.dir) - nothing was overwritten"
        )
        log.error(message)
        return {"status": "failed", "outcome": "refused", "error": {"type": "ValueError", "message": message, "epoch": 0}}
    if previous is not None and previous["result"].get("status") == "ok":
        log.info("skipping %s: it already completed with this config", directory)
        _write_outcome(directory, "skipped", "ok")
        return {**previous["result"], "outcome": "skipped"}
    if previous is not None and previous["result"].get("status") in ("failed", "diverged"):
        Checkpoints(directory / "checkpoints").clear()
    started = time.perf_counter()
    base = {
        "run_id": directory.name,
        "versions": versions(),
        "git_commit": git_commit(Path.cwd()) or git_commit(Path(__file__).parent),
        "overrides": list(overrides or []),
        "rule": rule_name(cfg.rule, rule_preset, overrides or []),
    }
    write_text(directory / "config.yaml", config_text)
    write_json(directory / "result.json", {**base, "status": "running"})
    try:
        result = train(prepare(cfg, rule_preset), directory, tb_name=run_name(overrides or []))
    except Exception as error:  # noqa: BLE001 - the job fails, the sweep goes on
        epochs = _epochs_written(directory)
        log.error("job failed: %s: %s", type(error).__name__, error)
        result = {"status": "failed", "epochs": epochs, "error": {"type": type(error).__name__, "message": str(error), "epoch": epochs}}
    result = {**base, **result, "wall_time": time.perf_counter() - started}
    write_json(directory / "result.json", result)
    outcome = "resumed" if result.get("resumed_from") else "ran"
    _write_outcome(directory, outcome, result["status"])
    return {**result, "outcome": outcome}


def _previous(directory: Path) -> dict[str, Any] | None:
    """The config text and result of an earlier attempt in ``directory``, if there was one."""
    try:
        config = (directory / "config.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        result = json.loads((directory / "result.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        result = {}
    return {"config": config, "result": result}


def _write_outcome(directory: Path, outcome: str, status: str) -> None:
    """Record what this invocation did with the job, for the end-of-sweep report."""
    write_json(directory / "outcome.json", {"invocation": os.environ.get(INVOCATION_ENV), "outcome": outcome, "status": status})


def _epochs_written(directory: Path) -> int:
    try:
        return len(pd.read_csv(directory / "history.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def summary_table(result: dict[str, Any], directory: Path) -> str:
    """A short Markdown table of a finished job, for the console: what ran (model, data, rule,
    layer), how it ended, its final metrics (last epoch) and where its files are."""
    try:
        config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    model, data = config.get("model") or {}, config.get("data") or {}
    rows = [
        ("model", f"{model.get('cell', '?')} ({model.get('units', '?')} units)"),
        ("data", str(data.get("_target_", "?")).rsplit(".", 1)[-1]),
        ("rule", result.get("rule", "?")),
        ("layer", ", ".join(result.get("layers") or [config.get("layer") or "?"])),
        ("status", result["status"]),
        ("epochs", result.get("epochs", 0)),
    ]
    rows += [(k, f"{v:.4g}") for k, v in result.get("final", {}).items()]
    rows += [("wall time (s)", f"{result.get('wall_time', 0.0):.1f}"), ("files", str(directory))]
    if result.get("error"):
        rows.append(("error", f"{result['error']['type']}: {result['error']['message']}"))
    return markdown_table(pd.DataFrame(rows, columns=["", "value"]))
