"""Reliability: identical reruns, exact resume after SIGKILL, failure-isolated sweeps that resume."""

from __future__ import annotations

import filecmp
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAILING_RULES, HUGE, HUGE_DATA, TINY, another_run_holding, cli, on_path, snapshot
from omegaconf import OmegaConf

from adaptgrad.checkpoint import Checkpoints
from adaptgrad.composition import compose
from adaptgrad.results import collect
from adaptgrad.results import main as results_main
from adaptgrad.run import run, summary_table
from adaptgrad.stats import SUM_FIELDS

TABLES = ("history.csv", "units.parquet", "actions.csv")
# a small real task where the rule acts every epoch (re-initialising units draws random weights)
JOB = [
    "data=adding",
    "data.length=12",
    "data.samples=256",
    "model=gru",
    "model.units=8",
    "rule=dormant_reset",
    "rule.tau=0.9",
    "trainer.epochs=4",
]


def same_tables(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in TABLES)


def test_same_config_and_seed_give_identical_files_and_other_seeds_differ(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert (
            run(compose([*JOB, f"seed={seed}", "trainer.epochs=3"]), tmp_path / name, rule_preset="dormant_reset")["status"]
            == "ok"
        )
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "adaptgrad", *args, f"hydra.run.dir={killed_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


# the same job with the rule on the step clock: 7 steps an epoch (224 training sequences), a reset
# judged every 3 steps
STEP_JOB = [*JOB, "rule.every_steps=3"]


def checkpointed(path: Path) -> dict:
    """The state a checkpoint file holds (weights, optimizer variables, the Adapts' state, rows)."""
    return pickle.loads(path.read_bytes()[32:])["state"]


def test_a_job_resumed_within_an_epoch_where_a_step_rule_acted_gives_identical_files_and_weights(tmp_path):
    """What a kill during epoch 2 leaves: the checkpoints up to epoch 1 (the tables on disk are
    rewritten from them). The subprocess version: test_sigkilled_step_clock_job_resumes_to_identical_files."""
    args = [*STEP_JOB, "trainer.epochs=3"]
    assert run(compose(args), tmp_path / "whole")["status"] == "ok"
    actions = pd.read_csv(tmp_path / "whole" / "actions.csv")
    mid_epoch = actions.query("epoch == 2 and action == 'reinit' and step % 7 != 0")
    assert len(mid_epoch) > 0 and set(actions.step) <= set(range(3, 22, 3)), actions
    window = checkpointed(tmp_path / "whole" / "checkpoints" / "epoch-0001.ckpt")["adapt"][0]["windows"][0]
    assert window["batches"] == 2  # steps 13 and 14 wait in the checkpoint for the reset judged at step 15
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "whole", partial)
    result = json.loads((partial / "result.json").read_text())
    (partial / "result.json").write_text(json.dumps({**result, "status": "running"}))
    for leftover in ("checkpoints/epoch-0002.ckpt", "model.keras"):
        (partial / leftover).unlink()
    again = run(compose(args), partial)
    assert again["status"] == "ok" and again["resumed_from"] == 2
    assert same_tables(tmp_path / "whole", partial)
    whole, resumed = (checkpointed(d / "checkpoints" / "epoch-0002.ckpt") for d in (tmp_path / "whole", partial))
    for key in ("weights", "optimizer"):
        assert len(whole[key]) == len(resumed[key])
        for a, b in zip(whole[key], resumed[key]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkilled_step_clock_job_resumes_to_identical_files(tmp_path):
    args = [*STEP_JOB, "trainer.epochs=6"]
    reference = cli(*args, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "adaptgrad", *args, f"hydra.run.dir={killed_dir}"],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    seen = {}
    while "epoch-0002.ckpt" not in seen:  # an epoch's time, from the checkpoints' appearance
        assert proc.poll() is None and time.monotonic() < deadline, "job ended before it could be killed"
        for name in ("epoch-0001.ckpt", "epoch-0002.ckpt"):
            if name not in seen and (killed_dir / "checkpoints" / name).exists():
                seen[name] = time.monotonic()
        time.sleep(0.005)
    time.sleep((seen["epoch-0002.ckpt"] - seen["epoch-0001.ckpt"]) / 2)  # into epoch 3, whose steps 24 and 27 act
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed_dir / "result.json").read_text())["status"] == "running"
    resumed = cli(*args, f"hydra.run.dir={killed_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads((killed_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["resumed_from"] >= 3
    assert same_tables(tmp_path / "whole", killed_dir)
    whole, again = (checkpointed(d / "checkpoints" / "epoch-0005.ckpt")["weights"] for d in (tmp_path / "whole", killed_dir))
    for a, b in zip(whole, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path):
    store = Checkpoints(tmp_path, digest="config-a")
    store.save(0, {"epoch": 0})
    store.save(1, {"epoch": 1})
    store.save(2, {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.ckpt", "epoch-0002.ckpt"]
    newest = tmp_path / "epoch-0002.ckpt"
    newest.write_bytes(newest.read_bytes()[:-5])  # a torn write
    with pytest.warns(RuntimeWarning, match="ignoring checkpoint .*epoch-0002.ckpt: checksum mismatch"):
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
    shutil.copytree(tmp_path / "whole", partial)
    result = json.loads((partial / "result.json").read_text())
    (partial / "result.json").write_text(json.dumps({**result, "status": "running"}))
    newest = partial / "checkpoints" / "epoch-0002.ckpt"
    newest.write_bytes(b"torn")
    with pytest.warns(RuntimeWarning, match="ignoring checkpoint .*checksum mismatch"):
        again = run(compose(args), partial)
    assert again["status"] == "ok" and again["resumed_from"] == 2
    assert same_tables(tmp_path / "whole", partial)


@pytest.mark.slow
def test_rerun_into_a_dir_of_another_config_is_refused_and_nothing_is_lost(tmp_path):
    """Through ``run()``; through the command, every file of the job dir compared:
    test_refused_rerun_touches_no_file_of_the_job_and_exits_nonzero."""
    assert run(compose([*JOB, "trainer.epochs=1"]), tmp_path)["status"] == "ok"
    before = {name: (tmp_path / name).read_bytes() for name in (*TABLES, "config.yaml", "result.json")}
    result = run(compose([*JOB, "trainer.epochs=1", "seed=5"]), tmp_path)
    assert result["status"] == "failed" and "holds a run of a different config" in result["error"]["message"]
    assert before == {name: (tmp_path / name).read_bytes() for name in before}


@pytest.mark.slow
def test_sweep_with_a_failing_and_a_diverging_arm(tmp_path):
    (tmp_path / "my_rules.py").write_text(FAILING_RULES)
    conf = tmp_path / "my_conf" / "rule"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("_target_: my_rules.Broken\n")
    (conf / "exploding.yaml").write_text("_target_: my_rules.Exploding\n")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "rule=none,taylor_prune,dormant_reset,gain_rescale,broken,exploding",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "data=toy",
        "model.units=4",
        "trainer.epochs=3",
        "trainer.batch_size=1",
        f"hydra.sweep.dir={sweep}",
    ]
    first = cli(*args, cwd=tmp_path, env=on_path(tmp_path))
    assert first.returncode == 1, first.stderr[-3000:]
    assert "6 ran, 0 resumed, 0 skipped (completed earlier), 2 did not complete" in first.stdout
    assert "failed: this rule is broken on purpose" in first.stderr and "diverged: loss is NaN or inf" in first.stderr

    runs = collect(sweep).runs.set_index("rule._target_")
    assert runs.status.value_counts().to_dict() == {"ok": 4, "failed": 1, "diverged": 1}
    assert runs.loc["my_rules.Broken", "error.type"] == "RuntimeError" and runs.loc["my_rules.Broken", "error.epoch"] == 1
    assert runs.loc["my_rules.Broken", "epochs"] == 2  # the history up to the failure is kept, the epoch it trained included
    ok_files = {
        p: p.read_bytes() for p in sweep.rglob("*.csv") if json.loads((p.parent / "result.json").read_text())["status"] == "ok"
    }

    second = cli(*args, cwd=tmp_path, env=on_path(tmp_path))
    assert second.returncode == 1
    assert "2 ran, 0 resumed, 4 skipped (completed earlier), 2 did not complete" in second.stdout
    assert all(p.read_bytes() == content for p, content in ok_files.items())


@pytest.mark.slow
def test_distribution_and_mixed_precision_match_single_device_float32(tmp_path):
    """Through the runner; the capture itself: test_capture.py::test_mirrored_strategy_sums_equal_single_device
    and test_capture.py::test_mixed_precision_divides_out_the_loss_scale."""
    # one batch per epoch (102 training examples, batch 128): every statistic is compared at the
    # same weights. Afterwards float16 trajectories drift (and dynamic loss scaling skips steps
    # whose weight gradients overflow), so mixed precision is compared on epoch 0 only.
    job = [
        "data=adding",
        "data.length=10",
        "data.samples=128",
        "model=lstm",
        "model.units=6",
        "optimizer=sgd",
        "rule=taylor_prune",
        "rule.fraction=0.2",
        "trainer.epochs=2",
        "trainer.batch_size=128",
        "trainer.shuffle=false",
    ]
    runs = {
        "single": job,
        "mirrored": [*job, "trainer.distribution=mirrored", "trainer.cpu_devices=2"],
        "mixed": [*job, "trainer.mixed_precision=true"],
    }
    replicas = {name: run(compose(overrides), tmp_path / name).get("replicas") for name, overrides in runs.items()}
    assert replicas == {"single": 1, "mirrored": 2, "mixed": 1}
    units = {name: pd.read_parquet(tmp_path / name / "units.parquet") for name in runs}
    actions = {name: pd.read_csv(tmp_path / name / "actions.csv") for name in runs}
    stats = [c for c in SUM_FIELDS if units["single"][c].notna().all()]  # stats=all: every sum, compared
    assert stats == list(SUM_FIELDS)
    np.testing.assert_allclose(units["mirrored"][stats], units["single"][stats], rtol=1e-5, atol=1e-8)
    pd.testing.assert_frame_equal(actions["mirrored"], actions["single"])
    first = {name: frame[frame.epoch == 0] for name, frame in units.items()}
    # weight_grad_sq_sum is not in the mixed-precision run's table (open: its optimizer hook under the runner's LossScaleOptimizer)
    mixed = [c for c in stats if c != "weight_grad_sq_sum"]
    np.testing.assert_allclose(first["mixed"][mixed], first["single"][mixed], rtol=2e-2, atol=1e-4)
    # the same edits; `step` counts optimizer steps applied, and the loss scale's first overflowed step applies none
    same = [c for c in actions["single"].columns if c != "step"]
    pd.testing.assert_frame_equal(
        actions["mixed"].loc[actions["mixed"].epoch == 0, same], actions["single"].loc[actions["single"].epoch == 0, same]
    )


def test_refused_rerun_touches_no_file_of_the_job_and_exits_nonzero(tmp_path, adaptgrad_cli):
    out = tmp_path / "out"
    assert adaptgrad_cli(*TINY, f"hydra.run.dir={out}").code == 0
    before = snapshot(out)
    assert ".hydra/config.yaml" in before and "result.json" in before
    captured = adaptgrad_cli(*TINY, "seed=5", f"hydra.run.dir={out}")
    assert captured.code == 1
    assert (
        captured.err
        == f"error: output dir {out} holds a run of a different config; choose another dir (hydra.run.dir / hydra.sweep.dir) - nothing was overwritten\n"
    )
    assert snapshot(out) == before


def test_refused_sweep_writes_nothing_and_still_reports(tmp_path, adaptgrad_cli):
    sweep = tmp_path / "sweep"  # job 0 of an earlier sweep, with Hydra's records
    assert run(compose([*TINY, "rule=none"]), sweep / "0")["status"] == "ok"
    for record in ("multirun.yaml", "0/.hydra/config.yaml", "0/.hydra/overrides.yaml", "0/.hydra/hydra.yaml"):
        (sweep / record).parent.mkdir(exist_ok=True)
        (sweep / record).write_text(f"{record} of the earlier sweep\n")
    (sweep / ".adaptgrad.lock").touch()  # the sweep's lock, made by the earlier sweep
    before = snapshot(sweep)
    captured = adaptgrad_cli("-m", *TINY, "rule=none,taylor_prune", "seed=3", f"hydra.sweep.dir={sweep}")
    assert captured.code == 1
    assert f"sweep {sweep}: 0 ran, 0 resumed, 0 skipped (completed earlier), 1 refused; nothing was written" in captured.out
    assert (
        f"error: output dir {sweep / '0'} holds a run of a different config" in captured.err and "Traceback" not in captured.err
    )
    assert snapshot(sweep) == before  # multirun.yaml and job 0's .hydra/ included


def test_a_dir_another_run_is_writing_to_is_refused(tmp_path, adaptgrad_cli):
    out = tmp_path / "out"
    with another_run_holding(out):
        result = run(compose(TINY), out)
        assert result["outcome"] == "refused" and "another adaptgrad run is writing to" in result["error"]["message"]
        code, _, err = adaptgrad_cli(*TINY, f"hydra.run.dir={out}")
        assert code == 1
        assert err == f"error: another adaptgrad run is writing to {out}; wait for it to end or choose another dir\n"
        assert sorted(p.name for p in out.iterdir()) == [".adaptgrad.lock"]  # neither run wrote anything
    assert run(compose(TINY), out)["status"] == "ok"  # the lock is gone with its holder


def test_checkpoint_of_another_config_is_never_resumed(tmp_path):
    store = Checkpoints(tmp_path, digest="config-a")
    store.save(0, {"epoch": 0})
    with pytest.warns(RuntimeWarning, match="ignoring checkpoint .*epoch-0000.ckpt: written by another config"):
        assert Checkpoints(tmp_path, digest="config-b").latest() is None


@pytest.mark.slow
def test_a_job_dir_holding_another_configs_checkpoints_starts_afresh(tmp_path):
    """Three jobs; the check that refuses the checkpoints: test_checkpoint_of_another_config_is_never_resumed."""
    # b's job dir holds a's checkpoints (copied in): the job starts afresh
    a, b = [*TINY, "trainer.epochs=3", "seed=1"], [*TINY, "trainer.epochs=3", "seed=2"]
    assert run(compose(a), tmp_path / "a")["status"] == "ok"
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "mixed" / "checkpoints")
    (tmp_path / "mixed" / "config.yaml").write_text(OmegaConf.to_yaml(compose(b), resolve=True))
    with pytest.warns(RuntimeWarning, match="written by another config"):
        result = run(compose(b), tmp_path / "mixed")
    assert result["status"] == "ok" and result["resumed_from"] is None
    assert run(compose(b), tmp_path / "clean")["status"] == "ok"
    assert same_tables(tmp_path / "mixed", tmp_path / "clean")


def test_infinite_loss_stays_numeric_in_files_tables_and_console(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(HUGE_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run(compose(HUGE), tmp_path / "job")
    assert result["status"] == "diverged" and result["error"]["message"].startswith("loss is NaN or inf")
    text = (tmp_path / "job" / "result.json").read_text()
    assert '"loss": Infinity' in text and '"inf"' not in text
    assert json.loads(text)["final"]["loss"] == float("inf")
    runs = collect(tmp_path).runs
    assert pd.api.types.is_float_dtype(runs["final.loss"]) and runs["final.loss"].iloc[0] == float("inf")
    assert re.search(r"\| loss +\| inf +\|", summary_table(result, tmp_path / "job"))
    assert results_main([str(tmp_path), "--format", "csv"]) == 0  # adaptgrad-results reads it too
    again = run(compose(HUGE), tmp_path / "job")
    assert again["status"] == "diverged" and summary_table(again, tmp_path / "job")  # a rerun prints, no crash


def test_divergence_is_checked_on_every_loss_and_metric(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(HUGE_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run(compose([*HUGE, "+data.scale_train=1.0"]), tmp_path)
    assert result["status"] == "diverged" and result["error"]["message"].startswith("val_loss is NaN or inf")
    assert result["epochs"] == 1 and math.isfinite(result["final"]["loss"])


def test_a_job_that_calls_sys_exit_ends_failed(tmp_path, monkeypatch):
    (tmp_path / "quitting_rules.py").write_text(
        "import sys\nfrom adaptgrad import AdaptationRule\n"
        "class Quits(AdaptationRule):\n    def apply(self, stats, units, epoch):\n        sys.exit(3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run(compose([*TINY, "rule=none", "rule._target_=quitting_rules.Quits"]), tmp_path)
    assert result["status"] == "failed" and result["error"]["message"] == "the job called sys.exit(3)"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_a_job_that_cannot_write_its_files_ends_failed_without_raising(tmp_path):
    cfg = compose(TINY)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # the job's own dir (else: refused)
    (tmp_path / "result.json").mkdir()  # any write of result.json fails (a read-only dir does not stop root)
    result = run(cfg, tmp_path)
    assert result["status"] == "failed" and result["error"]["type"] == "IsADirectoryError"


@pytest.mark.slow
def test_a_completed_job_is_skipped_without_importing_tensorflow(tmp_path):
    """A fresh process; skipping in-process: test_app_main.py::test_sweep_with_a_failing_arm_reports_and_resumes."""
    assert run(compose(TINY), tmp_path)["status"] == "ok"
    script = (
        "import sys\nfrom adaptgrad.composition import compose\nfrom adaptgrad.run import run\n"
        f"result = run(compose({TINY!r}), {str(tmp_path)!r})\n"
        "print(result['outcome'], 'tensorflow' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["skipped", "False"], proc.stderr[-2000:]


def test_a_worker_stops_when_the_adaptgrad_process_that_started_it_is_killed(tmp_path):
    # the adaptgrad process (here a stand-in) starts a worker, as joblib's loky does, then is SIGKILLed
    worker = "from adaptgrad.app import stop_with_parent\nstop_with_parent(0.05)\nprint('watching', flush=True)\nimport time\ntime.sleep(120)\n"
    parent = (
        "import os, signal, subprocess, sys\n"
        "os.environ['ADAPTGRAD_MAIN_PID'] = str(os.getpid())\n"
        f"child = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.PIPE, text=True)\n"
        "assert child.stdout.readline().strip() == 'watching'\n"
        "print(child.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    status = Path(f"/proc/{int(proc.stdout.strip())}/status")
    deadline = time.monotonic() + 30
    while status.exists() and "zombie" not in status.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not status.exists() or "zombie" in status.read_text(), "the worker trains on without its parent"
