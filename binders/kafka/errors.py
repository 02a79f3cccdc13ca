"""The one place where client errors become the core's error types."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiokafka import errors

from binder.errors import BackendError

__all__ = ["CLIENT_ERRORS", "backend_error", "backend_errors"]

CLIENT_ERRORS = (errors.KafkaError, OSError, TimeoutError)
"""What the client raises when the broker fails, refuses, or cannot be reached."""


def backend_error(servers: str, action: str, exc: BaseException) -> BackendError:
    """``kafka at <servers>: <action> failed: <error>`` (raise it ``from exc``)."""
    text = str(exc) or type(exc).__name__
    if type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return BackendError(f"kafka at {servers}: {action} failed: {text}")


@contextlib.contextmanager
def backend_errors(servers: str, action: str) -> Iterator[None]:
    """Turn a client failure inside the block into :func:`backend_error`.

    ``action`` says what was being done (``"create topic 'orders'"``). Hot paths
    catch :data:`CLIENT_ERRORS` themselves and call :func:`backend_error`.
    """
    try:
        yield
    except CLIENT_ERRORS as exc:
        raise backend_error(servers, action, exc) from exc
