"""The Hydra runner: configs compose, jobs write their files, sweeps run under real launchers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import pandas as pd
import pytest
from cases import representative
from conftest import MY_MODELS, TINY, another_run_holding, cli, on_path, own_model
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from adaptgrad.composition import compose
from adaptgrad.config import CONF_DIR, EXPERIMENTS_DIR, build_rule, load_data, prepare
from adaptgrad.results import collect
from adaptgrad.run import run

GROUPS = {
    group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for group in ("model", "data", "rule", "optimizer", "trainer")
}


def test_every_group_has_its_options():
    assert GROUPS["model"] == ["gru", "lstm", "minimal_rnn", "simple_rnn"]
    assert GROUPS["data"] == ["adding", "copy_memory", "digits", "sunspots", "toy"]
    assert GROUPS["optimizer"] == ["adam", "sgd"]
    assert {"none", "taylor_prune", "taylor_gate_ema", "gain_rescale", "dormant_reset", "drop_regrow", "trust_ratio"} <= set(
        GROUPS["rule"]
    )


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_config_option_composes_and_instantiates(group, option):
    cfg = compose([f"{group}={option}"])
    job = prepare(cfg, rule_preset=option if group == "rule" else None)
    assert job.dataset.x_train.ndim == 3 and job.trainer.epochs >= 1
    assert job.model["cell"] in GROUPS["model"]


@pytest.mark.parametrize("name", representative(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")), "question", "study_toy"))
def test_every_experiment_preset_composes_with_each_value_of_its_sweep(name):
    cfg = compose([f"experiment={name}"])
    build_rule(cfg.rule, None)
    load_data(cfg.data)
    params = OmegaConf.select(OmegaConf.load(EXPERIMENTS_DIR / f"{name}.yaml"), "hydra.sweeper.params") or {}
    assert bool(params) == name.startswith("study_")
    parser = OverridesParser.create()
    values = {key: list(parser.parse_override(f"{key}={text}").sweep_string_iterator()) for key, text in params.items()}
    for i in range(max(map(len, values.values()), default=0)):  # every value of every key, in as few composes
        chosen = {key: options[i % len(options)] for key, options in values.items()}
        swept = compose([f"experiment={name}", *(f"{key}={value}" for key, value in chosen.items())])
        got = {"model": swept.model.cell, "seed": str(swept.seed)}
        if "rule" in chosen:
            got["rule"] = build_rule(swept.rule, chosen["rule"]).name
        for key in chosen.keys() - got.keys():  # any other key (rule_settings.NAME.KEY): as composed
            got[key] = str(OmegaConf.select(swept, key))
        assert {key: got[key] for key in chosen} == chosen


def test_a_job_runs_in_process_and_writes_its_files(tmp_path):
    overrides = [*TINY, "rule=taylor_prune", "rule.fraction=0.5", "rule.max_sparsity=1.0"]  # no floor but min_active
    result = run(compose(overrides), tmp_path, rule_preset="taylor_prune")
    assert result["status"] == "ok" and result["epochs"] == 2
    for name in ("config.yaml", "history.csv", "units.parquet", "actions.csv", "result.json"):
        assert (tmp_path / name).is_file(), name
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.epoch.tolist() == [0, 1] and {"loss", "val_loss", "active_units"} <= set(history.columns)
    units = pd.read_parquet(tmp_path / "units.parquet")
    assert len(units) == 2 * 4 and units.active.dtype == bool
    actions = pd.read_csv(tmp_path / "actions.csv")
    assert (actions.action == "gate").sum() == 3  # 4 units -> 2 gated, then 1 (min_active=1 stops the 4th)
    assert json.loads((tmp_path / "result.json").read_text())["final"]["active_units"] == 1
    assert "${" not in (tmp_path / "config.yaml").read_text()  # resolved


def test_a_failing_job_records_its_error_and_does_not_raise(tiny, tmp_path):
    result = run(compose([*tiny, "layer=nope"]), tmp_path)
    assert result["status"] == "failed"
    assert result["error"]["type"] == "ValueError" and "no layer named 'nope'" in result["error"]["message"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_user_rule_by_target_shows_up_in_actions(tiny, tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from adaptgrad import AdaptationRule

            class HalveNoisiest(AdaptationRule):
                def apply(self, stats, units, epoch):
                    units.scale([int(np.argmax(stats.rms_grad))], 0.5)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    result = run(compose([*tiny, "rule._target_=my_rules.HalveNoisiest"]), out, rule_preset="gain_rescale")
    assert result["status"] == "ok", result
    actions = collect(out).actions
    assert actions.rule.unique().tolist() == ["HalveNoisiest"]
    assert actions.action.tolist() == ["scale", "scale"] and actions.value.tolist() == [0.5, 0.5]


@pytest.mark.slow
def test_joblib_sweep_runs_four_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m",
        "rule=none,taylor_prune",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.threads=1",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = collect(sweep)
    assert len(results.runs) == 4 and (results.runs.status == "ok").all()
    assert results.history.groupby("run_id").epoch.nunique().tolist() == [2, 2, 2, 2]
    assert sorted(results.runs["seed"].tolist()) == [0, 0, 1, 1]
    assert results.varying_keys() == ["rule"]


@pytest.mark.slow
def test_submitit_local_sweep(tiny, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m",
        "rule=none,dormant_reset",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = collect(sweep).runs
    assert len(runs) == 2 and (runs.status == "ok").all()


@pytest.mark.slow
def test_installed_package_runs_from_another_directory(tmp_path):
    """What `pip install .` puts in site-packages is enough: configs and presets ship inside."""
    root = Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(root),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (target / "adaptgrad" / "conf" / "config.yaml").is_file()
    assert (target / "adaptgrad" / "experiments" / "question.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli(
        "experiment=question",
        "trainer.epochs=2",
        f"hydra.run.dir={elsewhere / 'out'}",
        cwd=elsewhere,
        env={"PYTHONPATH": str(target)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((elsewhere / "out" / "result.json").read_text())["status"] == "ok"
    # the configs came from the installed copy, not from this checkout
    assert str(target / "adaptgrad" / "conf") in (elsewhere / "out" / ".hydra" / "hydra.yaml").read_text()


@pytest.mark.slow
def test_own_model_with_two_adapted_layers_runs_resumes_and_skips(tmp_path, monkeypatch):
    """Its parts in the default run: test_own_model_by_target_on_the_command_line_drops_the_preset_keys
    (own model), test_built_in_model_depth_stacks_layers_and_adapts_each (two adapted layers),
    test_reliability.py::test_resume_after_a_corrupt_newest_checkpoint_still_gives_identical_files
    (resume) and test_app_main.py::test_sweep_with_a_failing_arm_reports_and_resumes (skip)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [*own_model(tmp_path), "layer=[first,second]", "rule=taylor_gate_ema", "rule.fraction=0.3"]
    out = tmp_path / "out"
    result = run(compose(overrides), out, rule_preset="taylor_gate_ema")
    assert result["status"] == "ok", result
    results = collect(out)
    assert results.units.groupby("layer").unit.nunique().to_dict() == {"first": 4, "second": 4}
    assert set(results.actions.layer) == {"first", "second"} and set(results.actions.action) == {"gate"}
    history = pd.read_csv(out / "history.csv")
    assert {"active_units/first", "active_units/second"} <= set(history.columns) and "active_units" not in history.columns
    for name in ("first", "second"):  # each layer's own rule instance gated its own units
        gated = results.units[(results.units.layer == name) & (results.units.epoch == 1)].active.eq(False).sum()
        assert history[f"active_units/{name}"].iloc[-1] == 4 - gated
    assert run(compose(overrides), out, rule_preset="taylor_gate_ema")["outcome"] == "skipped"
    # interrupted after epoch 0 (newest checkpoint gone): resumes to the same tables
    (out / "checkpoints" / "epoch-0001.ckpt").unlink()
    (out / "result.json").write_text(json.dumps({"status": "running"}))
    tables = {name: (out / name).read_bytes() for name in ("history.csv", "units.parquet", "actions.csv")}
    again = run(compose(overrides), out, rule_preset="taylor_gate_ema")
    assert again["status"] == "ok" and again["resumed_from"] == 1
    assert tables == {name: (out / name).read_bytes() for name in tables}
    loaded = keras.models.load_model(out / "model.keras")
    assert [layer.name for layer in loaded.layers] == ["first", "second", "head"]


