"""The one place where client errors become the core's error types."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from aiokafka import errors

from binder.errors import BackendError

__all__ = ["CLIENT_ERRORS", "backend_error", "backend_errors", "connect_errors"]

CLIENT_ERRORS = (errors.KafkaError, OSError, TimeoutError)
"""What the client raises when the broker fails, refuses, or cannot be reached."""


def backend_error(servers: str, action: str, exc: BaseException) -> BackendError:
    """``kafka at <servers>: <action> failed: <error>`` (raise it ``from exc``)."""
    return BackendError.of("kafka", servers, action, exc)


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


@contextlib.contextmanager
def connect_errors(servers: str) -> Iterator[None]:
    """:func:`backend_errors` for connecting, with why the client gave up.

    aiokafka raises a bare "Unable to bootstrap" and logs the cause (a refused
    connection, a TLS certificate that failed to verify, ...) instead: the last error
    it logged during the block is added to the message.
    """
    said = _LastError()
    client_log = logging.getLogger("aiokafka")
    client_log.addHandler(said)
    try:
        yield
    except CLIENT_ERRORS as exc:
        error = backend_error(servers, "connect", exc)
        if said.text:
            error = type(error)(f"{error} (the client said: {said.text})")
        raise error from exc
    finally:
        client_log.removeHandler(said)


class _LastError(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()
