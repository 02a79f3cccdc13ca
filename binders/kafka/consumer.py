"""Reading one topic as a member of a Kafka consumer group (or anonymously).

A named group is a Kafka consumer group (``enable.auto.commit`` off: the core
commits what it finished). An anonymous consumer has no group at all: it reads
every partition from the latest offset and commits nothing, which is what a
unique throw-away group would do, without the join delay and the leftover group.
With ``instance-count`` > 1 the partitions are assigned statically.

Rebalances run in the client's background task. When partitions are revoked,
:meth:`KafkaConsumer.on_partitions_revoked` stops handing out records and awaits
the core's ``on_revoked``, which finishes the work in flight and commits it, so
the next owner starts right after the last finished record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError

from binder.spi import ConsumerSpec, InboundRecord, RebalanceListener
from binders.kafka.errors import backend_errors

__all__ = ["KafkaConsumer"]

log = logging.getLogger("binders.kafka.consumer")

_POLL_MS = 1000
"""Longest one ``getmany`` waits; ``fetch`` loops, so this only bounds how often it looks up."""

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

    Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class KafkaConsumer(ConsumerRebalanceListener):
    """One consumer of one topic; also its client's rebalance listener."""

    def __init__(
        self,
        client: AIOKafkaConsumer,
        spec: ConsumerSpec,
        listener: RebalanceListener,
        servers: str,
    ) -> None:
        self._client = client
        self._spec = spec
        self._topic = spec.destination
        self._listener = listener
        self._servers = servers
        self._paused = False
        self._settled = asyncio.Event()  # cleared while a rebalance moves partitions
        self._settled.set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def open(self, partition_count: int) -> None:
        """Subscribe (or assign), join the group, and settle where each partition starts.

        Returns once the consumer reads from a known position: an anonymous consumer
        then gets everything sent from now on.
        """
        client, spec = self._client, self._spec
        if spec.instance_count > 1:
            mine = range(spec.instance_index, partition_count, spec.instance_count)
            client.assign([TopicPartition(self._topic, p) for p in mine])
        else:
            client.subscribe([self._topic], listener=self)
        with backend_errors(self._servers, f"subscribe to {self._topic!r}"):
            await client.start()  # with a group: returns after the first assignment
            for tp in client.assignment():
                await client.position(tp)

    async def fetch(self) -> list[InboundRecord]:
        client, most = self._client, self._spec.max_records
        while not self._closed:
            if not self._settled.is_set():  # hand out nothing until the new assignment
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), _POLL_MS / 1000)
                continue
            try:
                with backend_errors(self._servers, f"fetch from {self._topic!r}"):
                    batch = await client.getmany(timeout_ms=_POLL_MS, max_records=most)
            except ConsumerStoppedError:
                break
            if not batch:
                continue
            if self._paused or not self._settled.is_set() or self._closed:
                self._put_back(batch)
                continue
            return self._records(batch)
        return []

    def _records(self, batch: Batch) -> list[InboundRecord]:
        topic, records = self._topic, []
        decoded: dict[Any, dict[str, str]] = {}  # this fetch's distinct header sets
        for tp, taken in batch.items():
            partition = tp.partition
            records += [
                InboundRecord(
                    topic,
                    partition,
                    r.offset,
                    r.value if r.value is not None else b"",
                    r.key,
                    _headers_of(r.headers, decoded),
                    r.timestamp / 1000,
                )
                for r in taken
            ]
        return records

    def _put_back(self, batch: Batch) -> None:
        """Rewind to records fetched but not handed out, so they are fetched again."""
        assigned = self._client.assignment()
        for tp, taken in batch.items():
            if taken and tp in assigned:
                self._client.seek(tp, taken[0].offset)

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Commit offset + 1 of the last record per partition (records come in offset order).

        Partitions this member no longer owns are skipped: their records are delivered
        again to the new owner (at least once).
        """
        if self._spec.group is None or not records:
            return
        last: dict[int, int] = {}
        for record in records:
            assert record.offset is not None
            last[record.partition] = record.offset
        assigned = self._client.assignment()
        offsets = {
            tp: offset + 1
            for partition, offset in last.items()
            if (tp := TopicPartition(self._topic, partition)) in assigned
        }
        if len(offsets) < len(last):
            log.info("%s: not committing partitions no longer owned", self._describe())
        if not offsets:
            return
        try:
            with backend_errors(self._servers, f"commit on {self._topic!r}"):
                await self._client.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("%s: commit lost to a rebalance: %s", self._describe(), exc)

    def pause(self) -> None:
        self._paused = True
        self._client.pause(*self._client.assignment())

    def resume(self) -> None:
        self._paused = False
        self._client.resume(*self._client.assignment())

    async def close(self) -> None:
        """Leave the group; what was not committed goes to the group again. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with backend_errors(self._servers, f"close consumer of {self._topic!r}"):
            await self._client.stop()

    # -- ConsumerRebalanceListener ----------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Hand out nothing more, then let the core finish and commit what is in flight."""
        self._settled.clear()
        partitions = {tp.partition for tp in revoked}
        if partitions:
            await self._listener.on_revoked(partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._paused and assigned:
            self._client.pause(*assigned)
        self._settled.set()
        await self._listener.on_assigned({tp.partition for tp in assigned})

    def _describe(self) -> str:
        return f"kafka consumer of {self._topic!r} (group {self._spec.group or 'anonymous'})"


def _headers_of(headers: Any, decoded: dict[Any, dict[str, str]]) -> dict[str, str]:
    """Decoded headers, shared by the records of one fetch that carry the same ones (most
    carry just ``contentType``); the core never mutates a record's headers."""
    if not headers:
        return {}
    try:
        found = decoded.get(headers)
    except TypeError:  # not hashable: decode it alone
        return _headers(headers)
    if found is None:
        found = decoded[headers] = _headers(headers)
    return found


def _headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Header values as strings: UTF-8 (bytes that are not become U+FFFD), a null one as ""."""
    return {
        name: value.decode("utf-8", "replace") if value is not None else ""
        for name, value in headers
    }
