"""Training one job: build the model, attach the watch and rules, fit epoch by epoch.

Example:
    >>> import tempfile, pathlib
    >>> from adaptgrad.composition import compose
    >>> from adaptgrad.config import prepare
    >>> from adaptgrad.train import train
    >>> result = train(prepare(compose(["data=toy", "rule=none", "trainer.epochs=2"])), pathlib.Path(tempfile.mkdtemp()))
    >>> result["status"], result["epochs"], result["replicas"]
    ('ok', 2, 1)

Each epoch is one ``model.fit`` call on the training set in an order that depends only on
(seed, epoch), followed by a checkpoint; so a job resumed from its last checkpoint sees exactly
the batches, weights, optimizer state (its step count included), gates, rule state and the
statistics a step-clock rule has gathered since it last acted, of an uninterrupted run: a job
killed in the middle of an epoch, rules acting in it or not, replays that epoch identically.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from adaptgrad import _keras
from adaptgrad.adapt import Adapt
from adaptgrad.atomic import write_atomic
from adaptgrad.capture import GradientWatch, watch
from adaptgrad.checkpoint import Checkpoints
from adaptgrad.config import Job
from adaptgrad.jobdir import CHECKPOINTS, MODEL, TENSORBOARD
from adaptgrad.layers import find_layer
from adaptgrad.models import make_model, recurrent_layers
from adaptgrad.recorder import JobFiles
from adaptgrad.rules.base import AdaptationRule
from adaptgrad.rules.fold import LayerKind
from adaptgrad.runtime import strategy_for
from adaptgrad.tensorboard import TensorBoardLog, keep_before

log = logging.getLogger("adaptgrad")


def train(job: Job, directory: Path, *, tb_name: str = "default") -> dict[str, Any]:
    """Build the model, attach a watch and an Adapt (with its own instance of the rule) to each
    adapted layer, train epoch by epoch with a checkpoint after each, resuming from the newest
    checkpoint of the same config in ``directory``; write the final model as ``model.keras``;
    returns the result. TensorBoard events go to ``directory/tb/<tb_name>``.

    ``result["resumed_wall_time"]``: the seconds earlier attempts spent up to the checkpoint this
    one resumed from (0 for a fresh start), which the runner adds to this attempt's wall time.

    Raises:
        OSError: ``model.keras`` cannot be written (disk full...): the job has not completed.
    """
    started = time.perf_counter()
    data = job.dataset
    strategy = strategy_for(job.trainer.distribution, job.trainer.cpu_devices)
    previous_policy = keras.mixed_precision.global_policy()
    if job.trainer.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = make_model(job.model, input_shape=data.input_shape, outputs=data.outputs, task=data.task)
            names = job.layers or tuple(recurrent_layers(model))
            if not names:
                raise ValueError(
                    f"model {model.name!r} has no recurrent layer; name the layer(s) to adapt with layer=NAME or layer=[A,B]"
                )
            layers = [find_layer(model, name) for name in names]
            if data.task == "classification":
                loss, metrics = keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
            else:
                loss, metrics = "mse", ["mae"]
            model.compile(
                optimizer=job.make_optimizer(),
                loss=loss,
                metrics=metrics,
                steps_per_execution=job.trainer.steps_per_execution,
                jit_compile=job.trainer.jit_compile,
            )
            adapts = [_adapt(model, layer, job, seed=job.seed + 1000 * i) for i, layer in enumerate(layers)]
        result = {**_fit(job, model, adapts, directory, tb_name, started), "layers": [adapt.watch.layer.name for adapt in adapts]}
        return {**result, "model_saved": _save_model(model, adapts, directory)}
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _adapt(model: keras.Model, layer: keras.layers.Layer, job: Job, *, seed: int) -> Adapt:
    """The layer's Adapt with its own instance of the rule. A rule that needs the layer's consumer
    where the model has none that adaptgrad finds gets a message for the command line, which
    cannot pass ``next_layer=``."""
    try:
        measured = (job.dataset.x_train, job.dataset.y_train) if job.oracle else None
        return Adapt(
            _watch(model, layer, job), [copy.deepcopy(job.rule)], seed=seed, oracle=measured, oracle_every=job.oracle or 1
        )
    except ValueError as error:
        cause, hint, _ = str(error).partition("; pass next_layer=")
        if not hint:
            raise
        raise ValueError(
            f"{cause}: no layer of the model that adaptgrad finds takes {layer.name!r}'s output (the output layer has none); "
            f"adapt another layer (layer=NAME) or choose a rule that edits no outgoing weights (e.g. rule=taylor_prune)"
        ) from error


def _watch(model: keras.Model, layer: keras.layers.Layer, job: Job) -> GradientWatch:
    """A watch on ``layer`` in the job's capture mode, capturing what ``stats`` asks for plus what
    the rule reads."""
    fields = None if job.stats is None else job.stats | frozenset(job.rule.reads)
    return watch(model, layer, through_time=capture_mode(job.rule, layer, job.through_time), stats=fields)


def capture_mode(rule: AdaptationRule, layer: keras.layers.Layer, through_time: bool | None) -> bool:
    """``through_time`` if set, else (``auto``) the mode whose statistics describe the rule's edit
    (:meth:`~adaptgrad.AdaptationRule.through_time`), and through time on a recurrent layer when
    either describes it (so every arm of a sweep captures alike)."""
    if through_time is not None:
        return through_time
    kind = LayerKind.of(layer)
    wanted = rule.through_time(kind)
    return kind.recurrent if wanted is None else wanted


def _save_model(model: keras.Model, adapts: list[Adapt], directory: Path) -> bool:
    """``model.keras``: the adapted model without the watches, written atomically; whether it was.
    A model Keras cannot save is logged, not a failure of the job (its tables are complete); a
    file that cannot be written (disk full) is: a rerun resumes and writes it."""
    for adapt in adapts:
        adapt.watch.remove()
    try:
        write_atomic(directory / MODEL, lambda temp: model.save(temp))
    except OSError as error:
        raise OSError(f"cannot write {directory / MODEL}: {error}; rerun the same command to write it") from error
    except Exception as error:  # noqa: BLE001
        log.warning("%s not written: %s: %s", MODEL, type(error).__name__, error)
        return False
    return True


def _fit(job: Job, model: keras.Model, adapts: list[Adapt], directory: Path, tb_name: str, started: float) -> dict[str, Any]:
    data, trainer = job.dataset, job.trainer
    files = JobFiles(directory, adapts, trainer.epochs)
    checkpoints = Checkpoints(directory / CHECKPOINTS, digest=job.digest)
    start, earlier = 0, 0.0
    saved = checkpoints.latest() if trainer.checkpoint else None
    if saved is not None:
        start, earlier = saved[0] + 1, saved[1].get("wall_time", 0.0)
        _restore(saved[1], model, adapts, files)
        files.flush()  # the tables as of the checkpoint, also when no epoch is left to train
        log.info("resuming at epoch %d from %s", start, checkpoints.directory)
    keep_before(directory / TENSORBOARD / tb_name, start)  # an earlier attempt's later epochs are trained again
    events = TensorBoardLog(directory / TENSORBOARD / tb_name, adapts)
    validation = batches(data.x_val, data.y_val, trainer.batch_size)
    _keras.build_for_fit(model, (data.x_train[:1], data.y_train[:1]))  # one trace of the train step, not two
    for epoch in range(start, trainer.epochs):
        order = epoch_order(job.seed, epoch, len(data.x_train), trainer.shuffle)
        try:
            model.fit(
                batches(data.x_train[order], data.y_train[order], trainer.batch_size),
                validation_data=validation,
                initial_epoch=epoch,
                epochs=epoch + 1,
                shuffle=False,  # the order is epoch_order's
                callbacks=[files.logs, *adapts, files, events],
                verbose=0,
            )
        except Exception as error:
            files.record_failed_epoch(epoch)  # a rule raised: the epoch it trained and its failed action
            error.adaptgrad_epoch = epoch  # type: ignore[attr-defined] - the runner records where the job failed
            raise
        if files.diverged_at is not None:
            break
        if trainer.checkpoint:
            checkpoints.save(epoch, {**_state(model, adapts, files), "wall_time": earlier + time.perf_counter() - started})
    history = files.history()
    final = {k: float(v) for k, v in history.iloc[-1].items() if k != "epoch"} if len(history) else {}
    result: dict[str, Any] = {
        "status": "ok",
        "final": final,
        "epochs": len(history),
        "resumed_from": start or None,
        "resumed_wall_time": earlier,
        "replicas": model.distribute_strategy.num_replicas_in_sync,
    }
    if files.diverged_at is not None:
        first, *rest = files.nonfinite
        message = f"{first} is NaN or inf" + (f" (and {', '.join(rest)})" if rest else "")
        result.update(status="diverged", error={"type": "Divergence", "message": message, "epoch": files.diverged_at})
    return result


def batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """``(x, y)`` in order, in batches of ``batch_size`` (the last one smaller), without tf.data's
    autotuner.

    Example:
        >>> import numpy as np
        >>> from adaptgrad.train import batches
        >>> data = batches(np.zeros((5, 3, 2), np.float32), np.zeros((5, 1), np.float32), 2)
        >>> [int(x.shape[0]) for x, y in data]
        [2, 2, 1]

    The autotuner is off because its background thread makes every ``fit`` call that ends before
    the thread's next wake-up wait for it (up to ~0.3 s per call on a 2-core machine; measured),
    and the runner calls ``fit`` once per epoch. Reading slices of arrays in memory needs no
    tuning."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).with_options(options)


def epoch_order(seed: int, epoch: int, size: int, shuffle: bool) -> np.ndarray:
    """The order of the training examples in ``epoch``: a function of (seed, epoch) only, so a
    resumed job sees exactly the batches an uninterrupted one would."""
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([seed, epoch]).permutation(size)


def _state(model: keras.Model, adapts: list[Adapt], files: JobFiles) -> dict[str, Any]:
    return {
        "weights": model.get_weights(),
        "optimizer": [np.array(v.numpy()) for v in model.optimizer.variables],
        "adapt": [adapt.get_state() for adapt in adapts],
        "history": list(files.rows),
    }


def _restore(state: dict[str, Any], model: keras.Model, adapts: list[Adapt], files: JobFiles) -> None:
    model.set_weights(state["weights"])
    model.optimizer.build(model.trainable_variables)
    variables = model.optimizer.variables
    if len(variables) != len(state["optimizer"]):
        raise ValueError(f"checkpoint holds {len(state['optimizer'])} optimizer variables, the optimizer has {len(variables)}")
    for variable, value in zip(variables, state["optimizer"]):
        variable.assign(value)
    for adapt, adapt_state in zip(adapts, state["adapt"], strict=True):
        adapt.set_state(adapt_state)
    files.rows = list(state["history"])
