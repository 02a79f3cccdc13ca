"""The message a function receives or returns, and the header names the core sets."""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, final

from binder.errors import ConversionError

__all__ = [
    "CONTENT_TYPE",
    "DELAY",
    "DELIVERY_ATTEMPT",
    "DELIVER_AT",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_STACKTRACE",
    "EXCEPTION_TYPE",
    "EXPIRES_AT",
    "ORIGINAL_DELIVERY_ATTEMPT",
    "ORIGINAL_DESTINATION",
    "ORIGINAL_GROUP",
    "ORIGINAL_OFFSET",
    "ORIGINAL_PARTITION",
    "TOMBSTONE",
    "Message",
    "decode_key",
    "key_bytes",
    "normalize_headers",
]

T = TypeVar("T")

CONTENT_TYPE = "contentType"
DELIVERY_ATTEMPT = "x-delivery-attempt"
EXCEPTION_TYPE = "x-exception-type"
EXCEPTION_MESSAGE = "x-exception-message"
EXCEPTION_STACKTRACE = "x-exception-stacktrace"
ORIGINAL_DELIVERY_ATTEMPT = "x-original-delivery-attempt"
ORIGINAL_DESTINATION = "x-original-destination"
ORIGINAL_GROUP = "x-original-group"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
DELAY = "x-delay"
"""On an outbound message: hold it back this many milliseconds (RabbitMQ's spelling)."""
DELIVER_AT = "x-deliver-at"
"""On a delayed message: when it is due (epoch ms); set by the core in place of ``x-delay``."""
EXPIRES_AT = "x-expires-at"
"""When the message expires (epoch ms): a consumer receiving it later does not handle it."""


@final
class _Tombstone:
    """The type of :data:`TOMBSTONE`: one instance, kept by copy and pickle."""

    __slots__ = ()
    _instance: _Tombstone | None = None

    def __new__(cls) -> _Tombstone:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "TOMBSTONE"

    def __reduce__(self) -> str:
        return "TOMBSTONE"

    def __copy__(self) -> _Tombstone:
        return self

    def __deepcopy__(self, memo: Any) -> _Tombstone:
        return self


TOMBSTONE = _Tombstone()
"""A payload that sends a record without a value: a tombstone, which tells a compacted topic
to forget its key (``await app.send("users", TOMBSTONE, key="u-1")``, or returned by a
function, alone or as ``Message(TOMBSTONE, key=...)``). Only a binder declaring
``Capabilities.tombstones`` sends one; any other refuses it with a
:class:`~binder.errors.CapabilityError` naming the binder. ``None`` is not a tombstone:
returned, it sends nothing; given to ``app.send``, it is encoded (JSON ``null``).

A received tombstone is delivered without decoding: as ``None`` to a parameter that accepts
it (``Optional[X]``, ``X | None``, ``Any``, none, or ``Message[...]`` with payload ``None``);
to any other parameter it is a :class:`~binder.errors.ConversionError`, dead-lettered (with
no value, where the binder has tombstones) like any undecodable record."""

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


class Message(Generic[T]):
    """A payload with its key, headers and, on receipt, where it came from.

    Header names and values are strings on every backend: a ``bytes`` value given
    on send is decoded as UTF-8, any other non-string value is converted with
    ``str``; see :func:`normalize_headers` for what is refused. A received
    ``key`` is a ``str`` when its bytes are valid UTF-8, else ``bytes``;
    ``partition``/``offset`` are ``None`` where the backend has no such notion.
    """

    __slots__ = ("destination", "headers", "key", "offset", "partition", "payload", "timestamp")

    def __init__(
        self,
        payload: T,
        *,
        key: Any = None,
        headers: Mapping[str, Any] | None = None,
        destination: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        timestamp: float | None = None,
    ) -> None:
        self.payload = payload
        self.key = key
        self.headers: dict[str, str] = normalize_headers(headers) if headers else {}
        self.destination = destination
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp

    def __repr__(self) -> str:
        where = f" {self.destination}[{self.partition}]@{self.offset}" if self.destination else ""
        return f"Message({self.payload!r}, key={self.key!r}, headers={self.headers!r}){where}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.payload, self.key, self.headers) == (other.payload, other.key, other.headers)

    __hash__ = None  # type: ignore[assignment]


def normalize_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """Header values as strings: str as is, bytes decoded as UTF-8, anything else via ``str``.

    Raises :class:`ConversionError` naming the header for a name that is not a ``str``,
    bytes that are not UTF-8, and a name or value that UTF-8 cannot encode (a lone
    surrogate), since no backend could carry it.
    """
    out: dict[str, str] = {}
    for name, value in headers.items():
        if type(name) is not str or not name.isascii():
            _check_name(name)
        if type(value) is not str:
            value = _header_text(name, value)
        if not value.isascii():  # O(1) in CPython: the common case pays no encode
            _check_text(value, f"header {_cut(name)}")
        out[name] = value
    return out


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise ConversionError(f"header name {_cut(name)} must be a str, not {type(name).__name__}")
    _check_text(name, f"header name {_cut(name)}")


def _header_text(name: str, value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError as exc:
            raise ConversionError(
                f"header {_cut(name)}: bytes value is not valid UTF-8 ({exc.reason} at "
                f"position {exc.start}); send text, or encode the bytes (base64, hex)"
            ) from None
    return value if isinstance(value, str) else str(value)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ConversionError(
            f"{what} cannot be encoded as UTF-8 ({exc.reason}: {text[exc.start]!r} at "
            f"position {exc.start})"
        ) from None


def _cut(value: Any) -> str:
    """A short repr for error texts, cut while it is built (never a huge repr first)."""
    return _SHORT.repr(value)


def key_bytes(key: Any) -> bytes | None:
    """The wire form of a key: bytes as they are, str as UTF-8, anything else as JSON text.

    Raises :class:`ConversionError` for a str that UTF-8 cannot encode (a lone surrogate).
    """
    if key is None:
        return None
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        try:
            return key.encode()
        except UnicodeEncodeError:
            _check_text(key, f"key {_cut(key)}")
            raise
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    return json.dumps(key, separators=(",", ":"), default=str).encode()


def decode_key(raw: bytes | None) -> str | bytes | None:
    """The key as a function sees it: UTF-8 text when it is valid UTF-8, else the bytes."""
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw
