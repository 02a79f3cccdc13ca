"""Appending to the embedded log."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

from binder.errors import ClosedError
from binder.partitioning import select_partition
from binder.spi import OutboundRecord
from binders.log.engine import Broker, Entry

__all__ = ["LogProducer"]


class LogProducer:
    """Appends records to one topic; a send completes when the append did.

    A record without a partition goes where Kafka's default partitioner would
    put it: by murmur2 of its key, or round-robin when it has no key. On a
    durable log the append has reached the OS when the send completes, and
    with ``fsync: always`` or ``batch`` also the disk (the producer awaits
    the log's fsync future, outside the broker lock).
    """

    def __init__(self, broker: Broker, topic: str) -> None:
        self._broker = broker
        self._topic = topic
        self._syncs = broker.syncs
        self._spread = itertools.count()
        self._closed = False

    async def send(self, record: OutboundRecord) -> None:
        await self.send_batch((record,))

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if self._closed:
            raise ClosedError(f"log producer for {self._topic!r} is closed")
        now = time.time()
        topic = self._broker.topic(self._topic) or self._broker.create_topic(self._topic)
        count = topic.partition_count
        by_partition: dict[int, list[Entry]] = {}
        for record in records:
            partition = record.partition
            if partition is None:
                partition = (
                    next(self._spread) % count
                    if record.key is None
                    else select_partition(record.key, count)
                )
            entries = by_partition.get(partition)
            if entries is None:
                entries = by_partition[partition] = []
            entries.append((record.key, record.value, record.headers, now))
        append = self._broker.append
        if not self._syncs:
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

    async def close(self) -> None:
        self._closed = True
