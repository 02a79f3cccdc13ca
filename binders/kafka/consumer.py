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
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError

from binder.errors import BackendError
from binder.spi import ConsumerSpec, InboundRecord, RebalanceListener
from binders.kafka.errors import CLIENT_ERRORS, backend_error, backend_errors

__all__ = ["KafkaConsumer", "assignors", "batch_records"]

log = logging.getLogger("binder.kafka.consumer")

_POLL_MS = 1000
_PROBE_AFTER = 5.0
"""Seconds without records after which a fetch asks the broker for metadata (is it there?)."""
_DEAD_AFTER = 20.0
"""Seconds without records or an answer from the broker after which the consumer fails: the
binding shows the error and restarts, instead of reading as running on a dead broker."""
"""Longest one ``getmany`` waits; ``fetch`` loops, so this only bounds how often it looks up."""

_NO_HEADERS: dict[str, str] = {}
"""Shared by every record without headers: the core copies headers, it never changes them."""

_ASSIGNORS: dict[str, type[AbstractPartitionAssignor]] = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
}


def assignors(names: Sequence[str]) -> tuple[type[AbstractPartitionAssignor], ...]:
    """The assignor classes of ``partition-assignment-strategy``, for one client.

    aiokafka's sticky assignor keeps the member's last assignment in class attributes, so
    each client gets a subclass of its own: two consumers in one process must not offer
    each other's partitions as their own.
    """
    return tuple(
        type("StickyPartitionAssignor", (StickyPartitionAssignor,), {})
        if name == "sticky"
        else _ASSIGNORS[name]
        for name in names
    )


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
        flush_timeout: float = 40.0,
    ) -> None:
        self._client = client
        self._flush_timeout = flush_timeout
        self._spec = spec
        self._topic = spec.destination
        self._listener = listener
        self._servers = servers
        self._paused = False
        self._settled = asyncio.Event()  # cleared while a rebalance moves partitions
        self._settled.set()
        self._closed = False
        self._finished: dict[int, int] = {}  # partition → last finished offset, not committed
        self._committing: asyncio.Task[None] | None = None
        self._commit_error: BackendError | None = None
        self._heard = time.monotonic()  # the broker last answered
        self.on_close: Callable[[], Awaitable[None]] | None = None
        """Called once when this consumer closes (the binder stops its forwarder with the
        destination's last client)."""

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
                await self._check_broker()
                continue
            self._heard = time.monotonic()
            if self._paused or not self._settled.is_set() or self._closed:
                self._put_back(batch)
                continue
            return batch_records(self._topic, batch)
        return []

    async def _check_broker(self) -> None:
        """After :data:`_PROBE_AFTER` s without records ask the broker for metadata; raise
        once it has not answered for :data:`_DEAD_AFTER` s (the client itself retries a dead
        broker for ever, and a consumer of a quiet topic would never know)."""
        now = time.monotonic()
        if now - self._heard < _PROBE_AFTER:
            return
        try:
            async with asyncio.timeout(_PROBE_AFTER):
                await self._client.topics()
        except (TimeoutError, *CLIENT_ERRORS) as exc:
            silent = time.monotonic() - self._heard
            if silent >= _DEAD_AFTER:
                raise BackendError(
                    f"kafka at {self._servers}: no answer from the broker for {silent:.0f}s "
                    f"while reading {self._topic!r} ({type(exc).__name__}: {exc})"
                ) from exc
            return
        self._heard = time.monotonic()

    def _put_back(self, batch: Batch) -> None:
        """Rewind to records fetched but not handed out, so they are fetched again."""
        assigned = self._client.assignment()
        for tp, taken in batch.items():
            if taken and tp in assigned:
                self._client.seek(tp, taken[0].offset)

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Note offset + 1 of the last record per partition (records come in offset order)
        and commit it in the background, coalesced with later calls.

        At most one commit request is in flight; what finishes meanwhile goes in the
        next one, so a commit never holds up processing and a burst of chunks costs
        one round trip. Everything noted is flushed before partitions are revoked and
        on close. A commit that failed (other than to a rebalance) is raised here on
        the next call, its offsets kept for the next attempt. Partitions this member no
        longer owns are skipped: their records go to the new owner again (at least once).
        """
        if self._spec.group is None or not records:
            return
        if self._commit_error is not None:
            error, self._commit_error = self._commit_error, None
            raise error
        finished = self._finished
        for record in records:
            finished[record.partition] = record.offset  # type: ignore[assignment]
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_finished())

    async def _commit_finished(self) -> None:
        """Commit what :meth:`commit` noted, again while more was noted meanwhile."""
        try:
            while self._finished and not self._closed:
                finished, self._finished = self._finished, {}
                assigned = self._client.assignment()
                offsets = {
                    tp: offset + 1
                    for partition, offset in finished.items()
                    if (tp := TopicPartition(self._topic, partition)) in assigned
                }
                if len(offsets) < len(finished):
                    log.info("%s: not committing partitions no longer owned", self._describe())
                if not offsets:
                    continue
                try:
                    await self._client.commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:
                    log.warning("%s: commit lost to a rebalance: %s", self._describe(), exc)
                except CLIENT_ERRORS as exc:
                    for partition, offset in finished.items():  # keep them for the next try
                        self._finished.setdefault(partition, offset)
                    self._commit_error = backend_error(
                        self._servers, f"commit on {self._topic!r}", exc
                    )
                    return
        finally:
            self._committing = None

    async def flush(self) -> None:
        """Wait until everything noted by :meth:`commit` is committed (or failed)."""
        if self._committing is None and self._finished and self._commit_error is None:
            self._committing = asyncio.create_task(self._commit_finished())  # kept after a failure
        while self._committing is not None:
            await asyncio.shield(self._committing)

    async def lag(self) -> dict[int, int]:
        """Partition → end offset minus the group's committed offset (anonymous: minus the
        position), for the partitions assigned."""
        client = self._client
        assigned = list(client.assignment())
        if not assigned:
            return {}
        with backend_errors(self._servers, f"read the lag of {self._spec.destination!r}"):
            ends = await client.end_offsets(assigned)
            lag = {}
            for tp in assigned:
                base = await client.committed(tp) if self._spec.group is not None else None
                if base is None:
                    base = await client.position(tp)
                lag[tp.partition] = max(0, ends[tp] - base)
        return lag

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
        try:
            await asyncio.wait_for(self.flush(), self._flush_timeout)
        except TimeoutError:
            self._commit_error = BackendError(
                f"kafka at {self._servers}: commit on {self._topic!r} not done "
                f"within {self._flush_timeout:.0f}s"
            )
        if self._commit_error is not None:
            log.error(
                "%s: closing with finished records not committed (they will be delivered "
                "again): %s",
                self._describe(),
                self._commit_error,
            )
        self._closed = True
        if self._committing is not None:
            self._committing.cancel()
        try:
            with backend_errors(self._servers, f"close consumer of {self._topic!r}"):
                await self._client.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # the client awaits its fetch task after cancelling it (a dead broker: the task
            # was backing off), which raises here though nobody cancelled this close
        finally:
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                await on_close()

    # -- ConsumerRebalanceListener ----------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Hand out nothing more, then let the core finish and commit what is in flight."""
        self._settled.clear()
        partitions = {tp.partition for tp in revoked}
        if partitions:
            await self._listener.on_revoked(partitions)
            await self.flush()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._paused and assigned:
            self._client.pause(*assigned)
        self._settled.set()
        await self._listener.on_assigned({tp.partition for tp in assigned})

    def _describe(self) -> str:
        return f"kafka consumer of {self._topic!r} (group {self._spec.group or 'anonymous'})"


def batch_records(topic: str, batch: Batch) -> list[InboundRecord]:
    """The records of one ``getmany`` batch of ``topic``, partition by partition (the batch's
    lists are emptied: each client record freed as its own is made, fewer GC passes)."""
    make, records = InboundRecord, []
    decoded: dict[Any, dict[str, str]] = {}  # this fetch's distinct header sets
    for tp, taken in batch.items():
        partition = tp.partition
        taken.reverse()
        pop, add = taken.pop, records.append
        while taken:
            r = pop()
            add(
                make(
                    topic,
                    partition,
                    r.offset,
                    r.value,  # None: a tombstone, passed on as such
                    r.key,
                    _headers_of(r.headers, decoded) if r.headers else _NO_HEADERS,
                    r.timestamp / 1000,
                    None,
                    r.headers,  # as they came, for a dead letter: the client's own tuple
                )
            )
    return records


def _headers_of(headers: Any, decoded: dict[Any, dict[str, str]]) -> dict[str, str]:
    """Decoded headers, shared by the records of one fetch that carry the same ones (most
    carry just ``contentType``); the core never mutates a record's headers."""
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
