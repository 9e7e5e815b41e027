"""Writing files atomically (temp file beside the target + rename), without TensorFlow.

Example:
    >>> import tempfile, pathlib
    >>> from adaptgrad.atomic import write_json
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "result.json"
    >>> write_json(path, {"status": "ok", "loss": float("nan")})
    >>> print(path.read_text().strip())
    {
      "status": "ok",
      "loss": null
    }

A killed writer never leaves a half-written file: readers see the previous complete version or
none. Every file of a job dir and every checkpoint is written through :func:`write_atomic`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON atomically (NaN becomes null, inf a string)."""
    write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a DataFrame atomically as CSV or Parquet, by the file's suffix."""
    suffix = Path(path).suffix
    if suffix == ".csv":
        write_atomic(path, lambda temp: frame.to_csv(temp, index=False))
    elif suffix == ".parquet":
        write_atomic(path, lambda temp: frame.to_parquet(temp, index=False))
    else:
        raise ValueError(f"cannot write a table to {path}: use .csv or .parquet")
