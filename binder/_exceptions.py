"""Whether a ``retryable-exceptions`` name can ever match: the start-up warning's rule.

Retry matching (:meth:`binder.retry.RetryPolicy.is_retryable`) compares a raised
exception's classes with the configured names, as ``module.QualName`` or ``QualName``.
A name is *known* when a class that would match it is defined by an already loaded
module, looked up without importing anything:

- a dotted name ``a.b.Error``: the longest prefix that is a module in ``sys.modules``,
  then attributes down from it; the class found must be defined there (its
  ``__module__.__qualname__`` is the name), as matching compares the defining module.
  ``Outer.Inner`` (a qualified name without module) is also looked for as below.
- a simple name ``Error``: a builtin exception, or an exception class of that
  ``__qualname__`` in the namespace of any loaded module.

Module namespaces are read with ``vars()``, so no module ``__getattr__`` runs. An unknown
name is only a warning: the module defining it may be imported later.
"""

from __future__ import annotations

import builtins
import logging
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any

__all__ = ["unknown_exception_names", "warn_unknown_exceptions"]

log = logging.getLogger("binder.config")


def unknown_exception_names(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that no loaded module defines an exception class for."""
    return [name for name in names if not _is_known(name)]


def warn_unknown_exceptions(names: Iterable[str], path: str) -> list[str]:
    """Log a warning for each unknown name, at key path ``path``; returns those names."""
    unknown = unknown_exception_names(names)
    for name in unknown:
        log.warning(
            "%s.%s: no loaded module defines an exception class %r, so it matches nothing yet",
            path,
            name,
            name,
        )
    return unknown


def _is_known(name: str) -> bool:
    if "." in name and _defined_at(name):
        return True
    return any(_qualname_in(vars(module), name) for module in _namespaces())


def _namespaces() -> list[ModuleType]:
    return [builtins, *(m for m in list(sys.modules.values()) if isinstance(m, ModuleType))]


def _defined_at(name: str) -> bool:
    """Whether the dotted ``name`` is ``module.QualName`` of a loaded exception class."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is not None:
            found = _walk(vars(module), parts[split:])
            return _is_exception(found) and f"{found.__module__}.{found.__qualname__}" == name
    return False


def _qualname_in(namespace: dict[str, Any], name: str) -> bool:
    found = _walk(namespace, name.split("."))
    return _is_exception(found) and found.__qualname__ == name


def _walk(namespace: dict[str, Any], parts: list[str]) -> Any:
    value = namespace.get(parts[0])
    for part in parts[1:]:
        value = vars(value).get(part) if isinstance(value, type) else None
    return value


def _is_exception(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)
