"""Regenerate the tables and plots of experiments/README.md from the study sweep dirs.

Run the studies first (each is one command; see experiments/README.md), then::

    python scripts/studies.py                 # every study found under studies/
    python scripts/studies.py --only adding   # one of them

For each study ``NAME`` it reads ``studies/NAME`` with :func:`adaptgrad.results.collect`, writes
``experiments/results/NAME.md`` (the table that ``adaptgrad-results`` prints, grouped by model
and rule) and ``experiments/results/NAME_val_loss.png`` / ``NAME_active_units.png`` (the plots
that ``adaptgrad-results --plot`` writes), then replaces the block between
``<!-- study:NAME -->`` and ``<!-- /study:NAME -->`` in experiments/README.md with the table and
a comparison of every rule with the ``none`` control of the same model: the difference of the
means and whether it exceeds twice its standard error over seeds.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from adaptgrad.results import collect

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("toy", "adding", "sunspots", "digits")


def rule_names(targets: pd.Series) -> pd.Series:
    """``adaptgrad.rules.TaylorPrune`` -> ``taylor_prune`` (the registered short name)."""
    from adaptgrad.rules import REGISTRY

    by_class = {cls.__name__: name for name, cls in REGISTRY.items()}
    return targets.astype(str).map(lambda target: by_class.get(target.rsplit(".", 1)[-1], target))


def comparison(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per model and rule: mean of ``metric`` minus the ``none`` control's, and its standard error."""
    ok = runs[runs.status == "ok"].assign(rule=lambda f: rule_names(f["rule._target_"]))
    stats = ok.groupby(["model.cell", "rule"])[metric].agg(["mean", "std", "count"]).reset_index()
    rows = []
    for _, row in stats.iterrows():
        control = stats[(stats["model.cell"] == row["model.cell"]) & (stats.rule == "none")]
        if row.rule == "none" or control.empty:
            continue
        control = control.iloc[0]
        diff = row["mean"] - control["mean"]
        se = math.sqrt(row["std"] ** 2 / row["count"] + control["std"] ** 2 / control["count"])
        better = diff > 0 if "accuracy" in metric else diff < 0
        verdict = "within noise" if abs(diff) <= 2 * se else ("better" if better else "worse")
        rows.append({"model": row["model.cell"], "rule": row.rule, f"Δ {metric}": f"{diff:+.2g}", "2·SE": f"{2 * se:.2g}", "vs none": verdict})
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def study(name: str, sweeps: Path, out: Path) -> str:
    """Write the table and plots of one study; return the Markdown block for the README."""
    sweep = sweeps / name
    runs = collect(sweep).runs
    metric = "final.val_accuracy" if "final.val_accuracy" in runs else "final.val_loss"
    shown = ["val_loss", "val_accuracy" if "accuracy" in metric else "val_mae", "active_units", "epochs", "wall_time"]
    table = subprocess.run(
        [sys.executable, "-m", "adaptgrad.results", str(sweep), "--metric", *shown, "--plot", str(out / f"{name}_plots")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    for plot in ("val_loss", "active_units"):
        source = out / f"{name}_plots" / f"{plot}.png"
        if source.exists():
            shutil.move(source, out / f"{name}_{plot}.png")
    shutil.rmtree(out / f"{name}_plots", ignore_errors=True)
    (out / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    statuses = runs.status.value_counts().to_dict()
    lines = [
        f"Jobs: {len(runs)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}).",
        "",
        table,
        "",
        f"Each rule against the `none` control of the same model ({metric.removeprefix('final.')}, final epoch; "
        "'within noise' when the difference of the means is at most twice its standard error over seeds):",
        "",
        markdown(comparison(runs, metric)),
        "",
        f"![validation loss per rule over epochs](results/{name}_val_loss.png)",
        f"![active units per rule over epochs](results/{name}_active_units.png)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=STUDIES, help="studies to regenerate (default: all found)")
    parser.add_argument("--sweeps", type=Path, default=ROOT / "studies", help="where the study sweep dirs are")
    args = parser.parse_args(argv)
    out = ROOT / "experiments" / "results"
    out.mkdir(parents=True, exist_ok=True)
    readme_path = ROOT / "experiments" / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    for name in args.only or [s for s in STUDIES if (args.sweeps / s).is_dir()]:
        block = study(name, args.sweeps, out)
        pattern = re.compile(rf"(<!-- study:{name} -->\n).*?(\n<!-- /study:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"experiments/README.md has no <!-- study:{name} --> block")
        readme = pattern.sub(lambda m, text=block: m.group(1) + text + m.group(2), readme)
        print(f"{name}: {out / (name + '.md')}")
    readme_path.write_text(readme, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
