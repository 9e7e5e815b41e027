"""The undo log of :meth:`~adaptgrad.UnitView.transaction`: all of a block's edits, or none.

Example:
    >>> import keras, numpy as np
    >>> from adaptgrad.units.transaction import Journal
    >>> weight, journal = keras.Variable(np.zeros(2)), Journal()
    >>> try:
    ...     with journal.transaction(restore=lambda: None):
    ...         journal.remember(weight, np.array(weight.numpy()))  # before changing it
    ...         _ = weight.assign(np.ones(2))
    ...         raise RuntimeError("rule failed")
    ... except RuntimeError:
    ...     pass
    >>> weight.numpy().tolist()
    [0.0, 0.0]

The view tells the journal each variable's value before it first assigns it (:mod:`.writes` does,
from the copy it reads anyway), so a transaction costs no read of its own: only what the block
changes is put back. Transactions nest; each undoes its own block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["Journal"]


class Journal:
    """Each open transaction's variables as they were before the block first changed them."""

    def __init__(self) -> None:
        self._open: list[dict[int, tuple[Any, np.ndarray]]] = []

    @property
    def recording(self) -> bool:
        """Whether a transaction is open (values passed to :meth:`remember` are kept)."""
        return bool(self._open)

    def remember(self, variable: Any, value: np.ndarray) -> None:
        """``variable`` is about to change; ``value`` (not modified afterwards) is its current value."""
        for before in self._open:
            before.setdefault(id(variable), (variable, value))

    @contextlib.contextmanager
    def transaction(self, restore: Callable[[], None]) -> Iterator[None]:
        """If the block raises: put back every variable remembered in it, call ``restore`` (the
        caller's own state), re-raise."""
        before: dict[int, tuple[Any, np.ndarray]] = {}
        self._open.append(before)
        try:
            yield
        except BaseException:
            for variable, value in before.values():
                variable.assign(value)
            restore()
            raise
        finally:
            self._open.pop()  # transactions nest: the innermost closes first
