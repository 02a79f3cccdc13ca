"""An outbound record with what the core keeps beside it until the backend took it."""

from __future__ import annotations

from typing import Any

from binder.spi import OutboundRecord, RawHeaders

__all__ = ["Outgoing"]


class Outgoing(OutboundRecord):
    """An :class:`~binder.spi.OutboundRecord` (what a binder sees) with its publish span
    (tracing; ended once the backend accepted or refused the record) and its due time
    (epoch ms, for a delayed record: the producer is asked to hold it until then)."""

    __slots__ = ("due", "span")

    def __init__(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: dict[str, str] | None = None,
        partition: int = 0,
        raw_headers: RawHeaders | None = None,
        *,
        due: int | None = None,
        span: Any = None,
    ) -> None:
        super().__init__(value, key, headers if headers is not None else {}, partition, raw_headers)
        self.due = due
        self.span = span
