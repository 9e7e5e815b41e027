"""Reliability: identical reruns, exact resume after SIGKILL, failure-isolated sweeps that resume."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adaptgrad.checkpoint import Checkpoints
from adaptgrad.config import compose
from adaptgrad.results import collect
from adaptgrad.run import run

from test_app import cli

TABLES = ("history.csv", "units.parquet", "actions.csv")
# a small real task where the rule acts every epoch (re-initialising units draws random weights)
JOB = ["data=adding", "data.length=12", "data.samples=256", "model=gru", "model.units=8", "rule=dormant_reset", "rule.tau=0.9", "trainer.epochs=4"]


def same_tables(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in TABLES)


def test_same_config_and_seed_give_identical_files_and_other_seeds_differ(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run(compose([*JOB, f"seed={seed}"]), tmp_path / name, rule_preset="dormant_reset")["status"] == "ok"
    assert same_tables(tmp_path / "a", tmp_path / "b")
    assert pd.read_csv(tmp_path / "a" / "actions.csv").action.eq("reinit").any()
    assert not (tmp_path / "a" / "history.csv").read_bytes() == (tmp_path / "c" / "history.csv").read_bytes()


@pytest.mark.slow
def test_sigkilled_job_resumes_to_identical_files(tmp_path):
    args = [*JOB, "trainer.epochs=6"]
    reference = cli(*args, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "adaptgrad", *args, f"hydra.run.dir={killed_dir}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed_dir / "checkpoints" / "epoch-0001.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "job ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed_dir / "result.json").read_text())["status"] == "running"

    resumed = cli(*args, f"hydra.run.dir={killed_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads((killed_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["resumed_from"] >= 2
    assert same_tables(tmp_path / "whole", killed_dir)


def test_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path):
    store = Checkpoints(tmp_path)
    store.save(0, {"epoch": 0})
    store.save(1, {"epoch": 1})
    store.save(2, {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.ckpt", "epoch-0002.ckpt"]
    newest = tmp_path / "epoch-0002.ckpt"
    newest.write_bytes(newest.read_bytes()[:-5])  # a torn write
    with pytest.warns(RuntimeWarning, match="ignoring corrupt checkpoint .*epoch-0002.ckpt: checksum mismatch"):
        assert store.latest() == (1, {"epoch": 1})
    (tmp_path / "epoch-0001.ckpt").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert store.latest() is None


def test_resume_after_a_corrupt_newest_checkpoint_still_gives_identical_files(tmp_path):
    args = [*JOB, "trainer.epochs=3"]
    assert run(compose(args), tmp_path / "whole")["status"] == "ok"
    # a job interrupted after epoch 1 whose newest checkpoint is torn: resumes from epoch 0's
    partial = tmp_path / "partial"
    assert run(compose([*JOB, "trainer.epochs=3"]), partial)["status"] == "ok"
    result = json.loads((partial / "result.json").read_text())
    (partial / "result.json").write_text(json.dumps({**result, "status": "running"}))
    newest = partial / "checkpoints" / "epoch-0002.ckpt"
    newest.write_bytes(b"torn")
    with pytest.warns(RuntimeWarning, match="corrupt checkpoint"):
        again = run(compose(args), partial)
    assert again["status"] == "ok" and again["resumed_from"] == 2
    assert same_tables(tmp_path / "whole", partial)


def test_rerun_into_a_dir_of_another_config_is_refused_and_nothing_is_lost(tmp_path):
    assert run(compose([*JOB, "trainer.epochs=1"]), tmp_path)["status"] == "ok"
    before = {name: (tmp_path / name).read_bytes() for name in (*TABLES, "config.yaml", "result.json")}
    result = run(compose([*JOB, "trainer.epochs=1", "seed=5"]), tmp_path)
    assert result["status"] == "failed" and "holds a run of a different config" in result["error"]["message"]
    assert before == {name: (tmp_path / name).read_bytes() for name in before}


RULES = """
import numpy as np
from adaptgrad import AdaptationRule

