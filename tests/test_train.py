"""Training one job: what a resumed or failing job leaves in its files."""

from __future__ import annotations

import json
import shutil
import textwrap
import time

import numpy as np
import pandas as pd
from conftest import TINY, tensorboard_steps

from adaptgrad.checkpoint import Checkpoints, config_digest
from adaptgrad.composition import compose
from adaptgrad.run import run
from adaptgrad.tensorboard import run_name
from adaptgrad.train import batches, epoch_order

FAILING_RULE = """
import dataclasses
from adaptgrad import AdaptationRule

@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class FailsAt(AdaptationRule):
    at: int = 1

    def apply(self, stats, units, epoch):
        units.gate([0])  # undone: the rule raises
        if epoch == self.at:
            raise RuntimeError("the rule fails on purpose")
"""


def interrupted(directory, epoch: int) -> None:
    """``directory`` as a job killed while writing the checkpoint of ``epoch`` leaves it."""
    (directory / "checkpoints" / f"epoch-{epoch:04d}.ckpt").unlink(missing_ok=True)
    result = json.loads((directory / "result.json").read_text())
    (directory / "result.json").write_text(
        json.dumps({k: result[k] for k in ("run_id", "rule", "overrides")} | {"status": "running"})
    )


def test_a_rule_that_raises_leaves_its_failed_action_and_the_epoch_it_trained(tmp_path, monkeypatch):
    (tmp_path / "failing_rules.py").write_text(FAILING_RULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for at in (0, 1):
        out = tmp_path / f"at{at}"
        result = run(compose([*TINY, "rule=none", "rule._target_=failing_rules.FailsAt", f"+rule.at={at}"]), out)
        assert result["status"] == "failed" and result["error"]["epoch"] == at and result["epochs"] == at + 1
        history = pd.read_csv(out / "history.csv")
        assert history.epoch.tolist() == list(range(at + 1)) and history.active_units.tolist() == ([4] if at == 0 else [3, 3])
        actions = pd.read_csv(out / "actions.csv")
        assert actions.query("action == 'failed'")[["epoch", "unit"]].values.tolist() == [[at, -1]]
        assert actions.query("action == 'gate'").epoch.tolist() == list(range(at))


def test_a_resumed_job_writes_each_epoch_once_to_tensorboard_and_counts_all_its_time(tmp_path):
    overrides = [*TINY, "trainer.epochs=3"]
    assert run(compose(overrides), tmp_path, overrides=overrides)["status"] == "ok"
    interrupted(tmp_path, 2)  # killed after epoch 2's events, while saving its checkpoint
    digest = config_digest((tmp_path / "config.yaml").read_text())
    checkpoints = Checkpoints(tmp_path / "checkpoints", digest=digest)
    epoch, state = checkpoints.latest()
    assert epoch == 1 and state["wall_time"] > 0  # the first attempt's time up to that checkpoint
    earlier = 1000.0  # as if the first attempt had taken long: far more than any attempt here
    checkpoints.save(epoch, {**state, "wall_time": earlier})
    started = time.perf_counter()
    resumed = run(compose(overrides), tmp_path, overrides=overrides)
    this_attempt = time.perf_counter() - started
    assert resumed["status"] == "ok" and resumed["resumed_from"] == 2
    assert [step for tag, step in tensorboard_steps(tmp_path / "tb" / run_name(overrides)) if tag == "loss"] == [0, 1, 2]
    assert earlier < resumed["wall_time"] <= earlier + this_attempt


def test_an_ok_job_whose_table_is_gone_writes_it_again_from_its_checkpoint(tmp_path):
    result = run(compose(TINY), tmp_path)
    assert result["status"] == "ok"
    last = pd.read_csv(tmp_path / "history.csv").iloc[-1]  # the final metrics are the last epoch's
    assert result["final"] == {k: float(v) for k, v in last.items() if k != "epoch"} and result["epochs"] == 2
    before = {name: (tmp_path / name).read_bytes() for name in ("history.csv", "units.parquet", "actions.csv")}
    (tmp_path / "history.csv").unlink()
    (tmp_path / "units.parquet").write_bytes(b"")
    (tmp_path / "model.keras").unlink()
    again = run(compose(TINY), tmp_path)
    assert again["outcome"] == "resumed" and again["resumed_from"] == 2 and again["epochs"] == 2
    assert {name: (tmp_path / name).read_bytes() for name in before} == before and (tmp_path / "model.keras").is_file()


def test_a_model_file_that_cannot_be_written_fails_the_job_and_a_rerun_writes_it(tmp_path):
    assert run(compose(TINY), tmp_path)["status"] == "ok"
    interrupted(tmp_path, 99)  # killed before model.keras was written
    (tmp_path / "model.keras").unlink()
    (tmp_path / "model.keras").mkdir()  # the rename over it fails, an OSError as on a full disk
    (tmp_path / "model.keras" / "x").touch()
    result = run(compose(TINY), tmp_path)
    assert result["status"] == "failed" and result["error"]["type"] == "OSError"
    assert "cannot write" in result["error"]["message"] and "rerun the same command" in result["error"]["message"]
    shutil.rmtree(tmp_path / "model.keras")
    assert run(compose(TINY), tmp_path)["status"] == "ok" and (tmp_path / "model.keras").is_file()


def test_a_user_model_module_that_works_at_import_changes_no_job(tmp_path, monkeypatch):
    (tmp_path / "busy_models.py").write_text(
        textwrap.dedent(
            """
            import keras
            from adaptgrad.models import build_model

            PROBE = keras.random.normal((3,))  # work at import: draws from the global seed

            def gru(input_shape, outputs, task, units=4):
                return build_model("gru", units=units, input_shape=input_shape, outputs=outputs, task=task)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [*TINY, "model._target_=busy_models.gru", "rule=none"]
    for name in ("first", "second"):  # the first job of the process imports the module, the second does not
        assert run(compose(overrides), tmp_path / name, overrides=overrides)["status"] == "ok"
    assert (tmp_path / "first" / "history.csv").read_bytes() == (tmp_path / "second" / "history.csv").read_bytes()


def test_a_rule_that_needs_the_output_layers_consumer_says_what_to_do_on_the_command_line(tmp_path):
    result = run(
        compose([*TINY, "layer=head", "through_time=false", "rule=dormant_reset"]), tmp_path, rule_preset="dormant_reset"
    )
    message = result["error"]["message"]
    assert result["status"] == "failed" and result["epochs"] == 0 and "next_layer" not in message
    assert message.endswith(
        "adapt another layer (layer=NAME) or choose a rule that edits no outgoing weights (e.g. rule=taylor_prune)"
    )


def test_batches_hold_every_example_once_in_order_the_last_batch_smaller():
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    y = np.arange(7, dtype=np.float32)
    got = [(xb.numpy(), yb.numpy()) for xb, yb in batches(x, y, 3)]
    assert [len(yb) for _, yb in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in got]), y)


def test_each_epoch_has_its_own_order_that_depends_only_on_seed_and_epoch():
    orders = [epoch_order(3, epoch, 50, shuffle=True) for epoch in range(4)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(50))  # a permutation
    assert len({tuple(order) for order in orders}) == 4  # a new order every epoch
    np.testing.assert_array_equal(epoch_order(3, 2, 50, shuffle=True), orders[2])  # again after a resume
    assert not np.array_equal(epoch_order(4, 2, 50, shuffle=True), orders[2])  # another seed, another order
    np.testing.assert_array_equal(epoch_order(3, 2, 50, shuffle=False), np.arange(50))
