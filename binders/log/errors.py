"""The one place where the log engine's failures become the core's error types.

The engine raises the core's :class:`~binder.errors.BackendError` (a damaged segment:
:class:`~binders.log.engine.segment.CorruptLogError`) and
:class:`~binder.errors.ClosedError` itself. What else reaches the binder comes from
the operating system under a durable log (a full disk, a directory removed, a
permission): :data:`ENGINE_ERRORS`, turned here into a ``BackendError`` that says
what was being done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from binder.errors import BackendError

__all__ = ["ENGINE_ERRORS", "backend_error", "engine_errors"]

ENGINE_ERRORS = (OSError,)
"""What the engine lets through when its storage fails."""


def backend_error(action: str, exc: BaseException) -> BackendError:
    """``log: <action> failed: <error>`` (raise it ``from exc``)."""
    return BackendError(f"log: {action} failed: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Turn a storage failure inside the block into :func:`backend_error`.

    ``action`` says what was being done (``"append to 'orders'"``). Hot paths catch
    :data:`ENGINE_ERRORS` themselves and call :func:`backend_error`.
    """
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise backend_error(action, exc) from exc
