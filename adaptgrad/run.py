"""One job: config -> plain objects -> ``model.fit`` with a watch and ``Adapt`` -> job files.

Example:
    >>> import tempfile
    >>> from omegaconf import OmegaConf
    >>> from adaptgrad.run import compose, run
    >>> cfg = compose(["data=toy", "model=minimal_rnn", "model.units=2", "rule=none", "trainer.epochs=2"])
    >>> result = run(cfg, tempfile.mkdtemp())
    >>> result["status"], result["epochs"]
    ('ok', 2)

:func:`run` is what the ``adaptgrad`` Hydra app calls for each job; it turns the config into plain
objects once, at the top (:func:`prepare`), so nothing downstream reads Hydra's config.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adaptgrad.adapt import Adapt
from adaptgrad.checkpoint import Checkpoints
from adaptgrad.data import Dataset
from adaptgrad.layers import find_layer
from adaptgrad.models import LAYER_NAMES, build_model
from adaptgrad.recorder import git_commit, versions, write_frame, write_json, write_text
from adaptgrad.rules.base import REGISTRY, AdaptationRule
from adaptgrad.capture import watch

log = logging.getLogger("adaptgrad")

CONF_DIR = next(
    (p for p in (Path(__file__).parent / "conf", Path(__file__).parent.parent / "conf") if p.is_dir()),
    Path(__file__).parent / "conf",
)
"""The packaged config folder (``adaptgrad/conf`` when installed, ``conf/`` in a checkout)."""
EXPERIMENTS_DIR = next(
    (p for p in (Path(__file__).parent / "experiments", Path(__file__).parent.parent / "experiments") if p.is_dir()),
    Path(__file__).parent / "experiments",
)
"""The ``experiment=NAME`` presets (``adaptgrad/experiments`` installed, ``experiments/`` in a checkout)."""


@dataclasses.dataclass(frozen=True)
class Trainer:
    """How ``model.fit`` runs; validated on construction."""

    epochs: int = 20
    batch_size: int = 32
    steps_per_execution: int = 1
    jit_compile: bool = False
    shuffle: bool = True
    distribution: str = "none"
    cpu_devices: int | None = None
    mixed_precision: bool = False
    checkpoint: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "steps_per_execution"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"trainer.{name}={value!r} must be an integer >= 1")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"trainer.distribution={self.distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
        if self.cpu_devices is not None and (not isinstance(self.cpu_devices, int) or self.cpu_devices < 1):
            raise ValueError(f"trainer.cpu_devices={self.cpu_devices!r} must be null or an integer >= 1")

    def strategy(self) -> tf.distribute.Strategy:
        """The distribution strategy, after splitting the CPU into ``cpu_devices`` logical ones
        (which ``mirrored`` then runs on instead of the GPUs)."""
        if self.cpu_devices is not None:
            split_cpu(self.cpu_devices)
        if self.distribution == "mirrored":
            devices = tuple(f"/cpu:{i}" for i in range(self.cpu_devices)) if self.cpu_devices else None
            return mirrored_strategy(devices)
        return tf.distribute.get_strategy()


@functools.cache
def mirrored_strategy(devices: tuple[str, ...] | None = None) -> tf.distribute.MirroredStrategy:
    """One ``MirroredStrategy`` per device set and process. A second strategy would reuse the
    collective-op keys of the first, and TensorFlow rejects that once tensor shapes differ
    (joblib runs many jobs in one worker process)."""
    return tf.distribute.MirroredStrategy(list(devices) if devices else None)


DISTRIBUTIONS = ("none", "mirrored")


def split_cpu(devices: int) -> None:
    """Expose the CPU as ``devices`` logical devices (to run MirroredStrategy without GPUs).

    Raises:
        RuntimeError: TensorFlow has already started with fewer logical CPUs.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) < devices:
            raise RuntimeError(
                f"trainer.cpu_devices={devices} must be set before TensorFlow starts in this process"
            ) from error


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


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The config the app would run with these command-line overrides, without launching it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from adaptgrad.app import register_experiments

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
    seed = int(cfg.seed)
    keras.backend.clear_session()  # joblib reuses worker processes: no state from a previous job
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
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
        trainer=Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True)),
    )


