"""The project's one Markdown table renderer, and the ``mean ± std`` cell format of its tables.

Example:
    >>> import pandas as pd
    >>> from adaptgrad.results.markdown import markdown_table
    >>> print(markdown_table(pd.DataFrame({"rule": ["none", "taylor_prune"], "n": [3, 3], "val_loss": ["0.52 ± 0.03", "0.4"]})))
    | rule         |   n |    val_loss |
    |:-------------|----:|------------:|
    | none         |   3 | 0.52 ± 0.03 |
    | taylor_prune |   3 |         0.4 |

Every table the project prints or writes (``adaptgrad-results``, the job's console table, the
study tables, the benchmark reports) goes through :func:`markdown_table`, which is pandas'
``DataFrame.to_markdown`` (``tabulate``'s pipe format) with one alignment rule: a column whose
cells are all numbers (or ``mean ± std``) is right-aligned, any other column left-aligned.
Cells are shown as given (``"01"`` stays ``01``); floats with ``:g``; missing values empty.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?|[-+]?inf|nan|n/a"
_NUMERIC_CELL = re.compile(rf"^(?:{_NUMBER})(?: ± (?:{_NUMBER}))?$")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` (its columns, not its index) as a Markdown pipe table, without a final newline."""
    cells = pd.DataFrame({column: [cell_text(value) for value in frame[column]] for column in frame.columns}, dtype=object)
    align = ["right" if _is_numeric(cells[column]) else "left" for column in cells.columns]
    if frame.empty:  # tabulate drops the alignment row of a table without rows
        header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
        return header + "\n|" + "|".join("--:" if a == "right" else ":--" for a in align) + "|"
    return cells.to_markdown(index=False, colalign=align, disable_numparse=True)


def cell_text(value: Any) -> str:
    """A cell as text: floats with ``:g``, missing values empty, ``|`` escaped."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def _is_numeric(cells: pd.Series) -> bool:
    present = [cell for cell in cells if cell != ""]
    return bool(present) and all(_NUMERIC_CELL.match(cell) for cell in present)


def format_mean_std(mean: Any, std: Any) -> str:
    """``mean ± std`` rounded at the std's leading digit (two digits if that is a 1).

    Example:
        >>> format_mean_std(0.12345, 0.0042)
        '0.123 ± 0.004'

    Rounding never goes left of the units ("622 ± 865"). A missing std (a group of one
    run) shows the mean alone, to 4 significant digits.
    """
    if pd.isna(mean):
        return "n/a"
    mean = float(mean)
    if pd.isna(std) or not math.isfinite(mean):
        return f"{mean:.4g}"
    std = float(std)
    if std == 0:
        return f"{mean:.4g} ± 0"
    if not math.isfinite(std):
        return f"{mean:.4g} ± {std}"
    exponent = math.floor(math.log10(std))
    digits = 2 if f"{std:e}".startswith("1") else 1
    decimals = digits - 1 - exponent
    if decimals > 6 or abs(mean) >= 1e9:
        return f"{mean:.3g} ± {std:.{digits}g}"
    decimals = max(decimals, 0)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
