"""Sending through the binder's one ``AIOKafkaProducer``, fed by a single task.

Every send, from any task, is queued; one flusher task hands the queued records
to the client in order, as a plain loop over ``AIOKafkaProducer.send`` would.
Under load the queue holds many records, so the client's batches fill before its
sender takes them; a lone send still goes at the next turn of the event loop. (Had
each caller handed its own record over, every caller that then awaits its
acknowledgement would let the client's sender run, and a thousand concurrent sends
would leave as a thousand one-record requests.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from binder.errors import ClosedError
from binder.spi import OutboundRecord
from binders.kafka.errors import CLIENT_ERRORS, backend_error

__all__ = ["KafkaProducer", "SendQueue"]


class SendQueue:
    """The records waiting for the client, and the task that hands them over."""

    def __init__(self, client: AIOKafkaProducer) -> None:
        self._client = client
        self._queue: deque[tuple[str, Sequence[OutboundRecord], _Acks]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, topic: str, records: Sequence[OutboundRecord]) -> asyncio.Future[None]:
        """Queue ``records``; the future completes once the broker acknowledged them all."""
        if self._closed:
            raise ClosedError("the kafka producer is closed")
        acks = _Acks(asyncio.get_running_loop().create_future(), len(records))
        self._queue.append((topic, records, acks))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="kafka-send-queue")
        return acks.future

    async def _flush(self) -> None:
        send, queue = self._client.send, self._queue
        try:
            while queue:
                topic, records, acks = queue.popleft()
                try:
                    for r in records:
                        headers = _headers(r.headers) if r.headers else None
                        sent = await send(topic, r.value, r.key, r.partition, None, headers)
                        sent.add_done_callback(acks)
                except Exception as exc:  # the rest of the batch is not sent: resent by the caller
                    acks.fail(exc)
        finally:
            self._flusher = None

    async def close(self) -> None:
        """Refuse new sends and fail the queued ones; then the client may stop. Idempotent."""
        self._closed = True
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        while self._queue:
            self._queue.popleft()[2].fail(ClosedError("the kafka producer closed"))


class _Acks:
    """Completes ``future`` when ``count`` acknowledgements arrived (the done-callback of
    each record's delivery future), or at the first failure."""

    __slots__ = ("count", "future")

    def __init__(self, future: asyncio.Future[None], count: int) -> None:
        self.future = future
        self.count = count

    def __call__(self, sent: asyncio.Future[object]) -> None:
        if self.future.done():  # failed already, or the caller gave up
            return
        if sent.cancelled():
            self.future.cancel()
        elif (exc := sent.exception()) is not None:
            self.future.set_exception(exc)
        else:
            self.count -= 1
            if not self.count:
                self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class KafkaProducer:
    """Sends records to one topic; a send completes when the broker acknowledged it.

    A batch is pipelined (every record queued, then every acknowledgement awaited),
    and order per partition is the order of the calls. A record whose ``partition``
    the core chose goes there; otherwise Kafka's default partitioner places it
    (murmur2 of the key, the same function as the core's).
    """

    def __init__(self, queue: SendQueue, topic: str, servers: str) -> None:
        self._queue = queue
        self._topic = topic
        self._servers = servers
        self._closed = False

    async def send(self, record: OutboundRecord) -> None:
        await self.send_batch((record,))

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if self._closed:
            raise ClosedError(f"kafka producer for {self._topic!r} is closed")
        if not records:
            return
        try:
            await self._queue.submit(self._topic, records)
        except CLIENT_ERRORS as exc:
            raise backend_error(self._servers, f"send to {self._topic!r}", exc) from exc

    async def close(self) -> None:
        """Nothing to flush: every send waited for its acknowledgement. Idempotent."""
        self._closed = True


def _headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(name, value.encode()) for name, value in headers.items()]
