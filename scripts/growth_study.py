"""Regenerate the growth study (issue 19) in experiments/README.md from its sweep dir.

Run the study first (two commands, at the top of experiments/study_growth.yaml), then::

    python scripts/growth_study.py

It reads ``studies/growth`` (the ``gradmax`` arms, with ``directions`` gradmax and random, and in
``studies/growth/fixed`` the ``none`` arms at both widths) with :func:`adaptgrad.results.collect`,
and reports per arm (``fixed 16``, ``fixed 64``, ``gradmax``, ``random growth``):

- the final epoch's validation accuracy and loss;
- **parameter-epochs**, the training cost: Σ over epochs of the parameters the model trains in
  that epoch, counted on the physical model of its active units (:func:`active_parameters`; what
  :func:`adaptgrad.compact` would give). The units active during epoch e are those active at its
  end (``units.parquet``) less the units grown at its end (``actions.csv``);
- the **gradient norm of the new units' incoming weights** at each growth step: each ``grow``
  action's value, κ‖wᵀM‖ (see :class:`adaptgrad.rules.GradMax`: the norm of the gradient the new
  unit's incoming weights get, summed over the training batches of M since the previous growth
  step), divided by those batches (``units.parquet``'s ``batches``): the norm per batch.

Comparisons, paired by seed (:meth:`Results.compare`), Holm over all of them together: final
validation accuracy of ``gradmax`` and ``random growth`` against both fixed widths and of
``gradmax`` against ``random growth``; the mean new-unit gradient norm per batch of ``gradmax``
against ``random growth``. The tables go to ``experiments/results/growth.md`` and between
``<!-- study:growth -->`` and ``<!-- /study:growth -->`` in experiments/README.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

from adaptgrad.results import Results, collect  # noqa: E402
from adaptgrad.results.cli import comparison_markdown  # noqa: E402
from adaptgrad.results.comparing import holm  # noqa: E402
from adaptgrad.results.markdown import markdown_table  # noqa: E402

from studies import replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ALPHA = 0.05
NORM = "new-unit grad norm"
COST = "parameter-epochs"
ACCURACY = "final.val_accuracy"
COMPARISONS = [
    (ACCURACY, "gradmax", "fixed 16"),
    (ACCURACY, "gradmax", "fixed 64"),
    (ACCURACY, "gradmax", "random growth"),
    (ACCURACY, "random growth", "fixed 16"),
    (ACCURACY, "random growth", "fixed 64"),
    (NORM, "gradmax", "random growth"),
]
"""(metric, arm, baseline arm)."""


def arms(runs: pd.DataFrame) -> pd.Series:
    """Each run's arm: ``fixed N`` (rule none, N units), ``gradmax`` or ``random growth``."""
    directions = runs.get("rule.directions", pd.Series("gradmax", index=runs.index)).fillna("gradmax")
    return pd.Series(
        [
            f"fixed {int(units)}" if rule == "none" else ("random growth" if direction == "random" else str(rule))
            for rule, units, direction in zip(runs["rule"], runs["model.units"], directions)
        ],
        index=runs.index,
        name="arm",
    )


@functools.cache
def active_parameters(cell: str, units: int, steps: int, features: int, classes: int) -> int:
    """Trainable parameters of ``Input((steps, features)) -> cell(units) -> Dense(classes)``, the
    physical model of ``units`` active units.

    Example:
        >>> active_parameters("gru", 16, 8, 8, 10)  # GRU: 3·16·(8 + 16 + 2); Dense: (16 + 1)·10
        1418
    """
    import keras

    from adaptgrad.models import recurrent_layer

    inputs = keras.Input((steps, features))
    model = keras.Model(inputs, keras.layers.Dense(classes)(recurrent_layer(cell, units, False)(inputs)))
    return int(sum(int(v.numpy().size) for v in model.trainable_variables))


