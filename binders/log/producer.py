"""Appending to the embedded log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from binder.errors import ClosedError
from binder.spi import OutboundRecord
from binders.log.engine import Broker, Entry
from binders.log.errors import ENGINE_ERRORS, backend_error

__all__ = ["LogProducer"]


class LogProducer:
    """Appends records to one topic; a send completes when the append did.

    Each record goes to the partition the core chose (one append per partition of
    a batch). On a durable log the append has reached the OS when the send
    completes, and with ``fsync: always`` or ``batch`` also the disk (the producer
    awaits the log's fsync future, outside the broker lock).
    """

    def __init__(self, broker: Broker, topic: str) -> None:
        self._broker = broker
        self._topic = topic
        self._syncs = broker.syncs
        self._closed = False

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

    async def close(self) -> None:
        self._closed = True
