"""Tests of adaptgrad.results on hand-written job dirs of a small fake sweep."""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from adaptgrad.results import UNITS_COLUMNS, collect, main
from adaptgrad.results.comparing import STAT_COLUMNS
from adaptgrad.results.markdown import format_mean_std
from adaptgrad.results.plotting import _title, plot

SWEEP = Path("multirun") / "2026-11-27" / "10-00-00"
METRICS = ["loss", "val_loss", "mae", "val_mae", "active_units", "epoch_time"]
RULES = {
    "none": {"_target_": "adaptgrad.rules.NoOp", "min_active": 1},
    "taylor_prune": {"_target_": "adaptgrad.rules.TaylorPrune", "min_active": 1, "fraction": 0.1},
    "random_gate": {"_target_": "adaptgrad.rules.RandomGate", "min_active": 1, "fraction": 0.1},
}


def config(rule: str, seed: int, cell: str = "gru") -> dict[str, Any]:
    """A resolved job config as the runner writes it."""
    return {
        "seed": seed,
        "layer": "rnn",
        "through_time": True,
        "model": {"name": cell, "units": 4, "layers": [4, 4]},
        "data": {"_target_": "adaptgrad.data.Sine", "length": 50, "features": ["x", "dx"]},
        "rule": RULES[rule],
        "optimizer": {"_target_": "keras.optimizers.Adam", "learning_rate": 0.001},
        "trainer": {"epochs": 5, "batch_size": 32, "lr": 0.001},
    }


def history(epochs: int, offset: float, pruning: bool) -> pd.DataFrame:
    """A history.csv table: loss falls with the epoch; active_units falls from 4 if pruning."""
    rows = [
        {
            "epoch": e,
            "loss": 1.0 / (e + 1) + offset,
            "val_loss": 1.2 / (e + 1) + offset,
            "mae": 0.5 / (e + 1),
            "val_mae": 0.6 / (e + 1),
            "active_units": 4 - min(e, 2) if pruning else 4,
            "epoch_time": 0.5,
        }
        for e in range(epochs)
    ]
    return pd.DataFrame(rows, columns=["epoch", *METRICS])


def units(epochs: int) -> pd.DataFrame:
    """A units.parquet table with 4 units per epoch."""
    rows = []
    for e in range(epochs):
        for u in range(4):
            row = {c: float(e + u) for c, t in UNITS_COLUMNS.items() if t == "float64"}
            row.update(epoch=e, step=10 * (e + 1), unit=u, active=u < 3, batches=10, count=320)
            rows.append(row)
    return pd.DataFrame(rows)[[c for c in UNITS_COLUMNS if c != "run_id"]]


def write_job(
    job: Path,
    rule: str,
    seed: int,
    status: str = "ok",
    final: dict[str, float] | None = None,
    epochs: int = 5,
    wall_time: float = 10.0,
    error: dict[str, Any] | None = None,
    cell: str = "gru",
) -> None:
    """Write every file a finished (or failed) job leaves in its dir."""
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config(rule, seed, cell)), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"rule={rule}", f"seed={seed}"]), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create(config(rule, seed, cell)), job / "config.yaml")
    offset = (0.0 if rule == "none" else 0.2) + 0.01 * seed
    history(epochs, offset, pruning=rule != "none").to_csv(job / "history.csv", index=False)
    units(epochs).to_parquet(job / "units.parquet", index=False)
    if rule == "taylor_prune":
        actions = pd.DataFrame(
            {
                "epoch": [1, 1, 3],
                "rule": ["taylor_prune"] * 3,
                "action": ["gate", "skip", "gate"],
                "unit": [3, None, 2],
                "value": [0.0, None, 0.0],
            }
        )
    else:
        actions = pd.DataFrame(columns=["epoch", "rule", "action", "unit", "value"])  # no edit: the header only
    actions.to_csv(job / "actions.csv", index=False)
    result = {
        "status": status,
        "run_id": "ignored",
        "final": final or {},
        "epochs": epochs,
        "wall_time": wall_time,
        "versions": {"keras": "3.6.0"},
        "git_commit": "abc123",
        "error": error,
        "overrides": [f"rule={rule}", f"seed={seed}"],
    }
    (job / "result.json").write_text(json.dumps(result))


