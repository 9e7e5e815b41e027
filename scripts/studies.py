"""Regenerate the tables and plots of experiments/README.md from the study sweep dirs.

Run the studies first (each is one command; see experiments/README.md), then::

    python scripts/studies.py                 # every study found under studies/
    python scripts/studies.py --only adding   # one of them

For each study ``NAME`` it reads ``studies/NAME`` with :func:`adaptgrad.results.collect`, writes
``experiments/results/NAME.md`` (the summary table, grouped by rule and model, as
``adaptgrad-results`` prints it) and ``experiments/results/NAME_val_loss.png`` /
``NAME_active_units.png`` (one panel per rule against the ``none`` control, per model), then
replaces the block between ``<!-- study:NAME -->`` and ``<!-- /study:NAME -->`` in
experiments/README.md with the table and the comparison of every rule with the ``none`` control
of the same model (:meth:`Results.compare`: paired by seed, 95 % CI, Holm-adjusted p over the
study's rows), with how often each rule acted (edits per run, from ``actions.csv``).
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
from adaptgrad.results.plotting import plot
from adaptgrad.results.summarising import higher_is_better

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("toy", "adding", "sunspots", "digits")
BY = ["rule", "model.cell"]
CONTROL = {"rule": "none"}
ALPHA = 0.05


def edits_per_run(results: Results) -> pd.DataFrame:
    """Per (model, rule): the mean number of edits of each kind per ok run, as ``gate×4 reinit×1.5``."""
    ok = results.runs.loc[results.runs["status"] == "ok", ["run_id", *BY]]
    counts = (
        results.actions[results.actions["run_id"].isin(ok["run_id"])].groupby(["run_id", "action"]).size().unstack(fill_value=0)
    )
    counts = ok.set_index("run_id").join(counts).fillna(0)
    actions = [column for column in counts.columns if column not in BY]
    mean = counts.groupby(BY)[actions].mean()
    text = [" ".join(f"{a}×{row[a]:.3g}" for a in actions if row[a] > 0) or "no edit" for _, row in mean.iterrows()]
    return pd.DataFrame({"edits per run": text}, index=mean.index).reset_index()


def comparison(results: Results, metric: str) -> pd.DataFrame:
    """Every rule against the ``none`` control of the same model, with a verdict and its edits per run."""
    table = results.compare(metric, CONTROL, by=["model.cell"])
    better = table["diff"] > 0 if higher_is_better(metric) else table["diff"] < 0
    table["vs none"] = [
        "no evidence" if not p < ALPHA else ("better" if b else "worse") for p, b in zip(table["p_adjusted"], better)
    ]
    return table.merge(edits_per_run(results), on=BY, how="left")


def study(name: str, sweeps: Path, out: Path) -> str:
    """Write the table and plots of one study; return the Markdown block for the README."""
    results = collect(sweeps / name)
    runs = results.runs
    metric = "val_accuracy" if "final.val_accuracy" in runs else "val_loss"
    shown = ["val_loss", "val_accuracy" if metric == "val_accuracy" else "val_mae", "active_units", "epochs", "wall_time"]
    table = summary_markdown(results.summary(shown, BY), BY).strip()
    (out / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    with tempfile.TemporaryDirectory() as plots:
        for path in plot(results, BY, Path(plots), ["val_loss", "active_units"], CONTROL):
            shutil.move(path, out / f"{name}_{path.name}")
    compared = comparison(results, metric)
    columns = ["model.cell", "rule", "n", "test", "baseline_mean", "mean", "diff", "ci_low", "ci_high", "p", "p_adjusted"]
    rendered = comparison_markdown(compared[[*columns, "vs none", "edits per run"]]).strip()
    statuses = runs["status"].value_counts().to_dict()
    lines = [
        f"Jobs: {len(runs)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}).",
        "",
        table,
        "",
        f"Each rule against the `none` control of the same model ({metric}, final epoch): `diff` = rule − none "
        f"with its 95 % confidence interval, from a t-test paired by seed (`test`); `p_adjusted` is Holm's "
        f"correction over the {len(compared)} rows; 'better'/'worse' when `p_adjusted` < {ALPHA}, else 'no evidence' "
        "(with few seeds, no evidence of a difference, not evidence of none). `edits per run`: how often the rule "
        "acted, the mean count of each edit over the arm's runs (`actions.csv`).",
        "",
        rendered,
        "",
        f"![validation loss per rule over epochs](results/{name}_val_loss.png)",
        f"![active units per rule over epochs](results/{name}_active_units.png)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=STUDIES, help="studies to regenerate (default: all found)")
    parser.add_argument("--sweeps", type=Path, default=ROOT / "studies", help="where the study sweep dirs are")
    parser.add_argument("--experiments", type=Path, default=ROOT / "experiments", help="where README.md and results/ are")
    args = parser.parse_args(argv)
    out = args.experiments / "results"
    out.mkdir(parents=True, exist_ok=True)
    readme_path = args.experiments / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    for name in args.only or [s for s in STUDIES if (args.sweeps / s).is_dir()]:
        block = study(name, args.sweeps, out)
        pattern = re.compile(rf"(<!-- study:{name} -->\n).*?(\n<!-- /study:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"{readme_path} has no <!-- study:{name} --> block")
        readme = pattern.sub(lambda m, text=block: m.group(1) + text + m.group(2), readme)
        print(f"{name}: {out / (name + '.md')}")
    readme_path.write_text(readme, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
