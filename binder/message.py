"""The message a function receives or returns, and the header names the core sets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DELIVERY_ATTEMPT",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_TYPE",
    "ORIGINAL_DESTINATION",
    "ORIGINAL_GROUP",
    "ORIGINAL_OFFSET",
    "ORIGINAL_PARTITION",
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
ORIGINAL_DESTINATION = "x-original-destination"
ORIGINAL_GROUP = "x-original-group"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"


class Message(Generic[T]):
    """A payload with its key, headers and, on receipt, where it came from.

    Header values are strings on every backend (a non-string value given on
    send is converted with ``str``). A received ``key`` is a ``str`` when its
    bytes are valid UTF-8, else ``bytes``; ``partition``/``offset`` are
    ``None`` where the backend has no such notion.
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
    """Header values as strings: str as is, bytes as UTF-8, anything else via ``str``."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, bytes | bytearray):
            out[name] = bytes(value).decode("utf-8", "replace")
        else:
            out[name] = str(value)
    return out


def key_bytes(key: Any) -> bytes | None:
    """The wire form of a key: bytes as they are, str as UTF-8, anything else as JSON text."""
    if key is None:
        return None
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
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
