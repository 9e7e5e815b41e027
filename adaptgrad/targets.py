"""From ``module.attr`` and config keys to a call: the one way the runner builds the rule, the
model, the data and the optimizer a config names. No TensorFlow (a target may import it).

Example:
    >>> from adaptgrad.targets import bind
    >>> load = bind("data", "adaptgrad.data.adding", {"length": 10, "samples": 50})
    >>> load().input_shape
    (10, 2)
    >>> bind("data", "adaptgrad.data.adding", {"lenght": 10})
    Traceback (most recent call last):
    ...
    ValueError: data.lenght is not a parameter of adaptgrad.data.adding; valid: length, samples, val_fraction, seed; \
did you mean 'length'?
    >>> bind("data", "adaptgrad.data.nothing", {})
    Traceback (most recent call last):
    ...
    ValueError: data._target_='adaptgrad.data.nothing' cannot be imported (module 'adaptgrad.data' has no attribute \
'nothing'); give module.function of a module on PYTHONPATH

The keywords are checked against the target's signature before it is called, so a typo in a
config key is named with the valid keys and the closest one, whatever the target.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from adaptgrad.checks import did_you_mean

log = logging.getLogger("adaptgrad")


def resolve(section: str, target: Any, what: str = "function") -> Any:
    """The object ``target`` (``module.attr``) names; a ValueError naming ``section._target_`` if
    there is none (``what``: what the user should give, e.g. ``Class``)."""
    module_name, _, attribute = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{section}._target_={target!r} cannot be imported ({error}); give module.{what} of a module on PYTHONPATH"
        ) from error


def findable(section: str, target: Any, what: str = "function") -> None:
    """Check that ``target``'s module is on the path, without importing it (it may import
    TensorFlow): a ValueError naming ``section._target_`` otherwise.

    Example:
        >>> findable("model", "no_such_module.build")
        Traceback (most recent call last):
        ...
        ValueError: model._target_='no_such_module.build' cannot be imported; give module.function of a module on PYTHONPATH
    """
    module_name, _, attribute = str(target).rpartition(".")
    try:
        found = importlib.util.find_spec(module_name) if module_name and attribute else None
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ValueError(f"{section}._target_={target!r} cannot be imported; give module.{what} of a module on PYTHONPATH")


def keywords(target: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``target`` takes, in order; None: any (it takes ``**kwargs``).

    A class's are those of its ``__init__``, followed through ``**kwargs`` into the base classes'
    (a subclass that passes ``**kwargs`` on takes its bases' keywords; ``object`` takes none).

    Example:
        >>> from adaptgrad.rules import TaylorPrune
        >>> keywords(TaylorPrune)[-3:], keywords(lambda a, *, b=1, **more: a)
        (['fraction', 'max_sparsity', 'criterion'], None)
    """
    if not isinstance(target, type):
        return _names(inspect.signature(target))
    names: list[str] = []
    for klass in target.__mro__:
        if klass is object:
            break
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(klass.__init__)
        names += [name for name in _names(signature, open_ok=True) if name != "self" and name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return names


def _names(signature: inspect.Signature, *, open_ok: bool = False) -> list[str] | None:
    parameters = signature.parameters.values()
    if not open_ok and any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def bind(
    section: str,
    target: str | Callable[..., Any],
    keys: Mapping[str, Any],
    *,
    foreign: Collection[str] = (),
    hint: str = "",
) -> functools.partial[Any]:
    """``target`` (a ``module.attr`` string or the object) with ``keys`` as keyword arguments,
    checked to be keywords it takes; call the result (with the arguments the runner supplies).

    Args:
        section: the config section (``rule``, ``model``, ``data``, ``optimizer``) messages name.
        keys: the config's keys for the target (without ``_target_``).
        foreign: keys that may come from a preset of another target (``model=gru`` with
            ``model._target_=my.fn``): dropped with a warning when the target does not take them.
        hint: more advice appended to the message about a key the target does not take.

    Raises:
        ValueError: the target cannot be imported, or does not take a key: the message names
            the key, the valid ones and the closest.
    """
    function = resolve(section, target) if isinstance(target, str) else target
    name = target if isinstance(target, str) else f"{function.__module__}.{function.__qualname__}"
    valid = keywords(function)
    kwargs = dict(keys)
    if valid is not None:
        dropped = sorted(key for key in kwargs if key not in valid and key in foreign)
        if dropped:
            log.warning("%s %s does not take %s from the selected %s preset; ignored", section, name, dropped, section)
        for key in kwargs:
            if key not in valid and key not in foreign:
                raise ValueError(
                    f"{section}.{key} is not a parameter of {name}; valid: {', '.join(valid)}{did_you_mean(key, valid)}{hint}"
                )
        kwargs = {key: value for key, value in kwargs.items() if key in valid}
    return functools.partial(function, **kwargs)
