"""One job of the ``adaptgrad`` app: skip, resume or run it, and record how it ended.

Example:
    >>> import tempfile
    >>> from adaptgrad.composition import compose
    >>> from adaptgrad.run import run
    >>> cfg = compose(["data=toy", "model=minimal_rnn", "model.units=2", "rule=none", "trainer.epochs=2"])
    >>> result = run(cfg, tempfile.mkdtemp())
    >>> result["status"], result["epochs"], result["outcome"]
    ('ok', 2, 'ran')

Data flows one way: :func:`run` turns the config into plain objects once
(:func:`adaptgrad.config.prepare`), trains them (:func:`adaptgrad.train.train`) and writes the
job's files (:mod:`adaptgrad.recorder`); nothing downstream reads Hydra's config. TensorFlow is
imported only when the job trains: a completed job is skipped without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from adaptgrad import jobdir
from adaptgrad.atomic import write_json, write_text
from adaptgrad.checkpoint import Checkpoints, config_digest
from adaptgrad.composition import given_keys
from adaptgrad.config import job_config, rule_name
from adaptgrad.models import ANSI
from adaptgrad.results.markdown import markdown_table

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
    again from scratch. A dir that holds another config, or that another run is writing to, is
    left untouched and the job is refused (status ``failed``, outcome ``refused``). Never raises
    for a failure of the job itself, ``sys.exit`` in it included: the error (type, message,
    epoch) is recorded with status ``failed``, the history up to that point is kept, and the
    result is returned.
    """
    directory = Path(output_dir)
    cfg = job_config(cfg, given_keys(overrides or []), rule_preset)
    config_text = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        with jobdir.lock(directory):
            return _run(cfg, directory, config_text, rule_preset, list(overrides or []))
    except jobdir.Busy as error:
        return _refused(str(error))


def _refused(message: str) -> dict[str, Any]:
    log.error(message)
    return {
        "status": "failed",
        "outcome": "refused",
        "wall_time": 0.0,
        "error": {"type": "ValueError", "message": message, "epoch": 0},
    }


def _run(cfg: DictConfig, directory: Path, config_text: str, rule_preset: str | None, overrides: list[str]) -> dict[str, Any]:
    decision = jobdir.plan(directory, config_text)
    if decision == "refuse":
        return _refused(jobdir.refusal(directory))
    if decision == "skip":
        log.info("skipping %s: it already completed with this config", directory)
        return {**jobdir.previous(directory)[1], "outcome": "skipped"}
    found = jobdir.previous(directory)
    if found is not None and found[1].get("status") in ("failed", "diverged"):
        Checkpoints(directory / jobdir.CHECKPOINTS, digest=config_digest(config_text)).clear()  # from scratch
    start_tensorflow()
    from adaptgrad.config import prepare  # TensorFlow loads from here on
    from adaptgrad.recorder import git_commit, versions
    from adaptgrad.tensorboard import run_name
    from adaptgrad.train import train

    started = time.perf_counter()
    base = {
        "run_id": directory.name,
        "versions": versions(),
        "git_commit": git_commit(Path.cwd()) or git_commit(Path(__file__).parent),
        "overrides": overrides,
        "rule": rule_name(cfg.rule, rule_preset, given_keys(overrides)),
    }
    try:
        write_text(directory / jobdir.CONFIG, config_text)
        write_json(directory / jobdir.RESULT, {**base, "status": "running"})
        result = train(prepare(cfg, rule_preset), directory, tb_name=run_name(overrides))
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the job fails, the sweep goes on
        epochs = _epochs_written(directory)
        kind = type(error).__name__
        message = ANSI.sub("", str(error)) if not isinstance(error, SystemExit) else f"the job called sys.exit({error.code!r})"
        log.error("job failed: %s: %s", kind, message)
        epoch = getattr(error, "adaptgrad_epoch", epochs)  # set by train: the epoch whose fit or rules failed
        result = {"status": "failed", "epochs": epochs, "error": {"type": kind, "message": message, "epoch": epoch}}
    earlier = result.pop("resumed_wall_time", 0.0)  # spent by the attempts before this one
    result = {**base, **result, "wall_time": earlier + time.perf_counter() - started}
    outcome = "resumed" if result.get("resumed_from") else "ran"
    try:
        write_json(directory / jobdir.RESULT, result)
    except OSError as error:
        log.error("cannot record the job's end in %s: %s", directory, error)
        result = {
            **result,
            "status": "failed",
            "error": {"type": type(error).__name__, "message": str(error), "epoch": result.get("epochs", 0)},
        }
    return {**result, "outcome": outcome}


