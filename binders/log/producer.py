"""Appending to the embedded log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from binder.errors import ClosedError
from binder.spi import OutboundRecord
from binders.log.engine import Broker, Entry
from binders.log.errors import ENGINE_ERRORS, backend_error
from binders.log.scheduler import SCHEDULE_BATCH, schedule_entries, schedule_topic

__all__ = ["LogProducer"]


class LogProducer:
    """Appends records to one topic; a send completes when the append did.

    Each record goes to the partition the core chose (one append per partition of
    a batch). On a durable log the append has reached the OS when the send
    completes, and with ``fsync: always`` or ``batch`` also the disk (the producer
    awaits the log's fsync future, outside the broker lock).
    """

    def __init__(
        self,
        broker: Broker,
        topic: str,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._broker = broker
        self._topic = topic
        self._syncs = broker.syncs
        self._closed = False
        self._on_close = on_close

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if self._closed:
            raise ClosedError(f"log producer for {self._topic!r} is closed")
        now = time.time()
        by_partition: dict[int, list[Entry]] = {}
        for record in records:
            partition = record.partition
            entries = by_partition.get(partition)
            if entries is None:
                entries = by_partition[partition] = []
            entries.append((record.key, record.value, record.headers, now))
        try:
            if not self._syncs:
                append = self._broker.append
                for partition, entries in by_partition.items():
                    append(self._topic, partition, entries)
                return
            waits: list[asyncio.Future[None]] = []
            append_synced = self._broker.append_synced
            for partition, entries in by_partition.items():
                future = append_synced(self._topic, partition, entries)[1]
                if future is not None:
                    waits.append(future)
            for future in waits:
                await future
        except ENGINE_ERRORS as exc:
            raise backend_error(f"append to {self._topic!r}", exc) from exc

    async def send_located(self, records: Sequence[OutboundRecord]) -> list[int]:
        """Send each record alone; the offset each one got (for tools: ``binder send``)."""
        if self._closed:
            raise ClosedError(f"log producer for {self._topic!r} is closed")
        offsets = []
        try:
            for r in records:
                entry = (r.key, r.value, r.headers, time.time())
                base, synced = self._broker.append_synced(self._topic, r.partition, [entry])
                if synced is not None and self._syncs:
                    await synced
                offsets.append(base)
        except ENGINE_ERRORS as exc:
            raise backend_error(f"append to {self._topic!r}", exc) from exc
        return offsets

    async def schedule(self, records: Sequence[OutboundRecord]) -> None:
        """Append delayed records to the destination's schedule (see
        :mod:`binders.log.scheduler`); returns once appended (and synced as the log's fsync
        policy says)."""
        if self._closed:
            raise ClosedError(f"log producer for {self._topic!r} is closed")
        topic = schedule_topic(self._topic)
        try:
            if self._broker.topic(topic) is None:
                self._broker.create_topic(topic, 1)
            entries = schedule_entries(records, time.time())
            waits = []
            for start in range(0, len(entries), SCHEDULE_BATCH):
                chunk = entries[start : start + SCHEDULE_BATCH]
                future = self._broker.append_synced(topic, 0, chunk)[1]
                if future is not None:
                    waits.append(future)
            for future in waits:
                await future
        except ENGINE_ERRORS as exc:
            raise backend_error(f"schedule on {self._topic!r}", exc) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            await self._on_close()
