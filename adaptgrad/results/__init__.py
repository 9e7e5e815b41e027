"""Collect the files written by adaptgrad runs and sweeps into pandas tables, summarise and compare them.

Example::

    from adaptgrad.results import collect

    results = collect("multirun/2026-11-27/10-00-00")  # a sweep dir, a run dir, or any parent
    print(results.runs[["run_id", "status", "rule", *results.varying_keys()]])
    print(results.summary(["val_loss"]))                   # mean/std of final.val_loss per arm
    print(results.compare("val_loss", {"rule": "none"}))   # every rule against the control

or, from the shell, ``adaptgrad-results multirun/2026-11-27/10-00-00 --compare rule=none --plot plots``.

One module per job: :mod:`~adaptgrad.results.collecting` (job files -> :class:`Results`),
:mod:`~adaptgrad.results.summarising` (last / best epoch values, mean ± std per group),
:mod:`~adaptgrad.results.comparing` (arms against a control), :mod:`~adaptgrad.results.plotting`,
:mod:`~adaptgrad.results.markdown` (the project's one table renderer) and
:mod:`~adaptgrad.results.cli` (``adaptgrad-results``).
"""

from __future__ import annotations

from adaptgrad.results.cli import main
from adaptgrad.results.collecting import ACTIONS_COLUMNS, HISTORY_COLUMNS, RESULT_COLUMNS, UNITS_COLUMNS, Results, collect

__all__ = ["ACTIONS_COLUMNS", "HISTORY_COLUMNS", "RESULT_COLUMNS", "UNITS_COLUMNS", "Results", "collect", "main"]