def _cause(error: BaseException) -> str:
    """The innermost message of a chain (Hydra wraps errors raised while instantiating)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"


class JobFiles(keras.callbacks.Callback):
    """Writes ``history.csv``, ``units.parquet``, ``actions.csv`` after every epoch and logs progress;
    stops training when the loss is NaN/inf (the job is then ``diverged``)."""

    def __init__(self, directory: Path, adapt: Adapt, epochs: int) -> None:
        super().__init__()
        self.directory = directory
        self.adapt = adapt
        self.epochs = epochs
        self.rows: list[dict[str, float]] = []
        self.diverged_at: int | None = None
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows.append(row)
        self.flush()
        shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "active_units"))
        log.info(
            "epoch %d/%d  %s  active=%d/%d  (%.2fs)",
            epoch + 1, self.epochs, shown, row.get("active_units", 0), self.adapt.units.size,
            time.perf_counter() - self._started,
        )
        if not math.isfinite(row.get("loss", 0.0)):
            self.diverged_at = epoch
            self.model.stop_training = True

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def flush(self) -> None:
        write_frame(self.directory / "history.csv", self.history())
        write_frame(self.directory / "units.parquet", self.adapt.units_frame())
        write_frame(self.directory / "actions.csv", self.adapt.actions_frame())


def train(job: Job, directory: Path) -> dict[str, Any]:
    """Build the model, attach watch and rules, train epoch by epoch with a checkpoint after each,
    resuming from the newest checkpoint in ``directory``; returns the result."""
    data = job.dataset
    strategy = job.trainer.strategy()
    previous_policy = keras.mixed_precision.global_policy()
    if job.trainer.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = build_model(
                job.model["cell"],
                units=job.model["units"],
                input_shape=data.input_shape,
                outputs=data.outputs,
                task=data.task,
                return_sequences=job.model.get("return_sequences", False),
                head_units=job.model.get("head_units"),
            )
            layer = find_layer(model, job.layer or LAYER_NAMES[job.model["cell"]])
            if data.task == "classification":
                loss, metrics = keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
            else:
                loss, metrics = "mse", ["mae"]
            model.compile(
                optimizer=job.optimizer(),
                loss=loss,
                metrics=metrics,
                steps_per_execution=job.trainer.steps_per_execution,
                jit_compile=job.trainer.jit_compile,
            )
            adapt = Adapt(watch(model, layer, through_time=job.through_time), [job.rule], seed=job.seed)
        return _fit(job, model, adapt, directory)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _fit(job: Job, model: keras.Model, adapt: Adapt, directory: Path) -> dict[str, Any]:
    data, trainer = job.dataset, job.trainer
    files = JobFiles(directory, adapt, trainer.epochs)
    checkpoints = Checkpoints(directory / "checkpoints")
    start = 0
    saved = checkpoints.latest() if trainer.checkpoint else None
    if saved is not None:
        start = saved[0] + 1
        _restore(saved[1], model, adapt, files)
        log.info("resuming after epoch %d from %s", start, checkpoints.directory)
    for epoch in range(start, trainer.epochs):
        order = epoch_order(job.seed, epoch, len(data.x_train), trainer.shuffle)
        model.fit(
            data.x_train[order],
            data.y_train[order],
            validation_data=(data.x_val, data.y_val),
            initial_epoch=epoch,
            epochs=epoch + 1,
            batch_size=trainer.batch_size,
            shuffle=False,
            callbacks=[adapt, files],
            verbose=0,
        )
        if files.diverged_at is not None:
            break
        if trainer.checkpoint:
            checkpoints.save(epoch, _state(model, adapt, files))
    history = files.history()
    final = {k: float(v) for k, v in history.iloc[-1].items() if k != "epoch"} if len(history) else {}
    result: dict[str, Any] = {
        "status": "ok",
        "final": final,
        "epochs": len(history),
        "resumed_from": start or None,
        "replicas": model.distribute_strategy.num_replicas_in_sync,
    }
    if files.diverged_at is not None:
        result.update(status="diverged", error={"type": "Divergence", "message": "loss is NaN or inf", "epoch": files.diverged_at})
    return result


def epoch_order(seed: int, epoch: int, size: int, shuffle: bool) -> np.ndarray:
    """The order of the training examples in ``epoch``: a function of (seed, epoch) only, so a
    resumed job sees exactly the batches an uninterrupted one would."""
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([seed, epoch]).permutation(size)


def _state(model: keras.Model, adapt: Adapt, files: JobFiles) -> dict[str, Any]:
    return {
        "weights": model.get_weights(),
        "optimizer": [np.array(v.numpy()) for v in model.optimizer.variables],
        "adapt": adapt.get_state(),
        "history": list(files.rows),
    }


def _restore(state: dict[str, Any], model: keras.Model, adapt: Adapt, files: JobFiles) -> None:
    model.set_weights(state["weights"])
    model.optimizer.build(model.trainable_variables)
    variables = model.optimizer.variables
    if len(variables) != len(state["optimizer"]):
        raise ValueError(f"checkpoint holds {len(state['optimizer'])} optimizer variables, the optimizer has {len(variables)}")
    for variable, value in zip(variables, state["optimizer"]):
        variable.assign(value)
    adapt.set_state(state["adapt"])
    files.rows = list(state["history"])


INVOCATION_ENV = "ADAPTGRAD_INVOCATION"
"""Environment variable naming the current ``adaptgrad`` invocation, set by the sweep report."""


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
    }
    write_text(directory / "config.yaml", config_text)
    write_json(directory / "result.json", {**base, "status": "running"})
    try:
        result = train(prepare(cfg, rule_preset), directory)
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
    """A short Markdown table of a finished job, for the console."""
    rows = [("status", result["status"]), ("epochs", result.get("epochs", 0))]
    rows += [(k, f"{v:.4g}") for k, v in result.get("final", {}).items()]
    rows += [("wall time (s)", f"{result['wall_time']:.1f}"), ("files", str(directory))]
    if result.get("error"):
        rows.append(("error", f"{result['error']['type']}: {result['error']['message']}"))
    width = max(len(str(k)) for k, _ in rows)
    lines = [f"| {'':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    return "\n".join(lines + [f"| {str(k):{width}} | {v} |" for k, v in rows])