class Broken(AdaptationRule, name="broken"):
    def apply(self, stats, units, epoch):
        if epoch == 1:
            raise RuntimeError("this rule is broken on purpose")

class Exploding(AdaptationRule, name="exploding"):
    def apply(self, stats, units, epoch):
        units.scale(range(units.size), 1e30)
"""


@pytest.mark.slow
def test_sweep_with_a_failing_and_a_diverging_arm(tmp_path):
    (tmp_path / "my_rules.py").write_text(RULES)
    conf = tmp_path / "my_conf" / "rule"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("_target_: my_rules.Broken\n")
    (conf / "exploding.yaml").write_text("_target_: my_rules.Exploding\n")
    sweep = tmp_path / "sweep"
    args = [
        "-m", "rule=none,taylor_prune,dormant_reset,gain_rescale,broken,exploding", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "data=toy", "model.units=4", "trainer.epochs=3", "trainer.batch_size=1",
        f"hydra.sweep.dir={sweep}",
    ]
    first = cli(*args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert first.returncode == 1, first.stderr[-3000:]
    assert "6 ran, 0 resumed, 0 skipped (completed earlier), 2 did not complete" in first.stdout
    assert "failed: this rule is broken on purpose" in first.stderr and "diverged: loss is NaN or inf" in first.stderr

    runs = collect(sweep).runs.set_index("rule._target_")
    assert runs.status.value_counts().to_dict() == {"ok": 4, "failed": 1, "diverged": 1}
    assert runs.loc["my_rules.Broken", "error.type"] == "RuntimeError" and runs.loc["my_rules.Broken", "error.epoch"] == 1
    assert runs.loc["my_rules.Broken", "epochs"] == 1  # the history up to the failure is kept
    ok_files = {p: p.read_bytes() for p in sweep.rglob("*.csv") if json.loads((p.parent / "result.json").read_text())["status"] == "ok"}

    second = cli(*args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert second.returncode == 1
    assert "2 ran, 0 resumed, 4 skipped (completed earlier), 2 did not complete" in second.stdout
    assert all(p.read_bytes() == content for p, content in ok_files.items())


def test_distribution_and_mixed_precision_match_single_device_float32(tmp_path):
    # one batch per epoch (102 training examples, batch 128): every statistic is compared at the
    # same weights. Afterwards float16 trajectories drift (and dynamic loss scaling skips steps
    # whose weight gradients overflow), so mixed precision is compared on epoch 0 only.
    job = ["data=adding", "data.length=10", "data.samples=128", "model=lstm", "model.units=6", "optimizer=sgd",
           "rule=taylor_prune", "rule.fraction=0.2", "trainer.epochs=2", "trainer.batch_size=128", "trainer.shuffle=false"]
    runs = {
        "single": job,
        "mirrored": [*job, "trainer.distribution=mirrored", "trainer.cpu_devices=2"],
        "mixed": [*job, "trainer.mixed_precision=true"],
    }
    replicas = {name: run(compose(overrides), tmp_path / name).get("replicas") for name, overrides in runs.items()}
    assert replicas == {"single": 1, "mirrored": 2, "mixed": 1}
    units = {name: pd.read_parquet(tmp_path / name / "units.parquet") for name in runs}
    actions = {name: pd.read_csv(tmp_path / name / "actions.csv") for name in runs}
    stats = ["grad_sum", "grad_abs_sum", "grad_sq_sum", "act_grad_sum", "act_grad_batch_sq_sum", "act_abs_sum"]
    np.testing.assert_allclose(units["mirrored"][stats], units["single"][stats], rtol=1e-5, atol=1e-8)
    pd.testing.assert_frame_equal(actions["mirrored"], actions["single"])
    first = {name: frame[frame.epoch == 0] for name, frame in units.items()}
    np.testing.assert_allclose(first["mixed"][stats], first["single"][stats], rtol=2e-2, atol=1e-4)
    pd.testing.assert_frame_equal(actions["mixed"][actions["mixed"].epoch == 0], actions["single"][actions["single"].epoch == 0])
