"""The one place where redis-py errors become the core's error types."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from redis import exceptions

from binder.errors import BackendError

__all__ = ["CLIENT_ERRORS", "backend_error", "backend_errors", "is_no_group", "masked_url"]

CLIENT_ERRORS = (exceptions.RedisError, OSError, TimeoutError)
"""What the client raises when the server fails, refuses, or cannot be reached."""

_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)([^@/]*)@", re.IGNORECASE)


def masked_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``."""

    def mask(found: re.Match[str]) -> str:
        user, colon, _ = found.group(2).partition(":")
        return f"{found.group(1)}{user}{':***' if colon else ''}@"

    return _USERINFO.sub(mask, url, count=1)


def is_no_group(exc: BaseException) -> bool:
    """The stream or its consumer group does not exist (``NOGROUP``)."""
    return isinstance(exc, exceptions.ResponseError) and str(exc).startswith("NOGROUP")


def backend_error(server: str, action: str, exc: BaseException) -> BackendError:
    """``redis at <server>: <action> failed: <error>`` (raise it ``from exc``)."""
    return BackendError.of("redis", server, action, exc)


@contextlib.contextmanager
def backend_errors(server: str, action: str) -> Iterator[None]:
    """Turn a client failure inside the block into :func:`backend_error`."""
    try:
        yield
    except CLIENT_ERRORS as exc:
        raise backend_error(server, action, exc) from exc
