"""The one error hierarchy of streambinder.

::

    BinderError                      anything streambinder raises on purpose
    ├── ConfigError (ValueError)     bad configuration, raised at start-up
    │   ├── ExpressionError          a partition-key expression the safe evaluator refuses
    │   └── CapabilityError          a binding asks for something its binder cannot do
    ├── BackendError                 the backend failed (connection, refusal, timeout)
    │   └── ClosedError              the binder, producer or consumer is already closed
    ├── ConversionError (ValueError) a payload that cannot be decoded or encoded
    ├── DeliveryLimitExceeded        the backend delivered a message more than max-attempts times
    ├── MessageExpired               a message received after its x-expires-at
    └── HandlerError                 a user function failed (wraps the original exception)

A :class:`ConfigError` names the key path and the offending value; a
:class:`ConversionError` dead-letters the message without retrying it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "BinderError",
    "CapabilityError",
    "ClosedError",
    "ConfigError",
    "ConversionError",
    "DeliveryLimitExceeded",
    "ExpressionError",
    "HandlerError",
    "MessageExpired",
]


class BinderError(Exception):
    """Base of every error streambinder raises on purpose."""


class ConfigError(BinderError, ValueError):
    """Configuration that cannot work; raised before anything starts (also a ValueError).

    ``path`` is the dotted key path (``binder.bindings.orders-in-0.group``) and
    ``value`` the offending value, both also part of the message.
    """

    def __init__(self, message: str, *, path: str = "", value: Any = None) -> None:
        self.path = path
        self.value = value
        prefix = f"{path}: " if path else ""
        super().__init__(f"{prefix}{message}")


class ExpressionError(ConfigError):
    """A key expression outside the safe language (parse error, dunder, unknown call)."""


class CapabilityError(ConfigError):
    """A binding needs a capability its binder does not declare."""


class BackendError(BinderError):
    """The backend refused or failed an operation; the message says which backend."""

    @classmethod
    def of(cls, system: str, server: str, action: str, exc: BaseException) -> BackendError:
        """``<system> at <server>: <action> failed: <Type>: <message>`` for a client error
        (raise it ``from exc``); ``server`` is already masked."""
        text = str(exc) or type(exc).__name__
        if type(exc).__name__ not in text:
            text = f"{type(exc).__name__}: {text}"
        return cls(f"{system} at {server}: {action} failed: {text}")


class ClosedError(BackendError):
    """An operation on a binder, producer or consumer that is already closed."""


class ConversionError(BinderError, ValueError):
    """A payload could not be decoded into, or encoded from, the declared type.

    Never retried: the same bytes fail the same way every time, so the message
    goes straight to the dead-letter destination.
    """


class DeliveryLimitExceeded(BinderError):
    """The backend has delivered a message more than ``max-attempts`` times (its consumer
    died or lost it each time, as with a poison message that kills its process).

    Raised by the core instead of calling the function once more: the message is
    dead-lettered (or dropped without a dead-letter destination), never retried, so it
    cannot kill one consumer after another.
    """


class MessageExpired(BinderError):
    """A message was received after its ``x-expires-at`` (set by ``producer.ttl`` or
    ``app.send(..., ttl=...)``).

    Raised by the core instead of calling the function: the message is dead-lettered (or
    dropped, with ``consumer.expired: drop``), never retried.
    """


class HandlerError(BinderError):
    """A user function raised; ``__cause__`` is the original exception."""
