"""Output bindings: encode, choose the partition, send, and tell observers.

An :class:`OutputBinding` sends to one destination on one binder. It encodes
payloads with the binding's content type (``bytes`` go as they are), sets the
``contentType`` header unless the caller set one, and, when the binding is
partitioned (``partition-count`` > 1), picks the partition with the
Kafka-compatible selector from the key expression's value or the message key;
keyless messages are spread round-robin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from binder.converters import ConverterRegistry
from binder.message import CONTENT_TYPE, decode_key, key_bytes, normalize_headers
from binder.partitioning import KeyExpression, partition_key, select_partition
from binder.spi import Binder, OutboundRecord, Producer, ProducerSpec

__all__ = ["Observer", "OutputBinding"]

Observer = Callable[[str, OutboundRecord], None]
"""Called with (destination, record) after each accepted send (the test harness records)."""


class OutputBinding:
    """Sends to one destination; created by the app, started before any input binding."""

    def __init__(
        self,
        name: str,
        destination: str,
        binder: Binder,
        converters: ConverterRegistry,
        *,
        content_type: str = "application/json",
        partition_count: int = 1,
        key_expression: KeyExpression | None = None,
        required_groups: Sequence[str] = (),
        observers: list[Observer] | None = None,
    ) -> None:
        self.name = name
        self.destination = destination
        self.binder = binder
        self.content_type = content_type
        self.partition_count = partition_count
        self.key_expression = key_expression
        self.required_groups = tuple(required_groups)
        self._converters = converters
        self._observers = observers if observers is not None else []
        self._spread = itertools.count()
        self._producer: Producer | None = None
        self._encode = converters.get(content_type).encode
        self._partitioned = partition_count > 1 or key_expression is not None

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Provision the destination (and its required groups), then open the producer."""
        if self._producer is not None:
            return
        await self.binder.provision(self.destination, self.partition_count, self.required_groups)
        spec = ProducerSpec(self.destination, self.partition_count)
        self._producer = await self.binder.producer(spec)

    async def close(self) -> None:
        """Close the producer. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close()

    def record(
        self, payload: Any, key: Any = None, headers: dict[str, str] | None = None
    ) -> OutboundRecord:
        """Encode one message. Raises ConversionError for an unencodable payload or bad key."""
        if headers and CONTENT_TYPE in headers:
            headers = dict(headers)
            value = self._converters.encode(payload, headers[CONTENT_TYPE])
        else:
            headers = (
                {**headers, CONTENT_TYPE: self.content_type}
                if headers
                else {CONTENT_TYPE: self.content_type}
            )
            value = payload if type(payload) is bytes else self._encode(payload)
        raw_key = key if type(key) is bytes else key_bytes(key)
        partition = None
        if self._partitioned:
            partition = self._partition(payload, headers, key, raw_key)
        return OutboundRecord(value, raw_key, headers, partition)

    def records(self, outputs: Iterable[tuple[Any, Any, dict[str, str]]]) -> list[OutboundRecord]:
        """Encode a function's outputs."""
        return [self.record(payload, key, headers) for payload, key, headers in outputs]

    def _partition(self, payload: Any, headers: dict[str, str], key: Any, raw: bytes | None) -> int:
        if self.key_expression is not None:
            key = decode_key(key) if type(key) is bytes else key
            raw = partition_key(self.key_expression, payload, headers, key)
        if raw is None:
            return next(self._spread) % self.partition_count
        return select_partition(raw, self.partition_count)

    async def send(
        self, payload: Any, key: Any = None, headers: dict[str, Any] | None = None
    ) -> None:
        """Encode and send one message; returns once the backend accepted it."""
        record = self.record(payload, key, normalize_headers(headers) if headers else None)
        await self.send_records((record,))

    async def send_records(self, records: Sequence[OutboundRecord]) -> None:
        """Send encoded records in order; returns once the backend accepted all of them."""
        if not records:
            return
        producer = self._producer
        if producer is None:
            await self.start()
            producer = self._producer
            assert producer is not None
        await producer.send_batch(records)
        for observer in self._observers:
            for record in records:
                observer(self.destination, record)
