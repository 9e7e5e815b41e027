"""Per-epoch checkpoints of a job, so a killed job resumes exactly where it stopped.

Example:
    >>> import tempfile, pathlib
    >>> from adaptgrad.checkpoint import Checkpoints
    >>> store = Checkpoints(pathlib.Path(tempfile.mkdtemp()), digest="abc")
    >>> store.save(0, {"weights": [1.0, 2.0]})
    >>> store.latest()
    (0, {'weights': [1.0, 2.0]})

A checkpoint is one file ``epoch-NNNN.ckpt``: a SHA-256 digest followed by the pickled state
(model weights, optimizer variables, gates and scales, rule state, the rules' open statistics
windows, the rows of the job's tables) and the digest of the config that wrote it. It is written
atomically; the newest two of the config are kept (another config's files are left alone). A file
whose checksum does not match, that cannot be read, or that another config wrote is skipped with
a warning and the one before it is used (or none: a fresh start).
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


def config_digest(config_text: str) -> str:
    """The digest that identifies a resolved config (its YAML text) in checkpoints."""
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


class Checkpoints:
    """The checkpoints in one directory (created on the first save) of the config whose digest
    is ``digest`` (:func:`config_digest`)."""

    def __init__(self, directory: Path, *, digest: str) -> None:
        self.directory = Path(directory)
        self.digest = digest
        self._writers: dict[Path, str | None] = {}  # file -> digest of the config that wrote it (None: unreadable)

    def _files(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found, reverse=True)

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Store ``state`` as the checkpoint after ``epoch`` and drop all but the newest two."""
        payload = pickle.dumps({"config_digest": self.digest, "state": state}, protocol=pickle.HIGHEST_PROTOCOL)
        blob = hashlib.sha256(payload).digest() + payload
        path = self.directory / f"epoch-{epoch:04d}.ckpt"
        write_atomic(path, lambda temp: temp.write_bytes(blob))
        self._writers[path] = self.digest
        for _, old in [(e, p) for e, p in self._files() if self._writer(p) == self.digest][KEEP:]:
            old.unlink(missing_ok=True)
            self._writers.pop(old, None)

    def _writer(self, path: Path) -> str | None:
        """The digest of the config that wrote ``path`` (each file read at most once)."""
        if path not in self._writers:
            try:
                self._writers[path] = self._read(path)[0]
            except Exception:  # noqa: BLE001 - unreadable: not this config's to remove
                self._writers[path] = None
        return self._writers[path]

    @staticmethod
    def _read(path: Path) -> tuple[str, dict[str, Any]]:
        """``(config digest, state)`` of a checkpoint file (ValueError: checksum mismatch or not a checkpoint)."""
        blob = path.read_bytes()
        digest, payload = blob[:32], blob[32:]
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError("checksum mismatch")
        saved = pickle.loads(payload)
        if not isinstance(saved, dict) or "state" not in saved:
            raise ValueError("not a checkpoint")
        return saved.get("config_digest"), saved["state"]

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        """``(epoch, state)`` of the newest readable checkpoint, or None."""
        for epoch, path in self._files():
            try:
                digest, state = self._read(path)
                self._writers[path] = digest
                if digest != self.digest:
                    raise ValueError("written by another config")
                return epoch, state
            except Exception as error:  # noqa: BLE001 - any unreadable file is skipped the same way
                warnings.warn(f"ignoring checkpoint {path}: {error}", RuntimeWarning, stacklevel=2)
        return None

    def clear(self) -> None:
        """Remove every checkpoint (a job that starts from scratch)."""
        for _, path in self._files():
            path.unlink(missing_ok=True)
