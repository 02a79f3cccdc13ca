"""Sending through the binder's one ``AIOKafkaProducer``, in record batches built here.

Every send, from any task, is queued; one flusher task takes the queued records in
order, appends each to a record batch of the partition the core chose for it (the
binder never places a record itself) with the client's public batch API
(``create_batch`` / ``send_batch``) and submits each batch as soon as it is full, so
it is on the wire while the next are built (the client's sender puts what is queued
for a broker, a batch per partition, into one request).
A send completes when the broker acknowledged every batch holding its records.

Compared with ``AIOKafkaProducer.send`` per record, this spends no coroutine and no
delivery future per record, which is most of the client's per-message cost; the
batches and requests are the same ones the client would build (its ``batch-size``,
``linger-ms``, compression and acks apply). Order per partition is the order of the
calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, UnknownTopicOrPartitionError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from binder.errors import CapabilityError, ClosedError
from binder.spi import OutboundRecord
from binders.kafka.errors import CLIENT_ERRORS, backend_error

__all__ = ["KafkaProducer", "SendQueue", "wire_headers"]

_Handed = tuple[list["asyncio.Future[Any]"], BaseException | None]
"""The delivery futures of the batches submitted, and why the rest were not."""


class SendQueue:
    """The records waiting for the client, and the task that batches and submits them."""

    def __init__(self, client: AIOKafkaProducer, max_request_size: int) -> None:
        self._client = client
        self._max_request_size = max_request_size
        self._large = max_request_size // 2  # a value this long has its whole size checked
        self._queue: deque[tuple[str, Sequence[OutboundRecord], asyncio.Future[_Handed]]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    async def send(self, topic: str, records: Sequence[OutboundRecord]) -> None:
        """Queue ``records`` and return once the broker acknowledged them all.

        The queueing happens before the first await, so concurrent calls keep call
        order. The first failure is raised; records of other batches may have been
        written (the caller's resend makes it at least once).
        """
        if self._closed:
            raise ClosedError("the kafka producer is closed")
        handed: asyncio.Future[_Handed] = asyncio.get_running_loop().create_future()
        self._queue.append((topic, records, handed))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="kafka-send-queue")
        deliveries, error = await handed
        try:
            for delivery in deliveries:
                await delivery
        except BaseException:
            _retrieve(deliveries)
            raise
        if error is not None:
            raise error

    async def _flush(self) -> None:
        queue = self._queue
        try:
            while queue:
                topic, records, handed = queue.popleft()
                deliveries: list[asyncio.Future[Any]] = []
                error: BaseException | None = None
                try:
                    await self._submit(topic, records, deliveries)
                except Exception as exc:  # what was not submitted is resent by the caller
                    error = exc
                if handed.done():  # the caller gave up waiting
                    _retrieve(deliveries)
                else:
                    handed.set_result((deliveries, error))
        finally:
            self._flusher = None

    async def _submit(
        self, topic: str, records: Sequence[OutboundRecord], deliveries: list[asyncio.Future[Any]]
    ) -> None:
        """Batch ``records`` per partition; submit each batch once full, the last ones at the end.

        A full batch goes to the client at once, so it is on the wire while the next ones are
        built (submitting waits while that partition's previous batch is still queued, as
        ``AIOKafkaProducer.send`` does); building every batch first would serialize the work
        with the round trips.
        """
        client = self._client
        await self._check_partitions(topic, max((r.partition for r in records), default=0))
        batches: dict[int, Any] = {}
        for r in records:
            partition = r.partition
            if r.raw_headers is not None:  # a dead letter's, exactly as its original came
                headers = list(r.raw_headers)
            else:
                headers = wire_headers(r.headers) if r.headers else None
            if r.value is not None and len(r.value) > self._large:
                self._check_size(r, headers)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = client.create_batch()
            if batch.append(timestamp=None, key=r.key, value=r.value, headers=headers):
                continue
            deliveries.append(await client.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = client.create_batch()  # the record starts the next one
            if not batch.append(timestamp=None, key=r.key, value=r.value, headers=headers):
                raise MessageSizeTooLargeError("an empty record batch refused a record")
        for partition, batch in batches.items():
            deliveries.append(await client.send_batch(batch, topic, partition=partition))

    async def _check_partitions(self, topic: str, highest: int) -> None:
        """The client knows ``topic`` up to partition ``highest`` (the core placed records
        over the count provisioning found, which may be newer than the client's metadata)."""
        known = await self._client.partitions_for(topic)
        if highest in known:
            return
        await self._client.client.force_metadata_update()
        if highest not in await self._client.partitions_for(topic):
            raise UnknownTopicOrPartitionError(f"{topic!r} has no partition {highest}")

    def _check_size(self, record: OutboundRecord, headers: Any) -> None:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            record.key, record.value, headers or []
        )
        if size > self._max_request_size:
            raise MessageSizeTooLargeError(
                f"a record of {size} bytes exceeds max-request-size ({self._max_request_size})"
            )

    async def close(self) -> None:
        """Refuse new sends and fail the queued ones; then the client may stop. Idempotent."""
        self._closed = True
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        while self._queue:
            handed = self._queue.popleft()[2]
            if not handed.done():
                handed.set_exception(ClosedError("the kafka producer closed"))


def _retrieve(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Mark the outcomes of deliveries nobody awaits as seen (no "never retrieved" noise)."""
    for future in futures:
        if future.done():
            if not future.cancelled():
                future.exception()
        else:
            future.add_done_callback(_seen)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class KafkaProducer:
    """Sends records to one topic; a send completes when the broker acknowledged it.

    A batch is pipelined (every record queued, then every acknowledgement awaited),
    and order per partition is the order of the calls. Each record goes to the
    partition the core chose for it. :meth:`schedule` holds delayed records in the
    topic's delay topic (see :mod:`binders.kafka.scheduler`).
    """

    def __init__(
        self,
        queue: SendQueue,
        topic: str,
        servers: str,
        *,
        schedule: Callable[[Sequence[OutboundRecord]], Awaitable[None]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._queue = queue
        self._topic = topic
        self._servers = servers
        self._schedule = schedule
        self._on_close = on_close
        self._closed = False

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if self._closed:
            raise ClosedError(f"kafka producer for {self._topic!r} is closed")
        if not records:
            return
        try:
            await self._queue.send(self._topic, records)
        except CLIENT_ERRORS as exc:
            raise backend_error(self._servers, f"send to {self._topic!r}", exc) from exc

    async def send_located(self, records: Sequence[OutboundRecord]) -> list[int]:
        """Send each record alone; the offset each one got (for tools: ``binder send``)."""
        if self._closed:
            raise ClosedError(f"kafka producer for {self._topic!r} is closed")
        client = self._queue._client
        offsets = []
        try:
            for r in records:
                headers = wire_headers(r.headers) if r.headers else None
                sent = await client.send_and_wait(
                    self._topic, r.value, key=r.key, partition=r.partition, headers=headers
                )
                offsets.append(sent.offset)
        except CLIENT_ERRORS as exc:
            raise backend_error(self._servers, f"send to {self._topic!r}", exc) from exc
        return offsets

    async def schedule(self, records: Sequence[OutboundRecord]) -> None:
        """Write delayed records to the delay topic; returns once the broker acknowledged
        them (each is then written to its partition when due, by whichever forwarder of
        the destination holds its level)."""
        if self._closed:
            raise ClosedError(f"kafka producer for {self._topic!r} is closed")
        if self._schedule is None:
            raise CapabilityError(f"kafka producer for {self._topic!r} was made without a schedule")
        if records:
            await self._schedule(records)

    async def close(self) -> None:
        """Nothing to flush: every send waited for its acknowledgement. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            await self._on_close()


def wire_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """Kafka's header list; the common lone ``contentType`` is encoded once and shared
    (the client only reads it)."""
    if len(headers) == 1:
        (only,) = headers.items()
        encoded = _LONE_HEADERS.get(only)
        if encoded is None:
            encoded = [(only[0], only[1].encode())]
            if len(_LONE_HEADERS) < _MAX_LONE_HEADERS:
                _LONE_HEADERS[only] = encoded
        return encoded
    return [(name, value.encode()) for name, value in headers.items()]


_MAX_LONE_HEADERS = 64
_LONE_HEADERS: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