def write_running_job(job: Path, rule: str, seed: int) -> None:
    """A job Hydra has started: only .hydra/, with the unresolved config."""
    (job / ".hydra").mkdir(parents=True)
    unresolved = config(rule, seed)
    unresolved["optimizer"]["learning_rate"] = "${trainer.lr}"
    OmegaConf.save(OmegaConf.create(unresolved), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"rule={rule}", f"seed={seed}"]), job / ".hydra" / "overrides.yaml")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 rules x 2 seeds (taylor seed 1 failed at epoch 2) plus a running job "10"."""
    root = tmp_path / SWEEP
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    write_job(root / "0", "none", 0, final={"val_loss": 0.50, "val_mae": 0.20}, wall_time=10.0)
    write_job(root / "1", "none", 1, final={"val_loss": 0.54, "val_mae": 0.24}, wall_time=12.0)
    write_job(root / "2", "taylor_prune", 0, final={"val_loss": 0.30, "val_mae": 0.10}, wall_time=11.0)
    error = {"type": "FloatingPointError", "message": "loss is NaN\n  at batch 3", "epoch": 2}
    write_job(root / "3", "taylor_prune", 1, status="failed", epochs=2, wall_time=4.0, error=error)
    write_running_job(root / "10", "taylor_prune", 2)
    return tmp_path / "multirun"


IDS = [f"2026-11-27/10-00-00/{j}" for j in (0, 1, 2, 3, 10)]
BY = ["rule"]  # rule._target_ and rule.fraction only vary with the rule: left out


def test_runs_table(sweep: Path) -> None:
    runs = collect(sweep).runs
    assert runs["run_id"].tolist() == IDS  # natural order: 10 after 2 and 3
    assert runs["status"].tolist() == ["ok", "ok", "ok", "failed", "running"]
    assert runs.columns[:2].tolist() == ["run_id", "status"]
    assert runs.columns[-1] == "git_commit"
    dtypes = runs.dtypes
    assert dtypes["model.units"] == "Int64"
    assert dtypes["trainer.lr"] == "Float64"
    assert dtypes["through_time"] == "boolean"
    assert dtypes["rule._target_"] == "string"
    assert dtypes["rule.fraction"] == "Float64"  # missing for rule none: nullable, not object
    assert dtypes["final.val_loss"] == "Float64"
    assert dtypes["epochs"] == "Int64"
    assert dtypes["wall_time"] == "Float64"
    assert dtypes["error.epoch"] == "Int64"
    assert runs["rule.fraction"].isna().tolist() == [True, True, False, False, False]
    assert runs["model.layers"].iloc[0] == "[4, 4]"
    assert runs["data.features"].iloc[0] == '["x", "dx"]'
    # the running job's config comes from .hydra/config.yaml, interpolation resolved
    assert runs["optimizer.learning_rate"].tolist() == [0.001] * 5
    assert runs["seed"].tolist() == [0, 1, 0, 1, 2]
    failed = runs.iloc[3]
    assert failed["error.type"] == "FloatingPointError"
    assert (failed["error.epoch"], failed["epochs"]) == (2, 2)
    assert pd.isna(failed["final.val_loss"])
    assert runs["epochs"].isna().tolist() == [False] * 4 + [True]
    assert not any(c.startswith(("versions", "overrides")) for c in runs.columns)


def test_history_units_actions(sweep: Path) -> None:
    results = collect(sweep)
    history_ = results.history
    assert history_.columns.tolist() == ["run_id", "epoch", "metric", "value"]
    assert len(history_) == 3 * 5 * len(METRICS) + 2 * len(METRICS)
    assert history_["value"].dtype == "float64"
    assert history_["epoch"].dtype == "int64"
    assert history_["run_id"].unique().tolist() == IDS[:4]
    first = history_[history_["run_id"] == IDS[0]]
    assert first["metric"].iloc[: len(METRICS)].tolist() == METRICS  # epoch-major, metrics in file order
    row = first[(first["epoch"] == 1) & (first["metric"] == "val_loss")]
    assert row["value"].item() == pytest.approx(0.6)

    units_ = results.units
    assert units_.columns.tolist() == list(UNITS_COLUMNS)
    assert len(units_) == 3 * 5 * 4 + 2 * 4
    assert units_["active"].dtype == bool
    assert units_.groupby("run_id", sort=False).size().tolist() == [20, 20, 20, 8]

    assert units_["step"].dtype == "Int64" and units_.query("epoch == 1")["step"].eq(20).all()

    actions = results.actions  # written before actions.csv recorded the step: <NA> there
    assert actions.columns.tolist() == ["run_id", "epoch", "step", "rule", "action", "unit", "value"]
    assert actions["step"].dtype == "Int64" and actions["step"].isna().all()
    assert actions["run_id"].tolist() == [IDS[2]] * 3 + [IDS[3]] * 3
    assert actions["unit"].dtype == "Int64"
    assert actions["unit"].isna().tolist() == [False, True, False] * 2


def test_single_job_dir_and_running_only_give_empty_frames(sweep: Path) -> None:
    job = sweep / "2026-11-27" / "10-00-00"
    assert collect(job / "2").runs["run_id"].tolist() == ["2"]
    running = collect(job / "10")
    assert running.runs["status"].tolist() == ["running"]
    for frame, columns in [
        (running.history, ["run_id", "epoch", "metric", "value"]),
        (running.units, list(UNITS_COLUMNS)),
        (running.actions, ["run_id", "epoch", "step", "rule", "action", "unit", "value"]),
    ]:
        assert frame.empty and frame.columns.tolist() == columns
    assert running.units["active"].dtype == bool
    assert collect(job).runs["run_id"].tolist() == ["0", "1", "2", "3", "10"]


def test_missing_path_and_no_jobs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        collect(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no job dir"):
        collect(tmp_path / "empty")


def test_collect_is_idempotent(sweep: Path) -> None:
    a, b = collect(sweep), collect(sweep)
    for name in ("runs", "history", "units", "actions"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.config_columns == b.config_columns


def test_varying_keys(sweep: Path, tmp_path: Path) -> None:
    assert collect(sweep).varying_keys() == BY
    seeds_only = tmp_path / "seeds"
    write_job(seeds_only / "0", "none", 0, final={"val_loss": 0.5})
    write_job(seeds_only / "1", "none", 1, final={"val_loss": 0.7})
    results = collect(seeds_only)
    assert results.varying_keys() == []
    swept = tmp_path / "fractions"  # a parameter swept within one rule class does vary
    write_job(swept / "0", "taylor_prune", 0)
    write_job(swept / "1", "taylor_prune", 0)
    OmegaConf.save(
        OmegaConf.create({**config("taylor_prune", 0), "rule": {**RULES["taylor_prune"], "fraction": 0.3}}),
        swept / "1" / "config.yaml",
    )
    assert collect(swept).varying_keys() == ["rule.fraction"]
    table = results.summary(["val_loss"])
    assert table.columns.tolist() == ["n", "final.val_loss mean", "final.val_loss std"]
    assert table["n"].tolist() == [2]
    assert table["final.val_loss mean"].item() == pytest.approx(0.6)
    assert table["final.val_loss std"].item() == pytest.approx(math.sqrt(0.02))


def test_summary_by_hand(sweep: Path) -> None:
    table = collect(sweep).summary()
    metrics = ("final.val_loss", "final.val_mae", "epochs", "wall_time")
    stats = [f"{m} {s}" for m in metrics for s in ("mean", "std")]
    assert table.columns.tolist() == [*BY, "n", *stats]
    assert table["rule"].tolist() == ["none", "taylor_prune"]
    assert table["n"].tolist() == [2, 1]  # the failed and running jobs are left out
    none, taylor = table.iloc[0], table.iloc[1]
    assert none["final.val_loss mean"] == pytest.approx(0.52)
    # sample std of (0.50, 0.54): sqrt((0.02**2 + 0.02**2) / (2 - 1))
    assert none["final.val_loss std"] == pytest.approx(0.02 * math.sqrt(2))
    assert none["final.val_mae mean"] == pytest.approx(0.22)
    assert none["wall_time mean"] == pytest.approx(11.0)
    assert none["wall_time std"] == pytest.approx(math.sqrt(2))
    assert (none["epochs mean"], none["epochs std"]) == (5, 0)
    assert taylor["final.val_loss mean"] == pytest.approx(0.30)
    assert pd.isna(taylor["final.val_loss std"])

    grouped = collect(sweep).summary(metrics=["val_loss", "wall_time"], by=["rule.fraction"])
    assert grouped.columns.tolist() == ["rule.fraction", "n", *stats[:2], *stats[-2:]]
    with pytest.raises(ValueError, match="unknown metric"):
        collect(sweep).summary(metrics=["nope"])
    with pytest.raises(ValueError, match="group by"):
        collect(sweep).summary(by=["nope"])


def test_cli_markdown(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == [*BY, "n", "final.val_loss", "final.val_mae", "epochs", "wall_time"]
    assert set(lines[1]) <= {"|", "-", ":"}
    none = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert none[:2] == ["none", "2"]
    assert none[2:] == ["0.52 ± 0.03", "0.22 ± 0.03", "5 ± 0", "11.0 ± 1.4"]
    taylor = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert taylor[:3] == ["taylor_prune", "1", "0.3"]
    assert len(lines) == 4
    assert err.splitlines() == [f"{IDS[3]} failed loss is NaN at batch 3", f"{IDS[4]} running"]


def test_cli_csv_and_parquet(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--format", "csv", "--metric", "val_loss"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert table.columns.tolist() == [*BY, "n", "final.val_loss mean", "final.val_loss std"]
    assert table["final.val_loss mean"].tolist() == pytest.approx([0.52, 0.30])

    out = tmp_path / "summary.parquet"
    assert main([str(sweep), "--format", "parquet", "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    expected = collect(sweep).summary()
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected, check_dtype=False)

    assert main([str(sweep), "--format", "parquet"]) == 2
    assert "--output" in capsys.readouterr().err


def test_cli_plot(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "plots"
    assert main([str(sweep), "--plot", str(plots), "--format", "csv"]) == 0
    for name in ("val_loss.png", "active_units.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert "wrote" in capsys.readouterr().err


def test_cli_plot_without_matplotlib(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main([str(sweep), "--plot", str(tmp_path / "plots")]) == 2
    out, err = capsys.readouterr()
    assert "pip install 'adaptgrad[plot]'" in err and "Traceback" not in err
    assert out == ""


def test_cli_bad_input(tmp_path: Path, sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no job dir" in capsys.readouterr().err
    assert main([str(sweep), "--metric", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert main(["--format", "xml", str(sweep)]) == 2


def test_corrupt_files_warn_and_do_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_job(tmp_path / "0", "none", 0, final={"val_loss": 0.5})
    write_job(tmp_path / "1", "none", 1, final={"val_loss": 0.6})
    (tmp_path / "1" / "result.json").write_text('{"status": "ok", "final": {')
    (tmp_path / "1" / "units.parquet").write_bytes(b"not parquet")
    (tmp_path / "0" / "config.yaml").write_text("model: [unclosed\n")  # falls back to .hydra/config.yaml
    with pytest.warns(UserWarning) as caught:
        results = collect(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "result.json" in messages and "units.parquet" in messages and "config.yaml" in messages
    assert results.runs["status"].tolist() == ["ok", "unknown"]
    assert results.runs["model.units"].tolist() == [4, 4]
    assert results.units["run_id"].unique().tolist() == ["0"]
    assert results.summary(["val_loss"])["n"].tolist() == [1]

    assert main([str(tmp_path), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "Traceback" not in err
    assert err.splitlines()[-1] == "1 unknown"


def test_hydra_only_interpolations_stay_text(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(
        "trainer:\n  lr: 0.01\noptimizer:\n  lr: ${trainer.lr}\nout: ${hydra:runtime.output_dir}\nname: ???\n"
    )
    runs = collect(job).runs
    assert runs["optimizer.lr"].item() == 0.01
    assert runs["out"].item() == "${hydra:runtime.output_dir}"
    assert runs["name"].item() == "???"
    assert runs["status"].item() == "running"


@pytest.mark.parametrize(
    ("mean", "std", "text"),
    [
        (0.12345, 0.0042, "0.123 ± 0.004"),
        (0.11, 0.0141, "0.110 ± 0.014"),
        (622.5, 864.79, "622 ± 865"),
        (5, 0, "5 ± 0"),
        (0.3, float("nan"), "0.3"),
        (pd.NA, pd.NA, "n/a"),
        (1.5e-8, 2e-9, "1.5e-08 ± 2e-09"),
    ],
)
def test_mean_std_format(mean: Any, std: Any, text: str) -> None:
    assert format_mean_std(mean, std) == text


def test_no_ok_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_job(tmp_path / "0", "none", 0, status="diverged", final={"val_loss": float("nan")})
    write_job(tmp_path / "1", "taylor_prune", 0, status="failed", error={"type": "E", "message": "m"})
    results = collect(tmp_path)
    assert results.runs["final.val_loss"].dtype == "Float64"  # a NaN final metric is missing
    table = results.summary()
    assert table.empty
    assert table.columns.tolist()[:2] == [*BY, "n"]

    out = tmp_path / "table.md"
    assert main([str(tmp_path), "--output", str(out), "--plot", str(tmp_path / "plots")]) == 0
    assert out.read_text().splitlines()[0].split("|")[1].strip() == "rule"
    assert len(out.read_text().splitlines()) == 2  # header and rule only
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no ok run" in captured.err
    assert captured.err.splitlines()[-2:] == ["0 diverged", "1 failed m"]
    assert not (tmp_path / "plots").exists()


# --- comparisons against a control ----------------------------------------------------------

VAL_LOSS = {  # (cell, rule) -> final val_loss of seeds 0, 1, 2
    ("gru", "none"): [0.50, 0.56, 0.47],
    ("gru", "taylor_prune"): [0.41, 0.50, 0.45],
    ("lstm", "none"): [0.30, 0.36, 0.33],
    ("lstm", "taylor_prune"): [0.38, 0.39, 0.34],
}


@pytest.fixture
def arms(tmp_path: Path) -> Path:
    """2 models x 2 rules x 3 seeds; the lstm taylor_prune arm ran seeds 0, 1, 3 (not paired)."""
    number = 0
    for (cell, rule), values in VAL_LOSS.items():
        seeds = [0, 1, 3] if (cell, rule) == ("lstm", "taylor_prune") else [0, 1, 2]
        for seed, value in zip(seeds, values, strict=True):
            write_job(tmp_path / str(number), rule, seed, final={"val_loss": value}, cell=cell)
            number += 1
    return tmp_path


def test_compare_against_scipy(arms: Path) -> None:
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    table = collect(arms).compare("val_loss", {"rule": "none"})
    assert table.columns.tolist() == ["model.name", "rule", *STAT_COLUMNS]
    assert table[["model.name", "rule", "test", "n", "n_baseline"]].values.tolist() == [
        ["gru", "taylor_prune", "paired", 3, 3],
        ["lstm", "taylor_prune", "welch", 3, 3],
    ]
    gru, lstm = table.iloc[0], table.iloc[1]
    treated, control = VAL_LOSS[("gru", "taylor_prune")], VAL_LOSS[("gru", "none")]
    paired = stats.ttest_rel(treated, control)
    assert gru["p"] == pytest.approx(paired.pvalue, rel=1e-9)
    assert (gru["ci_low"], gru["ci_high"]) == pytest.approx(tuple(paired.confidence_interval(0.95)), rel=1e-9)
    assert gru["diff"] == pytest.approx(sum(treated) / 3 - sum(control) / 3)
    assert (gru["mean"], gru["baseline_mean"]) == pytest.approx((sum(treated) / 3, sum(control) / 3))
    welch = stats.ttest_ind(VAL_LOSS[("lstm", "taylor_prune")], VAL_LOSS[("lstm", "none")], equal_var=False)
    assert lstm["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert (lstm["ci_low"], lstm["ci_high"]) == pytest.approx(tuple(welch.confidence_interval(0.95)), rel=1e-9)
    assert table["p_adjusted"].tolist() == pytest.approx(multipletests(table["p"], method="holm")[1].tolist(), rel=1e-12)


def test_compare_groups_final_and_bad_input(arms: Path) -> None:
    results = collect(arms)
    pooled = results.compare("val_loss", {"rule": "none"}, by=[])  # both models in one arm: seeds repeat, so Welch
    assert pooled[["rule", "test", "n", "n_baseline"]].values.tolist() == [["taylor_prune", "welch", 6, 6]]
    per_rule = results.compare("val_loss", {"model.name": "gru"})  # the arms are models now, split by rule
    assert per_rule[["rule", "model.name"]].values.tolist() == [["none", "lstm"], ["taylor_prune", "lstm"]]
    # best epoch: the minimum of the val_loss history (1.2 / (epoch + 1) + offset), so epoch 4
    best = results.compare("val_loss", {"rule": "none"}, final="best")
    assert best["diff"].tolist() == pytest.approx([0.2, 0.2 + 0.01 * (3 - 2) / 3])
    with pytest.raises(ValueError, match="final='worst'; valid: last, best"):
        results.compare("val_loss", {"rule": "none"}, final="worst")
    with pytest.raises(ValueError, match="no ok run .* baseline rule=nope"):
        results.compare("val_loss", {"rule": "nope"})
    with pytest.raises(ValueError, match="unknown column"):
        results.compare("val_loss", {"rules": "none"})
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        results.compare("nope", {"rule": "none"})
    with pytest.raises(ValueError, match="baseline is empty"):
        results.compare("val_loss", {})


def test_summary_best_epoch(arms: Path) -> None:
    results = collect(arms)
    last = results.summary(["val_loss"], ["model.name", "rule"])
    best = results.summary(["val_loss", "val_mae", "wall_time"], ["model.name", "rule"], final="best")
    assert best.columns.tolist()[3:] == [
        "best.val_loss mean",
        "best.val_loss std",
        "best.val_mae mean",
        "best.val_mae std",
        "wall_time mean",
        "wall_time std",
    ]
    assert last["final.val_loss mean"].tolist() == pytest.approx([sum(v) / 3 for v in VAL_LOSS.values()])
    assert best["best.val_loss mean"].iloc[0] == pytest.approx(1.2 / 5 + 0.01)  # none: offset 0.01 * seed
    assert best["best.val_mae mean"].tolist() == pytest.approx([0.6 / 5] * 4)


def test_cli_compare(arms: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(arms), "--compare", "rule=none", "--metric", "val_loss"]) == 0
    summary, comparison = capsys.readouterr().out.split("\n\n")
    assert [c.strip() for c in summary.splitlines()[0].split("|")[1:3]] == ["rule", "model.name"]
    header = [cell.strip() for cell in comparison.splitlines()[0].strip("|").split("|")]
    assert header == ["metric", "model.name", "rule", *STAT_COLUMNS]
    assert [line.split("|")[2].strip() for line in comparison.splitlines()[2:]] == ["gru", "lstm"]
    assert main([str(arms), "--compare", "rule=none", "--format", "csv", "--final", "best"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert table["metric"].tolist() == ["val_loss", "val_loss"] and table["test"].tolist() == ["paired", "welch"]
    assert main([str(arms), "--compare", "none"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main([str(arms), "--compare", "rule=nope"]) == 2
    assert "baseline rule=nope" in capsys.readouterr().err


def test_cli_plots_follow_metric_and_compare(arms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "plots"
    assert main([str(arms), "--metric", "val_mae", "wall_time", "--plot", str(plots), "--compare", "rule=none"]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["val_mae.png"]  # wall_time has no history to plot
    assert capsys.readouterr().err.splitlines() == [f"wrote {plots / 'val_mae.png'}"]


def test_sweep_ends_with_one_grouped_table(arms: Path) -> None:
    from adaptgrad.app import sweep_table

    lines = sweep_table(arms).splitlines()
    assert lines[0] == "val_loss (last epoch) per group:"
    assert [cell.strip() for cell in lines[1].strip("|").split("|")] == ["rule", "model.name", "n", "final.val_loss"]
    assert [line.split("|")[1].strip() for line in lines[3:]] == ["none", "none", "taylor_prune", "taylor_prune"]
    assert sweep_table(arms / "nope").startswith("no val_loss table:")


def test_sweep_job_lines_carry_the_job_number(caplog: pytest.LogCaptureFixture) -> None:
    from adaptgrad.app import _JobTag

    logger = logging.getLogger("adaptgrad")
    tag = _JobTag(7)
    logger.addFilter(tag)
    try:
        with caplog.at_level(logging.INFO, logger="adaptgrad"):
            logger.info("epoch %d of 0..%d", 0, 1)
    finally:
        logger.removeFilter(tag)
    assert caplog.messages == ["[job 7] epoch 0 of 0..1"]


def test_studies_script_regenerates_a_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The arms, random_gate and the narrow control, compared as the module says, Holm over all rows."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    import studies

    sweep = tmp_path / "studies" / "toy"
    jobs = [(c, r, s, 4, "") for c in ("gru", "minimal_rnn") for r in ("none", "random_gate", "taylor_prune") for s in range(3)]
    jobs += [(c, "none", s, 2, "width/") for c in ("gru", "minimal_rnn") for s in range(3)]
    for number, (cell, rule, seed, width, where) in enumerate(jobs):
        job = sweep / f"{where}{number}"
        write_job(job, rule, seed, final={"val_loss": 0.5 + 0.01 * number}, cell=cell)
        job_config = OmegaConf.load(job / "config.yaml")
        job_config.model.cell = cell  # the runner's configs name the model by model.cell
        job_config.model.units = width
        OmegaConf.save(job_config, job / "config.yaml")
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "README.md").write_text("intro\n<!-- study:toy -->\nold\n<!-- /study:toy -->\nend\n")
    assert studies.main(["--sweeps", str(tmp_path / "studies"), "--only", "toy", "--experiments", str(experiments)]) == 0
    readme = (experiments / "README.md").read_text()
    assert "old" not in readme and readme.startswith("intro\n<!-- study:toy -->\nJobs: 24 (24 ok).") and readme.endswith("end\n")
    assert "Holm's correction over all 12 comparisons" in readme
    table = [line for line in readme.splitlines() if line.startswith("| gru") or line.startswith("| minimal_rnn")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    pairs = sorted((row[0], row[1], row[2]) for row in cells)
    assert pairs == sorted(
        (cell, rule, against)
        for cell in ("gru", "minimal_rnn")
        for rule, against in [
            ("random_gate", "none (4 units)"),
            ("taylor_prune", "none (4 units)"),
            ("none", "none (4 units)"),  # the narrow control against the wide one: what the width alone does
            ("taylor_prune", "random_gate"),
            ("taylor_prune", "none (2 units)"),
            ("random_gate", "none (2 units)"),
        ]
    )
    assert {row[-1] for row in cells if row[1] == "taylor_prune"} == {"gate×2 skip×1"}  # the actions.csv of write_job
    assert sorted(p.name for p in (experiments / "results").iterdir()) == ["toy.md", "toy_active_units.png", "toy_val_loss.png"]


# --- real jobs, run in-process ------------------------------------------------------------

REAL = ["data=toy", "model.units=4", "trainer.epochs=2", "trainer.batch_size=1"]
ARMS = {"none": ["rule=none"], "taylor_prune": ["rule=taylor_prune", "rule.fraction=0.25"]}


def run_jobs(sweep: Path, jobs: list[tuple[str, int]]) -> Path:
    """Run ``(rule, seed)`` jobs into ``sweep/0``, ``sweep/1``, ... as the app would."""
    from adaptgrad.composition import compose
    from adaptgrad.run import run

    for number, (rule, seed) in enumerate(jobs):
        overrides = [*ARMS[rule], f"seed={seed}"]
        result = run(compose([*REAL, *overrides]), sweep / str(number), rule_preset=rule, overrides=overrides)
        assert result["status"] == "ok", result
    return sweep


@pytest.fixture(scope="module")
def real_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished taylor_prune job (its dir is ``real_job / "0"``); its log lines in ``console.txt``."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("adaptgrad")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        sweep = run_jobs(tmp_path_factory.mktemp("job"), [("taylor_prune", 0)])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (sweep / "console.txt").write_text("\n".join(lines))
    return sweep


def test_console_says_what_ran_and_what_the_rule_did(real_job: Path) -> None:
    from adaptgrad.run import summary_table

    epochs = [line for line in (real_job / "console.txt").read_text().splitlines() if line.startswith("epoch")]
    assert [line.split("  ")[0] for line in epochs] == ["epoch 0 of 0..1", "epoch 1 of 0..1"]
    assert ["active=3/4  gate×1" in epochs[0], "active=2/4  gate×1" in epochs[1]] == [True, True]
    table = summary_table(json.loads((real_job / "0" / "result.json").read_text()), real_job / "0")
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[2:]}
    assert (rows["model"], rows["data"], rows["rule"], rows["layer"]) == (
        "minimal_rnn (4 units)",
        "toy",
        "taylor_prune",
        "minimalrnn",
    )
    assert rows["status"] == "ok" and rows["epochs"] == "2"


def test_tensorboard_events_read_back(real_job: Path) -> None:
    import tensorflow as tf

    runs = list((real_job / "0" / "tb").iterdir())
    assert [run.name for run in runs] == ["rule=taylor_prune,rule.fraction=0.25,seed=0"]
    scalars: dict[str, dict[int, float]] = {}
    histograms: dict[str, dict[int, np.ndarray]] = {}
    for events in runs[0].glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "histograms":
                    histograms.setdefault(value.tag, {})[event.step] = array
                else:
                    scalars.setdefault(value.tag, {})[event.step] = float(array)
    history = pd.read_csv(real_job / "0" / "history.csv")
    for metric in ("loss", "val_loss", "mae", "active_units"):
        assert scalars[metric] == pytest.approx(dict(enumerate(history[metric])), rel=1e-6), metric
    assert scalars["edits/gate"] == {0: 1.0, 1: 1.0}
    actions = pd.read_csv(real_job / "0" / "actions.csv")  # epoch rules act at their epoch's last step
    assert scalars["edits_by_step/gate"] == {step: 1.0 for step in actions.step} and len(actions) == 2
    units = pd.read_parquet(real_job / "0" / "units.parquet")
    for statistic in ("act_grad_sum",):  # what the job's rule (taylor_prune) reads, so all the watch captures
        for epoch in (0, 1):
            bins = histograms[f"minimalrnn/{statistic}"][epoch]  # rows: left edge, right edge, count
            values = units.loc[units["epoch"] == epoch, statistic]
            assert bins[:, 2].sum() == len(values) == 4
            assert bins[0, 0] == pytest.approx(values.min()) and bins[-1, 1] == pytest.approx(values.max())


def test_real_job_records_its_rule_name(real_job: Path, tmp_path: Path) -> None:
    assert json.loads((real_job / "0" / "result.json").read_text())["rule"] == "taylor_prune"
    results = collect(real_job)
    assert results.runs["rule"].tolist() == ["taylor_prune"]
    assert set(results.actions["rule"]) == {"taylor_prune"}
    old = tmp_path / "old"  # a job dir written before result.json recorded the rule
    shutil.copytree(real_job, old)
    result = json.loads((old / "0" / "result.json").read_text())
    del result["rule"]
    (old / "0" / "result.json").write_text(json.dumps(result))
    assert collect(old).runs["rule"].tolist() == ["taylor_prune"]


@pytest.mark.slow
def test_six_job_sweep_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bar of the analysis issue on real jobs (faster twins: the hand-written sweeps above)."""
    sweep = run_jobs(tmp_path / "sweep", [(rule, seed) for rule in ARMS for seed in range(3)])
    results = collect(sweep)
    assert results.runs["rule"].tolist() == ["none"] * 3 + ["taylor_prune"] * 3
    assert results.varying_keys() == ["rule"]
    table = results.compare("val_loss", {"rule": "none"})
    assert table["rule"].tolist() == ["taylor_prune"] and table["n"].tolist() == [3]
    assert table["test"].tolist() == ["paired"]
    capsys.readouterr()
    assert main([str(sweep), "--compare", "rule=none"]) == 0
    assert "| taylor_prune |" in capsys.readouterr().out.split("\n\n")[1]


