"""Retry with exponential backoff, and the headers a dead letter carries.

The policy is per input binding, from its ``consumer`` options: up to
``max-attempts`` attempts in all, waiting ``back-off-initial-interval`` *
``back-off-multiplier`` ^ (attempt - 1), capped at ``back-off-max-interval``,
between them. Retries happen in place, so a failing message holds back the
messages behind it in its key lane: order is kept, at the price of latency.
A :class:`~binder.errors.ConversionError` is never retried. A message the backend
delivered before (``InboundRecord.deliveries`` > 1: its consumer died with it) starts at
that attempt, and one delivered more than ``max-attempts`` times is dead-lettered with
:class:`~binder.errors.DeliveryLimitExceeded` without calling the function.

A dead letter keeps the count of its failed attempts as ``x-original-delivery-attempt``
(delivery sets ``x-delivery-attempt`` afresh for whoever consumes the letter) and the
traceback of the cause as ``x-exception-stacktrace``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from binder.errors import ConversionError, DeliveryLimitExceeded, HandlerError, MessageExpired
from binder.message import (
    DELIVERY_ATTEMPT,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
    EXPIRES_AT,
    ORIGINAL_DELIVERY_ATTEMPT,
    ORIGINAL_DESTINATION,
    ORIGINAL_GROUP,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
)
from binder.spi import InboundRecord, OutboundRecord, RawHeaders

__all__ = ["RetryPolicy", "dead_letter_destination", "dead_letter_record", "retry_destination"]

MAX_HEADER_TEXT = 4096
"""The longest ``x-exception-message`` (characters)."""
MAX_STACKTRACE = 4096
"""The longest ``x-exception-stacktrace`` (UTF-8 bytes): a longer one keeps its end, where
the innermost frames and the exception itself are."""
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed message again, and how long to wait first."""

    max_attempts: int = 3
    initial: float = 1.0
    multiplier: float = 2.0
    max_interval: float = 10.0
    retryable: dict[str, bool] = field(default_factory=dict)
    default_retryable: bool = True

    @classmethod
    def from_options(cls, options: Any) -> RetryPolicy:
        """Build from a binding's ``ConsumerOptions``."""
        return cls(
            max_attempts=options.max_attempts,
            initial=options.back_off_initial_interval,
            multiplier=options.back_off_multiplier,
            max_interval=options.back_off_max_interval,
            retryable=dict(options.retryable_exceptions),
            default_retryable=options.default_retryable,
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.initial * self.multiplier ** (attempt - 1), self.max_interval)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt ``attempt`` failing with ``exc`` earns another attempt."""
        if attempt >= self.max_attempts or isinstance(
            exc, ConversionError | DeliveryLimitExceeded | MessageExpired
        ):
            return False
        return self.is_retryable(exc)

    def is_retryable(self, exc: BaseException) -> bool:
        """The most specific class in ``retryable-exceptions`` wins (by MRO), else the default."""
        for klass in type(cause_of(exc)).__mro__:
            for name in (f"{klass.__module__}.{klass.__qualname__}", klass.__qualname__):
                if name in self.retryable:
                    return self.retryable[name]
        return self.default_retryable


def cause_of(exc: BaseException) -> BaseException:
    """What the function raised, for a :class:`HandlerError` wrapping it; else ``exc``."""
    if isinstance(exc, HandlerError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def retry_destination(destination: str, group: str) -> str:
    """``<destination>.<group>.retry``: where ``retry-mode: delayed`` schedules a group's
    retries."""
    return f"{destination}.{group}.retry"


def dead_letter_destination(destination: str, group: str | None, override: str | None) -> str:
    """``<destination>.<group>.dlq`` (``anonymous`` for a consumer without a group)."""
    return override or f"{destination}.{group or ANONYMOUS}.dlq"


def dead_letter_record(
    record: InboundRecord,
    exc: BaseException,
    group: str | None,
    attempts: int,
    origin: str | None = None,
) -> OutboundRecord:
    """The original key, payload and headers, plus why and where it failed.

    Adds ``x-exception-type``, ``x-exception-message``, ``x-exception-stacktrace`` (the
    cause's formatted traceback, its last :data:`MAX_STACKTRACE` bytes), the
    ``x-original-*`` headers, and the number of attempts made as both
    ``x-original-delivery-attempt`` (which no delivery overwrites) and
    ``x-delivery-attempt``.

    Where the original carried :attr:`~binder.spi.InboundRecord.raw_headers` (Kafka),
    the letter's ``raw_headers`` are those, in order and byte-exact (names repeated, null
    values, bytes that are not UTF-8), less any the letter sets, followed by the letter's
    own headers; a binder that can write them writes those instead of ``headers``.

    ``origin`` is the destination named as the original when ``record`` was read from a
    retry destination (``retry-mode: delayed``): the one it was first consumed from.

    The letter asks for its original partition: the dead-letter output keeps it when its
    destination has that many partitions, else places it like any record (by key, else
    with its batch's keyless records); see :class:`binder.outputs.OutputBinding`.
    """
    cause = cause_of(exc)
    own = {
        EXCEPTION_TYPE: f"{type(cause).__module__}.{type(cause).__qualname__}",
        EXCEPTION_MESSAGE: _encodable(str(cause)[:MAX_HEADER_TEXT]),
        EXCEPTION_STACKTRACE: stacktrace(cause),
        ORIGINAL_DESTINATION: origin or record.destination,
        ORIGINAL_GROUP: group or ANONYMOUS,
        ORIGINAL_PARTITION: str(record.partition),
    }
    if record.offset is not None:
        own[ORIGINAL_OFFSET] = str(record.offset)
    own[ORIGINAL_DELIVERY_ATTEMPT] = own[DELIVERY_ATTEMPT] = str(attempts)
    headers = {**record.headers, **own}
    headers.pop(EXPIRES_AT, None)  # a letter does not expire: it is there to be looked at
    raw = _raw_headers(record.raw_headers, own) if record.raw_headers else None
    return OutboundRecord(record.value, record.key, headers, record.partition, raw)


def _raw_headers(original: RawHeaders, own: dict[str, str]) -> list[tuple[str, bytes | None]]:
    """The original's headers exactly as they came, less those named in ``own`` (and
    ``x-expires-at``), then ``own`` in UTF-8."""
    kept = [(n, value) for n, value in original if n not in own and n != EXPIRES_AT]
    kept.extend((name, value.encode()) for name, value in own.items())
    return kept


def stacktrace(exc: BaseException, limit: int = MAX_STACKTRACE) -> str:
    """``exc``'s formatted traceback (its causes first, as Python prints them), cut to its
    last ``limit`` UTF-8 bytes: the innermost frames and the exception line are kept."""
    text = "".join(traceback.format_exception(exc)).rstrip("\n")
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode()
    return "…" + data[-(limit - 3) :].decode("utf-8", "ignore")  # "…" is 3 bytes


def _encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) escaped, as a header needs."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode()
