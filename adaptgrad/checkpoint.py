"""Per-epoch checkpoints of a job, so a killed job resumes exactly where it stopped.

Example:
    >>> import tempfile, pathlib
    >>> from adaptgrad.checkpoint import Checkpoints
    >>> store = Checkpoints(pathlib.Path(tempfile.mkdtemp()))
    >>> store.save(0, {"weights": [1.0, 2.0]})
    >>> store.latest()
    (0, {'weights': [1.0, 2.0]})

A checkpoint is one file ``epoch-NNNN.ckpt``: a SHA-256 digest followed by the pickled state
(model weights, optimizer variables, gates and scales, rule state, the rows of the job's tables).
It is written atomically; the newest two are kept. A file whose digest does not match, or that
cannot be read, is skipped with a warning and the one before it is used (or none: a fresh start).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from adaptgrad.atomic import write_atomic

_NAME = re.compile(r"^epoch-(\d{4,})\.ckpt$")
KEEP = 2


class Checkpoints:
    """The checkpoints in one directory (created on the first save)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _files(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found, reverse=True)

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Store ``state`` as the checkpoint after ``epoch`` and drop all but the newest two."""
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        blob = hashlib.sha256(payload).digest() + payload
        write_atomic(self.directory / f"epoch-{epoch:04d}.ckpt", lambda temp: temp.write_bytes(blob))
        for _, old in self._files()[KEEP:]:
            old.unlink(missing_ok=True)

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        """``(epoch, state)`` of the newest readable checkpoint, or None."""
        for epoch, path in self._files():
            try:
                blob = path.read_bytes()
                digest, payload = blob[:32], blob[32:]
                if hashlib.sha256(payload).digest() != digest:
                    raise ValueError("checksum mismatch")
                return epoch, pickle.loads(payload)
            except Exception as error:  # noqa: BLE001 - any unreadable file is skipped the same way
                warnings.warn(f"ignoring corrupt checkpoint {path}: {error}", RuntimeWarning, stacklevel=2)
        return None

    def clear(self) -> None:
        """Remove every checkpoint (a job that starts from scratch)."""
        for _, path in self._files():
            path.unlink(missing_ok=True)