NATIVE_NOISE = re.compile(
    r"absl::InitializeLog|cudart_stub|cuInit|cuda_(platform|dnn|fft|blas)|Unable to register cu|computation_placer|"
    r"oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS|This TensorFlow binary is optimized|To enable the following instructions"
)
"""TensorFlow's native start-up lines on a machine without a GPU (printed whatever TF_CPP_MIN_LOG_LEVEL says)."""


def start_tensorflow() -> None:
    """Import TensorFlow and find the devices, without its native start-up lines (:data:`NATIVE_NOISE`);
    any other line it prints passes through. Does nothing when TensorFlow runs already."""
    if "tensorflow" in sys.modules:
        return
    with native_lines_filtered(NATIVE_NOISE):
        import tensorflow as tf

        tf.config.list_physical_devices()  # where the CUDA probe prints


@contextlib.contextmanager
def native_lines_filtered(noise: re.Pattern[str]) -> Iterator[None]:
    """Hold back what native code writes to the process's stderr (file descriptor 2) in the block,
    then write the lines that do not match ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True) if not noise.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def _epochs_written(directory: Path) -> int:
    try:
        return len(pd.read_csv(directory / jobdir.HISTORY))
    except (OSError, pd.errors.EmptyDataError):
        return 0


def summary_table(result: dict[str, Any], directory: Path) -> str:
    """A short Markdown table of a finished job, for the console: what ran (model, data, rule,
    layer), how it ended, its final metrics (last epoch) and where its files are."""
    try:
        config = yaml.safe_load((directory / jobdir.CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        config = {}
    model, data = config.get("model") or {}, config.get("data") or {}
    layers = result.get("layers") or config.get("layer") or "?"
    rows = [
        ("model", model_label(model)),
        ("data", str(data.get("_target_", "?")).rsplit(".", 1)[-1]),
        ("rule", result.get("rule", "?")),
        ("layer", layers if isinstance(layers, str) else ", ".join(map(str, layers))),
        ("status", result["status"]),
        ("epochs", result.get("epochs", 0)),
    ]
    rows += [(k, f"{v:.4g}" if isinstance(v, (int, float)) else str(v)) for k, v in result.get("final", {}).items()]
    rows += [("wall time (s)", f"{result.get('wall_time', 0.0):.1f}"), ("files", str(directory))]
    if result.get("error"):
        rows.append(("error", f"{result['error']['type']}: {result['error']['message']}"))
    return markdown_table(pd.DataFrame(rows, columns=["", "value"]))


def model_label(model: dict[str, Any]) -> str:
    """How a model config is shown: ``gru (32 units)``, or a ``_target_`` function's name and keys.

    Example:
        >>> model_label({"cell": "gru", "units": 32}), model_label({"_target_": "my_models.stacked", "units": 8})
        ('gru (32 units)', 'my_models.stacked (units=8)')
    """
    if model.get("_target_"):
        keys = ", ".join(f"{k}={v}" for k, v in model.items() if k != "_target_")
        return f"{model['_target_']} ({keys})" if keys else str(model["_target_"])
    return f"{model.get('cell', '?')} ({model.get('units', '?')} units)"
