"""Output bindings: encode, choose the partition, send, and tell observers.

An :class:`OutputBinding` sends to one destination on one binder. It encodes
payloads with the binding's content type (``bytes`` go as they are), sets the
``contentType`` header unless the caller set one, and, when the binding is
partitioned (``partition-count`` > 1), picks the partition with the
Kafka-compatible selector from the key expression's value or the message key;
keyless messages are spread round-robin.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from binder.converters import ConverterRegistry
from binder.errors import ClosedError
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
        self._batch: tuple[list[OutboundRecord], list[asyncio.Future[None]]] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
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
        """Finish the sends submitted so far, then close the producer. Idempotent."""
        self._flush()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
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
        self, payload: Any, key: Any = None, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Encode and send one message; returns once the backend accepted it."""
        record = self.record(payload, key, normalize_headers(headers) if headers else None)
        await self.send_records((record,))

    def submit(
        self, payload: Any, key: Any = None, headers: Mapping[str, Any] | None = None
    ) -> asyncio.Future[None]:
        """Encode now and send together with everything else submitted in this loop iteration.

        Returns a future of its own per call (cancelling it abandons only the wait), done
        once the backend accepted the message; an encoding error fails it at once. Costs no
        task per message, so ``asyncio.gather`` over many submits runs at the client's speed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        try:
            record = self.record(payload, key, normalize_headers(headers) if headers else None)
        except Exception as exc:
            future.set_exception(exc)
            return future
        batch = self._batch
        if batch is None:
            batch = self._batch = ([], [])
            loop.call_soon(self._flush)
        batch[0].append(record)
        batch[1].append(future)
        return future

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(*batch))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self, records: list[OutboundRecord], futures: list[asyncio.Future[None]]
    ) -> None:
        try:
            await self.send_records(records)
        except asyncio.CancelledError:
            _fail(futures, ClosedError(f"{self.destination}: closed while sending"))
            raise
        except Exception as exc:
            _fail(futures, exc)
            return
        for future in futures:
            if not future.done():
                future.set_result(None)

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


def _fail(futures: list[asyncio.Future[None]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
