"""The one place where aio-pika / aiormq errors become the core's error types."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiormq.exceptions

from binder._settings_env import masked
from binder.errors import BackendError

__all__ = ["CLIENT_ERRORS", "backend_error", "backend_errors", "masked_url"]

CLIENT_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
    TimeoutError,
)
"""What the client raises when the broker fails, refuses, or cannot be reached (a closed
channel or connection is a ``ChannelInvalidStateError``, a ``RuntimeError``)."""


def masked_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``."""
    return str(masked(url))


def backend_error(server: str, action: str, exc: BaseException) -> BackendError:
    """``rabbitmq at <server>: <action> failed: <error>`` (raise it ``from exc``)."""
    return BackendError.of("rabbitmq", server, action, exc)


@contextlib.contextmanager
def backend_errors(server: str, action: str) -> Iterator[None]:
    """Turn a client failure inside the block into :func:`backend_error`."""
    try:
        yield
    except CLIENT_ERRORS as exc:
        raise backend_error(server, action, exc) from exc