def test_own_model_by_target_on_the_command_line_drops_the_preset_keys(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(MY_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run(
        compose(["data=toy", "model._target_=my_models.stacked_lstm", "model.units=3", "rule=none", "trainer.epochs=1"]),
        tmp_path / "out",
    )
    assert result["status"] == "ok", result  # layer=null: every recurrent layer of the model
    assert pd.read_parquet(tmp_path / "out" / "units.parquet").groupby("layer").unit.nunique().to_dict() == {
        "first": 3,
        "second": 3,
    }
    bad = run(compose(["data=toy", "model._target_=my_models.stacked_lstm", "+model.unitz=3", "rule=none"]), tmp_path / "bad")
    assert (
        "model.unitz is not a parameter of my_models.stacked_lstm; valid: input_shape, outputs, task, units; did you mean 'units'?"
        in bad["error"]["message"]
    )


def test_built_in_model_depth_stacks_layers_and_adapts_each(tmp_path):
    result = run(compose([*TINY, "model=gru", "model.depth=2", "rule=taylor_prune", "rule.fraction=0.5"]), tmp_path)
    assert result["status"] == "ok", result
    units = pd.read_parquet(tmp_path / "units.parquet")
    assert units.groupby("layer").unit.nunique().to_dict() == {"gru_1": 4, "gru_2": 4}
    assert pd.read_csv(tmp_path / "actions.csv").groupby("layer").size().to_dict() == {"gru_1": 2, "gru_2": 2}


STEP_CLOCK = ["data=toy", "model.units=4", "trainer.epochs=4", "trainer.batch_size=1", "rule=drop_regrow", "rule.grace=0"]
"""2 steps an epoch: a rule acting every 3 steps acts in the middle of epoch 1."""


@pytest.mark.slow
def test_a_rule_on_the_step_clock_from_the_command_line_and_in_a_sweep(tmp_path, adaptgrad_cli):
    """Slow; in the default run its parts are covered by the step-clock keys from the command line
    (``test_a_step_clock_without_its_end_is_refused_before_training``), a step rule in a runner job
    with its ``step`` column and exact resume (``test_reliability.py::
    test_a_job_resumed_within_an_epoch_where_a_step_rule_acted_gives_identical_files_and_weights``)
    and the exact steps (``test_adapt.py``)."""
    import tensorflow as tf

    one = tmp_path / "one"
    out = adaptgrad_cli(*STEP_CLOCK, "rule.every_steps=3", "rule.end_step=100", f"hydra.run.dir={one}")
    assert out.code == 0, out.err[-2000:]
    actions = pd.read_csv(one / "actions.csv")
    assert actions.columns.tolist()[:2] == ["epoch", "step"]
    assert actions.groupby("step").epoch.first().to_dict() == {3: 1, 6: 2}
    assert set(actions.query("step == 6").action) == {"gate", "ungate", "zero_outgoing"}
    assert pd.read_parquet(one / "units.parquet").groupby("epoch").step.first().tolist() == [2, 4, 6, 8]
    edits: dict[str, dict[int, float]] = {}  # TensorBoard: step-level edits at their optimizer step
    for events in (one / "tb").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag.startswith("edits_by_step/"):
                    edits.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    assert edits["edits_by_step/gate"] == {3: 1.0, 6: 1.0} and edits["edits_by_step/ungate"] == {6: 1.0}

    sweep = tmp_path / "sweep"
    out = adaptgrad_cli("-m", *STEP_CLOCK, "rule.every_steps=3,4", "rule.end_step=100", f"hydra.sweep.dir={sweep}")
    assert out.code == 0, out.err[-2000:]
    results = collect(sweep)
    assert results.runs["rule.every_steps"].tolist() == [3, 4]
    steps = results.actions.groupby("run_id").step.unique().map(sorted).to_dict()
    assert steps == {"0": [3, 6], "1": [4, 8]}


def test_a_step_clock_without_its_end_is_refused_before_training(tmp_path, adaptgrad_cli):
    out = adaptgrad_cli(*STEP_CLOCK, "rule.every_steps=3", f"hydra.run.dir={tmp_path / 'job'}")
    assert out.code != 0 and "the cosine decay needs end_step" in out.err
    assert not (tmp_path / "job" / "history.csv").exists()
    out = adaptgrad_cli(
        *STEP_CLOCK, "rule.every_steps=3", "rule.end_step=9", "trainer.steps_per_execution=4", f"hydra.run.dir={tmp_path / 'job'}"
    )
    assert out.code != 0 and "rule.every_steps=3 is below trainer.steps_per_execution=4" in out.err


def hydra_records(directory: Path) -> dict[Path, bytes]:
    """Hydra's records under ``directory``: every job's ``.hydra/*.yaml`` and ``multirun.yaml``."""
    return {p: p.read_bytes() for p in directory.rglob("*.yaml") if ".hydra" in p.parts or p.name == "multirun.yaml"}


def test_a_skipped_rerun_keeps_the_hydra_records_of_the_run_that_completed(adaptgrad_cli, tmp_path):
    sweep, single = tmp_path / "sweep", tmp_path / "single"
    assert adaptgrad_cli("-m", *TINY, "seed=1", f"hydra.sweep.dir={sweep}").code == 0
    assert adaptgrad_cli(*TINY, f"hydra.run.dir={single}").code == 0
    records = {**hydra_records(sweep), **hydra_records(single)}
    assert len(records) == 3 + 1 + 3
    # the same jobs, the overrides in another order: every job is skipped, no record rewritten
    again = adaptgrad_cli("-m", "seed=1", *reversed(TINY), f"hydra.sweep.dir={sweep}")
    assert again.code == 0 and "0 ran, 0 resumed, 1 skipped (completed earlier), 0 did not complete" in again.out
    assert adaptgrad_cli(*reversed(TINY), f"hydra.run.dir={single}").code == 0
    assert {p: p.read_bytes() for p in records} == records


def test_a_sweep_job_whose_dir_another_run_holds_did_not_complete(adaptgrad_cli, tmp_path):
    sweep = tmp_path / "sweep"
    with another_run_holding(sweep / "1"):
        done = adaptgrad_cli("-m", *TINY, "rule=none", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert done.code == 1
    assert (
        "1 ran, 0 resumed, 0 skipped (completed earlier), 1 did not complete (1 refused: another run holds their dir)" in done.out
    )
    assert f"{sweep / '1'}: failed: another adaptgrad run is writing to {sweep / '1'}" in done.err


INTERRUPTING = """
def model(input_shape, outputs, task):
    raise KeyboardInterrupt  # as Ctrl-C while the job builds its model
"""


def test_ctrl_c_says_how_to_resume_in_one_line(adaptgrad_cli, tmp_path, monkeypatch):
    (tmp_path / "interrupting.py").write_text(INTERRUPTING)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the default, time-stamped output dir goes here
    done = adaptgrad_cli(*TINY, "model._target_=interrupting.model")
    assert done.code == 130 and "Traceback" not in done.err
    (out,) = (tmp_path / "outputs").glob("*/*")
    assert done.err.strip() == (
        f"interrupted: jobs that did not complete keep their checkpoints; rerun the same command with hydra.run.dir={out.relative_to(tmp_path)} to resume"
    )
    assert json.loads((out / "result.json").read_text())["status"] == "running"  # a rerun resumes it


KILLING = """
import os, signal
from adaptgrad.models import build_model

def model(input_shape, outputs, task, units=4):
    if os.environ.get("ADAPTGRAD_MAIN_PID") != str(os.getpid()):  # in a joblib worker: it dies
        os.kill(os.getpid(), signal.SIGKILL)
    return build_model("gru", units=units, input_shape=input_shape, outputs=outputs, task=task)
"""


@pytest.mark.slow
def test_a_killed_joblib_worker_ends_the_sweep_with_its_report_and_no_traceback(tmp_path):
    (tmp_path / "killing.py").write_text(KILLING)
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *TINY,
        "rule=none",
        "model._target_=killing.model",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    proc = cli(*args, f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=on_path(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: the sweep stopped: TerminatedWorkerError:" in proc.stderr
    assert f"sweep {sweep}: 0 ran, 0 resumed, 0 skipped (completed earlier), 0 did not complete" in proc.stdout
    assert "rerun the same command to resume the jobs that did not complete" in proc.stderr


def test_a_worker_started_through_a_launcher_process_stops_when_adaptgrad_is_killed(tmp_path):
    # adaptgrad (a stand-in) -> a launcher's process (submitit_local's controller) -> the worker
    worker = "from adaptgrad.app import stop_with_parent\nstop_with_parent(0.05)\nprint('watching', flush=True)\nimport time\ntime.sleep(120)\n"
    controller = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {worker!r}])\n"
    main = (
        "import os, signal, subprocess, sys\n"
        "os.environ['ADAPTGRAD_MAIN_PID'] = str(os.getpid())\n"
        f"child = subprocess.Popen([sys.executable, '-c', {controller!r}], stdout=subprocess.PIPE, text=True)\n"
        "assert child.stdout.readline().strip() == 'watching'\n"
        "print(child.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", main], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    controller_status = Path(f"/proc/{int(proc.stdout.strip())}/status")  # it ends when its worker does
    deadline = time.monotonic() + 30
    while controller_status.exists() and "zombie" not in controller_status.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not controller_status.exists() or "zombie" in controller_status.read_text(), "the worker trains on without adaptgrad"


def test_an_unquoted_non_ascii_value_says_to_quote_it(adaptgrad_cli, tmp_path):
    done = adaptgrad_cli(*TINY, f"hydra.run.dir={tmp_path}/résultats")
    assert done.code == 2 and not (tmp_path / "résultats").exists()
    assert done.err == (
        f"error: hydra.run.dir={tmp_path}/résultats: Hydra takes a value with non-ASCII characters only in quotes: "
        f"hydra.run.dir='{tmp_path}/résultats'\n"
    )