def test_registered_rule_is_selectable_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptgrad.composition import compose, given_keys
    from adaptgrad.config import rule_name
    from adaptgrad.run import run

    (tmp_path / "zz_my_rules.py").write_text(
        "from adaptgrad import AdaptationRule\n"
        "class ScaleFirst(AdaptationRule, name='zz_scale_first'):\n"
        "    def __init__(self, *, factor=0.5, **schedule):\n"
        "        super().__init__(**schedule)\n"
        "        self.factor = factor\n"
        "    def apply(self, stats, units, epoch):\n"
        "        units.scale([0], self.factor)\n"
        "    def get_config(self):\n"
        "        return {**super().get_config(), 'factor': self.factor}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = ["rules_module=zz_my_rules", "rule=zz_scale_first", "rule.factor=0.25"]
    cfg = compose([*REAL, *overrides])
    assert cfg.rule._target_ == "zz_my_rules.ScaleFirst" and cfg.rule.factor == 0.25 and cfg.rule.every == 1
    result = run(cfg, tmp_path / "job", rule_preset="zz_scale_first", overrides=overrides)
    assert result["status"] == "ok" and result["rule"] == "zz_scale_first"
    assert collect(tmp_path / "job").actions["value"].tolist() == [0.25, 0.25]
    # a rule._target_ override names the class, whatever preset is selected
    target = ["rule._target_=zz_my_rules.ScaleFirst"]
    assert rule_name(compose(target).rule, "gain_rescale", given_keys(target)) == "zz_scale_first"
    assert rule_name(compose(["rule=taylor_prune"]).rule, "taylor_prune") == "taylor_prune"
    with pytest.raises(ValueError, match="rules_module='no_such_module'"):
        compose(["rules_module=no_such_module"])


def test_garbage_or_missing_tables_of_an_ok_job_warn(tmp_path: Path) -> None:
    for seed in (0, 1, 2):
        write_job(tmp_path / str(seed), "taylor_prune", seed, final={"val_loss": 0.5})
    (tmp_path / "0" / "actions.csv").write_text("hello,world\n1,2\n")
    (tmp_path / "1" / "units.parquet").unlink()
    (tmp_path / "2" / "history.csv").unlink()
    with pytest.warns(UserWarning) as caught:
        results = collect(tmp_path)
    messages = [str(w.message) for w in caught]
    assert any("actions.csv: unreadable, skipped (no 'epoch', 'rule', 'action', 'unit', 'value' column" in m for m in messages)
    assert any(m.endswith("1: status ok but units.parquet missing; its part of the tables is empty") for m in messages)
    assert any(m.endswith("2: status ok but history.csv missing; its part of the tables is empty") for m in messages)
    assert results.actions.run_id.unique().tolist() == ["1", "2"]


def test_plots_of_jobs_on_several_layers_show_each_layers_active_units(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for seed in (0, 1):
        write_job(tmp_path / str(seed), "taylor_prune", seed, final={"val_loss": 0.5})
        table = pd.read_csv(tmp_path / str(seed) / "history.csv")
        table = table.rename(columns={"active_units": "active_units/gru_1"}).assign(**{"active_units/gru_2": 3})
        table.to_csv(tmp_path / str(seed) / "history.csv", index=False)
    written = plot(collect(tmp_path), ["rule"], tmp_path / "plots")
    assert [p.name for p in written] == ["val_loss.png", "active_units_gru_1.png", "active_units_gru_2.png"]


def test_plot_title_says_a_key_with_one_value_is_fixed(sweep: Path) -> None:
    ok = collect(sweep).runs.query("status == 'ok'")
    assert _title(ok, ["rule", "model.units"]) == "varies: rule\nfixed: model.units=4, data=Sine, layer=rnn"


def test_an_all_running_sweep_and_a_one_seed_comparison_say_why_cells_are_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_running_job(tmp_path / "0", "none", 0)
    write_running_job(tmp_path / "1", "taylor_prune", 0)
    assert main([str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == "adaptgrad-results: no job ended ok (2 running): the table has no row; rerun when the running jobs have ended"
    )
    shutil.rmtree(tmp_path / "0")
    shutil.rmtree(tmp_path / "1")
    write_job(tmp_path / "0", "none", 0, final={"val_loss": 0.5})
    write_job(tmp_path / "1", "taylor_prune", 0, final={"val_loss": 0.4})
    assert main([str(tmp_path), "--compare", "rule=none"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "adaptgrad-results: blank ci and p: the arm or its control has fewer than 2 seeds (n, n_baseline)"
    ]


def test_a_dir_with_job_tables_but_no_result_is_skipped_with_a_warning(tmp_path: Path) -> None:
    write_job(tmp_path / "0", "none", 0, final={"val_loss": 0.5})
    (tmp_path / "old").mkdir()
    shutil.copy(tmp_path / "0" / "history.csv", tmp_path / "old" / "history.csv")  # an old-format job: tables only
    with pytest.warns(UserWarning, match=r"old: holds history.csv but no result.json nor .hydra/ .*; skipped"):
        assert collect(tmp_path).runs.run_id.tolist() == ["0"]


def test_growth_study_counts_parameter_epochs_and_new_unit_gradients_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real gradmax, random-growth and fixed jobs: the parameters of the units active in each
    epoch (a GRU counted by hand), and each grow value over the batches of its statistic."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    import growth_study

    from adaptgrad.composition import compose
    from adaptgrad.run import run

    base = ["data=toy", "trainer.batch_size=1", "trainer.epochs=3", "model=gru", "model.units=6"]  # 2 batches an epoch
    growth = ["rule=gradmax", "rule.start_units=2", "rule.count=2"]  # 2 units, 4 after epoch 0, 6 after epoch 1
    jobs = [("gradmax", growth), ("gradmax", [*growth, "rule.directions=random"]), ("none", ["rule=none"])]
    for number, (preset, overrides) in enumerate(jobs):
        assert (
            run(compose([*base, *overrides]), tmp_path / str(number), rule_preset=preset, overrides=overrides)["status"] == "ok"
        )
    results, gradients = growth_study.study(collect(tmp_path), (5, 1, 4))  # toy: 5 steps, 1 feature, 4 outputs

    def gru(units: int) -> int:  # kernel, recurrent kernel, 2 biases of 3 blocks; the head Dense(4)
        return 3 * units * (1 + units + 2) + (units + 1) * 4

    runs = results.runs.set_index("run_id")
    assert runs["arm"].tolist() == ["gradmax", "random growth", "fixed 6"]
    assert runs[growth_study.COST].tolist() == [gru(2) + gru(4) + gru(6)] * 2 + [3 * gru(6)]
    grows = results.actions[results.actions["action"] == "grow"].reset_index(drop=True)
    assert grows.groupby("run_id")["epoch"].apply(list).tolist() == [[0, 0, 1, 1]] * 2
    for column in ("run_id", "epoch", "unit"):
        assert gradients[column].astype(str).tolist() == grows[column].astype(str).tolist()
    np.testing.assert_allclose(gradients["norm"], grows["value"] / 2)  # M of one epoch: 2 batches
    np.testing.assert_allclose(runs[growth_study.NORM].iloc[:2], gradients.groupby("run_id")["norm"].mean())
    assert pd.isna(runs[growth_study.NORM].iloc[2])


def test_paired_compare_matches_runs_by_seed_whatever_order_they_were_written(tmp_path: Path) -> None:
    from scipy import stats

    control = {0: 0.50, 1: 0.56, 2: 0.47}
    treated = {2: 0.52, 0: 0.41, 1: 0.50}  # written (and collected) in another seed order than the control
    for number, (rule, seed, value) in enumerate(
        [("none", s, v) for s, v in control.items()] + [("taylor_prune", s, v) for s, v in treated.items()]
    ):
        write_job(tmp_path / str(number), rule, seed, final={"val_loss": value})
    row = collect(tmp_path).compare("val_loss", {"rule": "none"}).iloc[0]
    paired = stats.ttest_rel([treated[s] for s in (0, 1, 2)], [control[s] for s in (0, 1, 2)])
    assert row["test"] == "paired" and row["n"] == 3
    assert row["p"] == pytest.approx(paired.pvalue, rel=1e-9)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(paired.confidence_interval(0.95)), rel=1e-9)


def test_a_metric_only_in_the_history_takes_its_last_epochs_value(arms: Path) -> None:
    results = collect(arms)
    seeds = results.runs["seed"].to_numpy()
    pruned = (results.runs["rule"] == "taylor_prune").to_numpy()
    # history(): loss = 1 / (epoch + 1) + offset, 5 epochs; active_units falls from 4 to 2 when pruning
    np.testing.assert_allclose(results.values("loss").to_numpy(dtype=float), 0.2 + np.where(pruned, 0.2, 0.0) + 0.01 * seeds)
    assert results.values("active_units").tolist() == np.where(pruned, 2.0, 4.0).tolist()