def active_per_epoch(results: Results) -> pd.DataFrame:
    """``run_id``, ``epoch``, ``active``: the units active while the epoch trained (at its end,
    less those grown at its end)."""
    ended = results.units.groupby(["run_id", "epoch"])["active"].sum().rename("ended")
    grown = results.actions[results.actions["action"] == "grow"].groupby(["run_id", "epoch"]).size().rename("grown")
    table = pd.concat([ended, grown], axis=1).fillna(0)
    return table.assign(active=(table["ended"] - table["grown"]).astype(int))[["active"]].reset_index()


def parameter_epochs(results: Results, shape: tuple[int, int, int]) -> pd.Series:
    """Per run (indexed like ``results.runs``): Σ over epochs of :func:`active_parameters`;
    ``shape`` is (steps, features, classes) of the data."""
    active = active_per_epoch(results).merge(results.runs[["run_id", "model.cell"]], on="run_id")
    active["parameters"] = [active_parameters(c, int(n), *shape) for c, n in zip(active["model.cell"], active["active"])]
    total = active.groupby("run_id")["parameters"].sum()
    return results.runs["run_id"].map(total).rename(COST)


def new_unit_gradients(results: Results) -> pd.DataFrame:
    """One row per grown unit: ``run_id``, ``epoch``, ``unit`` and ``norm``, its incoming-weight
    gradient norm per batch of M (the ``grow`` value over the batches since the previous growth step)."""
    grows = results.actions[results.actions["action"] == "grow"][["run_id", "epoch", "unit", "value"]]
    batches = results.units.groupby(["run_id", "epoch"])["batches"].first().reset_index()
    rows = []
    for run_id, own in grows.groupby("run_id"):
        seen = batches[batches["run_id"] == run_id].set_index("epoch")["batches"]
        previous = -1
        for epoch in sorted(own["epoch"].unique()):
            window = int(seen.loc[previous + 1 : epoch].sum())
            step = own[own["epoch"] == epoch]
            rows.append(step.assign(norm=step["value"] / window))
            previous = epoch
    columns = ["run_id", "epoch", "unit", "norm"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def study(results: Results, shape: tuple[int, int, int]) -> tuple[Results, pd.DataFrame]:
    """``results`` with the columns ``arm``, ``parameter-epochs`` and ``new-unit grad norm`` (the
    run's mean over its grown units) in ``runs``; and :func:`new_unit_gradients`."""
    gradients = new_unit_gradients(results)
    runs = results.runs.assign(arm=arms(results.runs), **{COST: parameter_epochs(results, shape)})
    runs[NORM] = runs["run_id"].map(gradients.groupby("run_id")["norm"].mean())
    return dataclasses.replace(results, runs=runs), gradients


def comparisons(results: Results) -> pd.DataFrame:
    """:data:`COMPARISONS`, paired by seed, ``p_adjusted`` by Holm over all of them."""
    rows = []
    for metric, arm, baseline in COMPARISONS:
        table = results.compare(metric, {"arm": baseline}, by=[])
        rows.append(table[table["arm"] == arm].assign(metric=metric.removeprefix("final."), against=baseline))
    table = pd.concat(rows, ignore_index=True)
    table["p_adjusted"] = holm(table["p"].to_numpy(dtype=float))
    return table


def block(results: Results, gradients: pd.DataFrame, compared: pd.DataFrame) -> str:
    """The Markdown of the study: the summary, the comparisons and the gradient norms per growth step."""
    runs = results.runs[results.runs["status"] == "ok"]
    order = ["fixed 16", "fixed 64", "gradmax", "random growth"]
    summary = runs.groupby("arm").agg(
        n=("run_id", "size"),
        acc=(ACCURACY, "mean"),
        acc_sd=(ACCURACY, "std"),
        loss=("final.val_loss", "mean"),
        loss_sd=("final.val_loss", "std"),
        final_units=("final.active_units", "mean"),
        cost=(COST, "mean"),
        norm=(NORM, "mean"),
        norm_sd=(NORM, "std"),
        wall=("wall_time", "mean"),
    )
    summary = summary.reindex([a for a in order if a in summary.index])
    fixed = summary["cost"].get("fixed 64")
    shown = pd.DataFrame(
        {
            "arm": summary.index,
            "n": summary["n"].to_numpy(),
            "val_accuracy": [f"{m:.4f} ± {s:.4f}" for m, s in zip(summary["acc"], summary["acc_sd"])],
            "val_loss": [f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["loss"], summary["loss_sd"])],
            "final units": [f"{u:.0f}" for u in summary["final_units"]],
            COST: [f"{c:,.0f}" + (f" ({c / fixed:.2f}×)" if fixed else "") for c in summary["cost"]],
            f"{NORM} (per batch)": [
                "" if pd.isna(m) else f"{m:.4f} ± {s:.4f}" for m, s in zip(summary["norm"], summary["norm_sd"])
            ],
            "wall_time (s)": [f"{w:.0f}" for w in summary["wall"]],
        }
    )
    better = compared["diff"] > 0  # both metrics: higher is better (a larger new-unit gradient is GradMax's aim)
    compared = compared.assign(
        verdict=["no evidence" if not p < ALPHA else ("better" if b else "worse") for p, b in zip(compared["p_adjusted"], better)]
    )
    columns = [
        "metric",
        "arm",
        "against",
        "n",
        "baseline_mean",
        "mean",
        "diff",
        "ci_low",
        "ci_high",
        "p",
        "p_adjusted",
        "verdict",
    ]
    per_step = gradients.merge(runs[["run_id", "arm"]], on="run_id")
    per_step = per_step.groupby(["epoch", "arm"])["norm"].mean().unstack("arm")
    steps = pd.DataFrame({"after epoch": per_step.index})
    for arm in per_step.columns:
        steps[arm] = [f"{v:.4f}" for v in per_step[arm]]
    if {"gradmax", "random growth"} <= set(per_step.columns):
        steps["gradmax / random"] = [f"{v:.2f}" for v in per_step["gradmax"] / per_step["random growth"]]
    statuses = results.runs["status"].value_counts().to_dict()
    return "\n".join(
        [
            f"Jobs: {len(results.runs)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}).",
            "",
            markdown_table(shown).strip(),
            "",
            f"`{COST}`: Σ over epochs of the trainable parameters of the physical model of the units active in that "
            f"epoch (in brackets: relative to `fixed 64`). `{NORM}`: per run, the mean over its grown units of the "
            "norm of the gradient of the unit's incoming weights at the growth step, per batch (the `grow` value "
            "κ‖wᵀM‖ over M's batches); mean ± std over seeds.",
            "",
            f"Comparisons, paired by seed: `diff` = arm − `against` with its 95 % confidence interval; `p_adjusted`: "
            f"Holm over these {len(compared)} comparisons; 'better'/'worse' when `p_adjusted` < {ALPHA}, else 'no "
            "evidence'.",
            "",
            comparison_markdown(compared[columns]).strip(),
            "",
            f"{NORM} per batch at each growth step (mean over seeds and the step's grown units):",
            "",
            markdown_table(steps).strip(),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "studies" / "growth", help="the study's sweep dir")
    parser.add_argument("--experiments", type=Path, default=ROOT / "experiments", help="where README.md and results/ are")
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 8, 10), help="steps, features, classes of the data (digits)")
    args = parser.parse_args(argv)
    results, gradients = study(collect(args.sweep), tuple(args.shape))
    text = block(results, gradients, comparisons(results))
    out = args.experiments / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "growth.md").write_text(text + "\n", encoding="utf-8")
    readme = args.experiments / "README.md"
    readme.write_text(replace_block(readme.read_text(encoding="utf-8"), "growth", text), encoding="utf-8")
    print(out / "growth.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
