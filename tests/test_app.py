"""The Hydra runner: configs compose, jobs write their files, sweeps run under real launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from adaptgrad.config import CONF_DIR, EXPERIMENTS_DIR, build_rule, compose, prepare
from adaptgrad.results import collect
from adaptgrad.run import run

GROUPS = {group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) for group in ("model", "data", "rule", "optimizer", "trainer")}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m adaptgrad ARGS`` in a fresh process, as a user would from a shell."""
    return subprocess.run(
        [sys.executable, "-m", "adaptgrad", *args],
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_group_has_its_options():
    assert GROUPS["model"] == ["gru", "lstm", "minimal_rnn", "simple_rnn"]
    assert GROUPS["data"] == ["adding", "copy_memory", "digits", "sunspots", "toy"]
    assert GROUPS["optimizer"] == ["adam", "sgd"]
    assert {"none", "taylor_prune", "taylor_gate_ema", "gain_rescale", "dormant_reset", "drop_regrow", "trust_ratio"} <= set(GROUPS["rule"])


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_config_option_composes_and_instantiates(group, option):
    cfg = compose([f"{group}={option}"])
    job = prepare(cfg, rule_preset=option if group == "rule" else None)
    assert job.dataset.x_train.ndim == 3 and job.trainer.epochs >= 1
    assert job.model["cell"] in GROUPS["model"]


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
def test_every_experiment_preset_composes_with_each_value_of_its_sweep(name):
    cfg = compose([f"experiment={name}"])
    instantiate(cfg.rule)
    instantiate(cfg.data)
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
        assert {key: got[key] for key in chosen} == chosen


def test_a_job_runs_in_process_and_writes_its_files(tiny, tmp_path):
    result = run(compose([*tiny, "rule=taylor_prune", "rule.fraction=0.5"]), tmp_path, rule_preset="taylor_prune")
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
def test_joblib_sweep_runs_four_jobs_in_parallel(tiny, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "rule=none,taylor_prune", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1", *tiny, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = collect(sweep)
    assert len(results.runs) == 4 and (results.runs.status == "ok").all()
    assert results.history.groupby("run_id").epoch.nunique().tolist() == [2, 2, 2, 2]
    assert sorted(results.runs["seed"].tolist()) == [0, 0, 1, 1]
    assert set(results.varying_keys()) >= {"rule._target_"}


@pytest.mark.slow
def test_submitit_local_sweep(tiny, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "rule=none,dormant_reset", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *tiny, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = collect(sweep).runs
    assert len(runs) == 2 and (runs.status == "ok").all()


@pytest.mark.slow
def test_installed_package_runs_from_another_directory(tmp_path):
    """What `pip install .` puts in site-packages is enough: configs and presets ship inside."""
    root = Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(root)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert (target / "adaptgrad" / "conf" / "config.yaml").is_file()
    assert (target / "adaptgrad" / "experiments" / "question.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli("experiment=question", "trainer.epochs=2", f"hydra.run.dir={elsewhere / 'out'}", cwd=elsewhere, env={"PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((elsewhere / "out" / "result.json").read_text())["status"] == "ok"
    # the configs came from the installed copy, not from this checkout
    assert str(target / "adaptgrad" / "conf") in (elsewhere / "out" / ".hydra" / "hydra.yaml").read_text()
