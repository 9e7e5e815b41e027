"""Regenerate the tables and plots of experiments/README.md from the study sweep dirs.

Run the studies first (two commands each; see experiments/README.md), then::

    python scripts/studies.py                 # every study found under studies/
    python scripts/studies.py --only adding   # some of them (Holm over their comparisons only)

For each study ``NAME`` it reads ``studies/NAME`` (the rules at full width and, in
``studies/NAME/width``, the ``none`` control at the gating rules' final width) with
:func:`adaptgrad.results.collect`, writes ``experiments/results/NAME.md`` (the summary table, as
``adaptgrad-results`` prints it) and ``NAME_val_loss.png`` / ``NAME_active_units.png``, and
compares, paired by seed (:meth:`Results.compare`):

- every arm with the ``none`` control at full width, of the same model;
- each gating rule with ``random_gate`` (same schedule and floor, random units): what the
  criterion is worth;
- each gating rule and ``random_gate`` with ``none`` at the final width (what a plain narrow
  model scores).

Every comparison of every study regenerated is one family: p-values are Holm-adjusted over all
of them together. The oracle table (``experiments/results/oracle.md``, from
``scripts/oracle_study.py``) is copied into its block too. Each block replaces the text between
``<!-- study:NAME -->`` and ``<!-- /study:NAME -->`` in experiments/README.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from adaptgrad.results import Results, collect
from adaptgrad.results.cli import comparison_markdown, summary_markdown
from adaptgrad.results.comparing import holm
from adaptgrad.results.plotting import plot
from adaptgrad.results.summarising import higher_is_better

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("toy", "adding", "sunspots", "digits")
BY = ["rule", "model.cell", "model.units"]
GATING = ("taylor_prune", "taylor_gate_ema")
"""The rules that gate down to the floor as random_gate does (drop_regrow keeps its width)."""
ALPHA = 0.05


def edits_per_run(results: Results) -> pd.DataFrame:
    """Per (model, rule): the mean number of edits of each kind per ok run, as ``gate×4 reinit×1.5``."""
    keys = ["rule", "model.cell"]
    ok = results.runs.loc[results.runs["status"] == "ok", ["run_id", *keys]]
    counts = (
        results.actions[results.actions["run_id"].isin(ok["run_id"])].groupby(["run_id", "action"]).size().unstack(fill_value=0)
    )
    counts = ok.set_index("run_id").join(counts).fillna(0)
    actions = [column for column in counts.columns if column not in keys]
    mean = counts.groupby(keys)[actions].mean()
    text = [" ".join(f"{a}×{row[a]:.3g}" for a in actions if row[a] > 0) or "no edit" for _, row in mean.iterrows()]
    return pd.DataFrame({"edits per run": text}, index=mean.index).reset_index()


def comparisons(name: str, results: Results, metric: str) -> pd.DataFrame:
    """The study's comparisons (see the module docstring), unadjusted."""
    units = results.runs["model.units"].astype(int)
    full, final = units.max(), units.min()
    parts = []
    plan = [
        ({"rule": "none", "model.units": full}, None, f"none ({full} units)"),
        ({"rule": "random_gate", "model.units": full}, GATING, "random_gate"),
    ]
    if final < full:  # the width control ran
        plan.append(({"rule": "none", "model.units": final}, (*GATING, "random_gate"), f"none ({final} units)"))
    for baseline, arms, label in plan:
        table = results.compare(metric, baseline, by=["model.cell"])
        if arms is not None:
            table = table[table["rule"].isin(arms)]
        parts.append(table.assign(study=name, against=label))
    return pd.concat(parts, ignore_index=True)


def study_block(name: str, results: Results, compared: pd.DataFrame, metric: str, out: Path, family: int) -> str:
    """Write the table and plots of one study; return the Markdown block for the README."""
    runs = results.runs
    shown = ["val_loss", "val_accuracy" if metric == "val_accuracy" else "val_mae", "active_units", "epochs", "wall_time"]
    table = summary_markdown(results.summary(shown, BY), BY).strip()
    (out / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    with tempfile.TemporaryDirectory() as plots:
        for path in plot(results, ["rule", "model.cell"], Path(plots), ["val_loss", "active_units"], {"rule": "none"}):
            shutil.move(path, out / f"{name}_{path.name}")
    better = compared["diff"] > 0 if higher_is_better(metric) else compared["diff"] < 0
    compared = compared.assign(
        verdict=["no evidence" if not p < ALPHA else ("better" if b else "worse") for p, b in zip(compared["p_adjusted"], better)]
    ).merge(edits_per_run(results), on=["rule", "model.cell"], how="left")
    columns = ["model.cell", "rule", "against", "n", "baseline_mean", "mean", "diff", "ci_low", "ci_high", "p", "p_adjusted"]
    rendered = comparison_markdown(compared[[*columns, "verdict", "edits per run"]]).strip()
    statuses = runs["status"].value_counts().to_dict()
    return "\n".join(
        [
            f"Jobs: {len(runs)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}).",
            "",
            table,
            "",
            f"Comparisons ({metric}, final epoch), paired by seed: `diff` = arm − `against` with its 95 % confidence "
            f"interval; `p_adjusted` is Holm's correction over all {family} comparisons of this page (every study "
            f"together); 'better'/'worse' when `p_adjusted` < {ALPHA}, else 'no evidence' (with 3 seeds: no evidence "
            "of a difference, not evidence of none). `edits per run`: how often the arm acted (`actions.csv`).",
            "",
            rendered,
            "",
            f"![validation loss per rule over epochs](results/{name}_val_loss.png)",
            f"![active units per rule over epochs](results/{name}_active_units.png)",
        ]
    )


def replace_block(readme: str, name: str, block: str) -> str:
    pattern = re.compile(rf"(<!-- study:{name} -->\n).*?(\n<!-- /study:{name} -->)", re.S)
    if not pattern.search(readme):
        raise SystemExit(f"experiments/README.md has no <!-- study:{name} --> block")
    return pattern.sub(lambda m, text=block: m.group(1) + text + m.group(2), readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=STUDIES, help="studies to regenerate (default: all found)")
    parser.add_argument("--sweeps", type=Path, default=ROOT / "studies", help="where the study sweep dirs are")
    parser.add_argument("--experiments", type=Path, default=ROOT / "experiments", help="where README.md and results/ are")
    args = parser.parse_args(argv)
    out = args.experiments / "results"
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or [s for s in STUDIES if (args.sweeps / s).is_dir()]
    collected = {name: collect(args.sweeps / name) for name in names}
    metrics = {name: "val_accuracy" if "final.val_accuracy" in r.runs else "val_loss" for name, r in collected.items()}
    family = pd.concat([comparisons(name, r, metrics[name]) for name, r in collected.items()], ignore_index=True)
    family["p_adjusted"] = holm(family["p"].to_numpy(dtype=float))
    readme_path = args.experiments / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    for name, results in collected.items():
        block = study_block(name, results, family[family["study"] == name], metrics[name], out, len(family))
        readme = replace_block(readme, name, block)
        print(f"{name}: {out / (name + '.md')}")
    oracle = out / "oracle.md"
    if oracle.is_file():
        readme = replace_block(readme, "oracle", oracle.read_text(encoding="utf-8").strip())
    readme_path.write_text(readme, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
