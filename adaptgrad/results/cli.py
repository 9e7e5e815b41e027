"""The ``adaptgrad-results`` command: summary tables, comparisons against a control, plots.

Example:
    >>> from adaptgrad.results.cli import main
    >>> main(["/no/such/sweep"])
    2

From the shell::

    adaptgrad-results SWEEP                                  # mean ± std per arm, final epoch
    adaptgrad-results SWEEP --metric val_loss --final best   # best epoch instead
    adaptgrad-results SWEEP --compare rule=none              # every rule against the control
    adaptgrad-results SWEEP --by model.cell rule --plot plots/
    adaptgrad-results SWEEP --criteria                       # criteria against the oracle (oracle=N runs)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from adaptgrad.results.collecting import Results, collect
from adaptgrad.results.markdown import format_mean_std, markdown_table
from adaptgrad.results.plotting import plot
from adaptgrad.results.summarising import FINALS

PROG = "adaptgrad-results"


def summary_markdown(table: pd.DataFrame, by: Sequence[str]) -> str:
    """A :meth:`Results.summary` table as Markdown with ``mean ± std`` cells (with a final newline)."""
    metrics = [column.removesuffix(" mean") for column in table.columns if column.endswith(" mean")]
    shown = table[[*by, "n"]].copy()
    for metric in metrics:
        shown[metric] = [format_mean_std(m, s) for m, s in zip(table[f"{metric} mean"], table[f"{metric} std"])]
    return markdown_table(shown) + "\n"


def comparison_markdown(table: pd.DataFrame) -> str:
    """A :meth:`Results.compare` table as Markdown: 3 significant digits, p to 2 (with a final newline)."""
    shown = table.copy()
    for column in ("baseline_mean", "mean", "diff", "ci_low", "ci_high"):
        shown[column] = [f"{v:.3g}" if pd.notna(v) else "" for v in table[column]]
    for column in ("p", "p_adjusted"):
        shown[column] = [f"{v:.2g}" if pd.notna(v) else "" for v in table[column]]
    return markdown_table(shown) + "\n"


def _error(message: str) -> int:
    """Print a command-line error on stderr; return the exit code 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _collect_reporting_warnings(path: str) -> Results:
    """:func:`collect`, printing each of its warnings as one plain stderr line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return collect(path)
        finally:
            for warning in caught:
                print(f"{PROG}: warning: {warning.message}", file=sys.stderr)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. rule=none)")
    return key, value


def _parser() -> argparse.ArgumentParser:
    """The argument parser of ``adaptgrad-results``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Summarise adaptgrad runs: metrics as mean ± std over seeds, grouped by the config keys "
        "that vary between runs (or --by), and compare arms with a control (--compare). "
        "Jobs that are not ok are listed on stderr. Epochs are numbered from 0.",
    )
    parser.add_argument("path", help="a sweep dir, a run dir, or any directory above them")
    parser.add_argument("--format", choices=("markdown", "csv", "parquet"), default="markdown", help="output format")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the table to FILE (needed for parquet)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write one PNG per metric into DIR")
    parser.add_argument(
        "--metric",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="metrics for the tables and plots (NAME or final.NAME); default: all final metrics plus epochs and "
        "wall_time (tables), val_loss and active_units (plots), val_loss (--compare)",
    )
    parser.add_argument(
        "--by", nargs="+", action="extend", metavar="KEY", help="config keys to group by (default: the varying ones)"
    )
    parser.add_argument(
        "--final",
        choices=FINALS,
        default="last",
        help="each run's value: the last epoch's, or the best epoch's (min for losses, max for accuracy-like metrics)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        type=_key_value,
        metavar="KEY=VALUE",
        help="compare every arm with the control selected by KEY=VALUE (e.g. rule=none): difference, 95%% CI, "
        "paired t-test by seed (Welch when seeds differ), Holm-adjusted p",
    )
    parser.add_argument(
        "--criteria",
        action="store_true",
        help="instead of the summary: how well each criterion predicted the oracle (runs with oracle=N), per group: "
        "mean Spearman and Pearson with |oracle|, top-k overlap, cost of its k picks over the best k",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``adaptgrad-results`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    The table goes to stdout or ``--output``: the summary, or with ``--compare`` the comparison
    (in Markdown the summary, then the comparison). Warnings, the written plot files and one
    ``run_id status error.message`` line per job that is not ok go to stderr, so that stdout
    stays machine-readable. Returns 0, or 2 (with a message, no traceback) for bad arguments, a
    path without jobs, an unknown metric or key, a missing matplotlib or an unwritable output.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.format == "parquet" and args.output is None:
        return _error("--format parquet needs --output FILE")
    try:
        results = _collect_reporting_warnings(args.path)
        by = results.varying_keys() if args.by is None else args.by
        table = results.criteria(by) if args.criteria else results.summary(args.metric, by, final=args.final)
        baseline = dict(args.compare or [])
        comparison = None
        if baseline:
            compared = [
                results.compare(
                    metric, baseline, by=[key for key in args.by if key not in baseline] if args.by else None, final=args.final
                )
                for metric in args.metric or ["val_loss"]
            ]
            comparison = pd.concat([c.assign(metric=m) for c, m in zip(compared, args.metric or ["val_loss"])], ignore_index=True)
            comparison = comparison[["metric", *comparison.columns[:-1]]]
    except (OSError, ValueError) as error:
        return _error(str(error))

    if args.plot is not None:
        try:
            plotted = [m.removeprefix("final.") for m in args.metric] if args.metric else None
            written = plot(results, by, args.plot, plotted, baseline or None)
        except ImportError:
            return _error("--plot needs matplotlib: pip install 'adaptgrad[plot]'")
        except OSError as error:
            return _error(f"cannot write plots: {error}")
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        if not written:
            print(f"{PROG}: no ok run has a history of the plotted metrics", file=sys.stderr)

    output = table if comparison is None else comparison
    try:
        if args.format == "parquet":
            output.to_parquet(args.output, index=False)
        else:
            if args.format == "csv":
                text = output.to_csv(index=False)
            else:
                text = markdown_table(table.round(3)) + "\n" if args.criteria else summary_markdown(table, by)
                if comparison is not None:
                    text += "\n" + comparison_markdown(comparison)
            if args.output is None:
                sys.stdout.write(text)
            else:
                args.output.write_text(text, encoding="utf-8")
    except OSError as error:
        return _error(f"cannot write {args.output}: {error}")

    for note in _notes(results, comparison):
        print(f"{PROG}: {note}", file=sys.stderr)
    for _, run in results.runs[results.runs["status"] != "ok"].iterrows():
        message = run.get("error.message")
        message = "" if pd.isna(message) else " ".join(str(message).split())
        print(f"{run['run_id']} {run['status']} {message}".rstrip(), file=sys.stderr)
    return 0


def _notes(results: Results, comparison: pd.DataFrame | None) -> list[str]:
    """What a reader of an empty table or of blank cells needs to know."""
    notes = []
    statuses = results.runs["status"].value_counts()
    if "ok" not in statuses:
        counts = ", ".join(f"{n} {status}" for status, n in statuses.items())
        wait = "; rerun when the running jobs have ended" if "running" in statuses else ""
        notes.append(f"no job ended ok ({counts}): the table has no row{wait}")
    if comparison is not None and ((comparison["n"] < 2) | (comparison["n_baseline"] < 2)).any():
        notes.append("blank ci and p: the arm or its control has fewer than 2 seeds (n, n_baseline)")
    return notes
