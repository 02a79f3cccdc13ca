"""The forwarders of a destination's delay topic (see :mod:`binders.kafka.scheduler`).

Every producer and consumer of the destination runs a :class:`Forwarder`; the forwarders
are the members of the consumer group ``<destination>.__forwarder`` on the delay topic, so
each partition is read by one of them at a time (several processes never move a record
twice). Only forwarders join that group, all offering just the range assignor: it keeps
neighbouring levels together, and one protocol makes joins quicker (Tansu takes a round
per protocol).

A forwarder reads each partition it owns into memory, up to :data:`PAUSE_AT` records (the
partition is paused while that many wait), sleeps on the binder's clock until the earliest
head may leave, and moves what may: down to the level of what remains, or, once due within
the current slot, into a heap in memory, from which each record is written at its due time
to its destination partition with the key, value and headers of an ordinary send
(``x-deliver-at`` included, the scheduling headers removed). Held records are released in
due order (equal due times: in the order they were scheduled), and only while every
partition the forwarder owns is read to its end or waits on a head not yet free, so a
record still on its way down is not overtaken.

A partition is committed only up to its oldest record neither acknowledged where it went
nor released. On revocation and on close the held records are first written back to
partition 0, so their next owner reads each once; a forwarder killed mid-way leaves what it
had not committed to the next owner (at least once). A forwarder that fails logs it and
starts over a second later: the records wait in the topic. One that sees the delay topic
appear, made by another process, joins :data:`SETTLE` seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError

from binder.clock import Clock
from binder.errors import BackendError
from binder.spi import OutboundRecord
from binders.kafka.errors import CLIENT_ERRORS, backend_error, backend_errors
from binders.kafka.scheduler import (
    PARTITIONS,
    Waiting,
    delay_topic,
    forwarder_group,
    place,
    waiting,
)

if TYPE_CHECKING:
    from binders.kafka.binder import KafkaBinder

__all__ = ["Forwarder"]

log = logging.getLogger("binder.kafka.forwarder")

PAUSE_AT = 2_000
"""Records read and waiting in one partition before it is paused."""
BATCH = 1_000
"""Most records one read returns."""
FETCH_WAIT_MS = 100
"""Longest the broker holds a forwarder's fetch (at most the binder's fetch-max-wait-ms)."""
POLL_MS = 1_000
"""Longest one read waits (the loop then looks around)."""
RECHECK = 0.02
"""Seconds between two looks while a due record waits for a partition to be read."""
DISCOVER = 2.0
"""Seconds between two looks for a delay topic that does not exist yet."""
SETTLE = 2.0
"""Seconds a forwarder that saw the delay topic appear (made elsewhere) waits before it
joins: the forwarder that made it joins first, and a join arriving while another is in
progress delays both (Tansu completes them one after the other)."""
RETRY = 1.0
"""Seconds before a failed forwarder starts over."""
CLOSE_TIMEOUT = 10.0
"""Longest closing waits for the held records to be handed back."""


@dataclass
class _Partition:
    """What a forwarder knows of one partition it owns."""

    waiting: deque[Waiting] = field(default_factory=deque)  # read, not free to leave yet
    held: set[int] = field(default_factory=set)  # offsets of records in the heap
    next: int | None = None  # the offset after the last one read
    committed: int | None = None
    paused: bool = False

    def committable(self) -> int | None:
        """The oldest offset not moved nor released (``None``: nothing read yet)."""
        low = self.next
        if low is None:
            return None
        if self.waiting:
            low = min(low, self.waiting[0].offset)
        if self.held:
            low = min(low, min(self.held))
        return low


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is this task being cancelled (aiokafka may raise a CancelledError of
    its own, from a task of its that it cancelled)."""
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0


async def _stopped(client: AIOKafkaConsumer) -> None:
    """Stop ``client``; what it raises is logged, unless this task is being cancelled."""
    try:
        await client.stop()
    except (Exception, asyncio.CancelledError) as exc:
        if _cancelled(exc):
            raise
        log.debug("stopping a forwarder's client: %r", exc)


_Held = tuple[int, int, int, int, Waiting]
"""(due, scheduled at, order read, partition, entry) in the heap."""


class Forwarder(ConsumerRebalanceListener):
    """Moves one destination's delayed records while it runs (see the module docstring);
    also its consumer client's rebalance listener."""

    def __init__(self, binder: KafkaBinder, destination: str, clock: Clock) -> None:
        self.binder = binder
        self.destination = destination
        self.topic = delay_topic(destination)
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._stop = asyncio.Event()
        self._poked = asyncio.Event()
        self._lock = asyncio.Lock()  # a step, a revocation or an assignment at a time
        self._client: AIOKafkaConsumer | None = None
        self._order = itertools.count()
        self._generation = 0  # changes with every revocation and assignment
        self._partitions: dict[int, _Partition] = {}
        self._heap: list[_Held] = []
        self._blocked = False  # a due record waits for a partition to be read
        self._count: int | None = None  # the destination's partitions
        self._failing = False  # the last attempt failed (logged once per streak)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kafka-forwarder:{self.destination}"
            )

    def poke(self) -> None:
        """Records were scheduled here: the delay topic exists now."""
        self._poked.set()

    async def close(self) -> None:
        """Hand back what is held, commit, leave the group. Idempotent; bounded by
        :data:`CLOSE_TIMEOUT`, after which the task is cancelled."""
        self._closed = True
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        except asyncio.CancelledError:  # closing was cancelled: so is the forwarder
            task.cancel()
            raise
        if not done:
            log.error("the forwarder of %r did not close in time", self.destination)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- running ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """Wait for the delay topic, then serve until closed; an error is logged (once per
        streak) and the forwarder starts over after :data:`RETRY` seconds."""
        while not self._closed:  # a client may turn a cancellation into an error: see here
            try:
                if await self._topic_exists():
                    await self._serve()
            except (Exception, asyncio.CancelledError) as exc:
                if _cancelled(exc):
                    raise
                if self._closed:
                    return
                if not self._failing:
                    log.error(
                        "forwarding the delayed records of %r failed, trying again: %s",
                        self.destination,
                        exc,
                        exc_info=exc,
                    )
                self._failing = True
                await self._sleep(RETRY)

    async def _sleep(self, seconds: float, *events: asyncio.Event) -> None:
        """Until ``seconds`` passed, the forwarder closes, or one of ``events`` is set."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stop, *events)]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _topic_exists(self) -> bool:
        """True once the delay topic exists, False if the forwarder closed first; after
        :data:`SETTLE` seconds when it appeared without records scheduled here."""
        appeared = False
        while not self._closed:
            poked = self._poked.is_set()
            self._poked.clear()
            count = await self.binder.admin.partition_count(self.topic)
            if count is not None:
                if count < PARTITIONS:
                    raise BackendError(
                        f"kafka at {self.binder.options.bootstrap_servers}: delay topic "
                        f"{self.topic!r} has {count} partition(s), {PARTITIONS} needed"
                    )
                if appeared and not poked:
                    await self._sleep(SETTLE, self._poked)
                return not self._closed
            appeared = True
            await self._sleep(DISCOVER, self._poked)
        return False

    def _make_client(self) -> AIOKafkaConsumer:
        options = self.binder.options
        settings = dict(options.consumer())
        settings.update(
            group_id=forwarder_group(self.destination),
            auto_offset_reset="earliest",
            fetch_max_wait_ms=min(options.fetch_max_wait_ms, FETCH_WAIT_MS),
            max_poll_records=BATCH,
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        return AIOKafkaConsumer(**self.binder.connection, **settings)

    async def _serve(self) -> None:
        client = self._client = self._make_client()
        self._partitions, self._heap = {}, []
        try:
            client.subscribe([self.topic], listener=self)
            with backend_errors(self.binder.options.bootstrap_servers, f"join {self.topic!r}"):
                if not await self._unless_closed(client.start()):
                    return
            if self._failing:
                log.info("forwarding the delayed records of %r works again", self.destination)
                self._failing = False
            await self._loop(client)
            async with self._lock:
                try:
                    await self._hand_back(set(self._partitions))
                except Exception as exc:
                    log.error(
                        "closing the forwarder of %r with held records not handed back "
                        "(they may be delivered twice): %s",
                        self.destination,
                        exc,
                    )
        finally:
            self._client = None
            await _stopped(client)

    async def _unless_closed(self, work: Awaitable[Any]) -> bool:
        """Await ``work`` unless the forwarder closes first (then it is cancelled)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, *CLIENT_ERRORS):
            await task
        return False

    async def _loop(self, client: AIOKafkaConsumer) -> None:
        """Read, sleep until the next record may leave, move what may; until closed."""
        poll: asyncio.Future[tuple[int, Any]] | None = None
        sleep: asyncio.Future[None] | None = None
        sleeping_until: float | None = None
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._closed:
                if poll is None:
                    poll = asyncio.ensure_future(self._poll(client))
                wake = self._wake_at()
                if wake != sleeping_until or self._blocked:
                    if sleep is not None:
                        sleep.cancel()
                    sleep = None if wake is None else asyncio.ensure_future(self._until(wake))
                    sleeping_until = wake
                waits: set[asyncio.Future[Any]] = {poll, stop}
                if sleep is not None:
                    waits.add(sleep)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if self._closed:
                    return
                async with self._lock:
                    if poll.done():
                        generation, batch = poll.result()
                        poll = None
                        if generation == self._generation:
                            self._read(batch)
                    await self._step(client)
                if sleep is not None and sleep.done():
                    sleep, sleeping_until = None, None
        finally:
            for future in (poll, sleep, stop):
                if future is not None:
                    future.cancel()

    async def _poll(self, client: AIOKafkaConsumer) -> tuple[int, Any]:
        """A read, with the assignment it belongs to: the generation when it returned (a
        read begun before a rebalance may return what the new assignment fetched)."""
        batch = await client.getmany(timeout_ms=POLL_MS, max_records=BATCH)
        return self._generation, batch

    async def _until(self, when_ms: float) -> None:
        if self._blocked:  # looking again soon, on any clock
            await asyncio.sleep(RECHECK)
        else:
            await self.clock.sleep_until(when_ms / 1000)

    def _now(self) -> int:
        return int(self.clock.time() * 1000)

    def _wake_at(self) -> float | None:
        """When the next record may leave or is due (epoch ms)."""
        heads = [p.waiting[0].leave for p in self._partitions.values() if p.waiting]
        if self._heap:
            heads.append(self._heap[0][0])
        return min(heads, default=None)

    # -- moving -----------------------------------------------------------------------------

    def _read(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            partition = self._partitions.get(tp.partition)
            if partition is None or tp.topic != self.topic:
                continue
            if records:
                partition.waiting.extend(waiting(r) for r in records)
                partition.next = records[-1].offset + 1
                log.debug("%s: read %d of partition %d", self.topic, len(records), tp.partition)

    async def _step(self, client: AIOKafkaConsumer) -> None:
        """Move what may leave, release what is due, commit; pause what is full."""
        now = self._now()
        hops: list[OutboundRecord] = []
        for number, partition in self._partitions.items():
            queue = partition.waiting
            while queue and queue[0].leave <= now:
                entry = queue.popleft()
                level, leave = place(now, entry.due)
                if level == 0:
                    held = (entry.due, entry.at, next(self._order), number, entry)
                    heapq.heappush(self._heap, held)
                    partition.held.add(entry.offset)
                else:
                    hops.append(entry.moved(level, leave))
        due = await self._due(client, now)
        if hops:
            await self._send(self.topic, hops)
        if due:
            await self._release(due)
        await self._commit(client, self._partitions)
        self._pause_full(client)

    async def _due(self, client: AIOKafkaConsumer, now: int) -> list[_Held]:
        """The held records due by ``now``, in due order, once nothing can overtake them."""
        heap = self._heap
        self._blocked = False
        if not heap or heap[0][0] > now:
            return []
        if not await self._read_up(client):
            self._blocked = True
            return []
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        return due

    async def _read_up(self, client: AIOKafkaConsumer) -> bool:
        """Every partition owned waits on a head not yet free, or was read to its end (as
        of its last fetch)."""
        try:
            for number, partition in self._partitions.items():
                if partition.waiting:
                    continue
                tp = TopicPartition(self.topic, number)
                end = client.highwater(tp)
                if end is None or await client.position(tp) < end:
                    return False
        except (AssertionError, IllegalStateError):  # revoked meanwhile
            return False
        return True

    async def _release(self, due: Sequence[_Held]) -> None:
        """Write due records to their destination partitions, as an ordinary send would."""
        count = await self._destination_count(max(entry.target for *_, entry in due))
        records = [
            OutboundRecord(e.value, e.key, {}, e.target % count, raw_headers=e.headers)
            for *_, e in due
        ]
        await self._send(self.destination, records)
        for *_, number, entry in due:
            partition = self._partitions.get(number)
            if partition is not None:
                partition.held.discard(entry.offset)

    async def _destination_count(self, highest: int) -> int:
        """The destination's partition count, looked up again when ``highest`` exceeds it
        (a record for a partition it lacks goes to ``partition % count``)."""
        if self._count is None or highest >= self._count:
            count = await self.binder.admin.partition_count(self.destination)
            if count is None:  # writing to it would make the broker create it
                raise BackendError(
                    f"kafka at {self.binder.options.bootstrap_servers}: destination "
                    f"{self.destination!r} of delayed records does not exist"
                )
            self._count = count
        return self._count

    async def _send(self, topic: str, records: Sequence[OutboundRecord]) -> None:
        sends = await self.binder.send_queue()
        try:
            await sends.send(topic, records)
        except CLIENT_ERRORS as exc:
            raise backend_error(
                self.binder.options.bootstrap_servers, f"forward to {topic!r}", exc
            ) from exc

    async def _commit(self, client: AIOKafkaConsumer, numbers: Iterable[int]) -> None:
        """Commit each partition up to its oldest record not moved nor released."""
        offsets = {}
        for number in numbers:
            partition = self._partitions.get(number)
            if partition is None:
                continue
            low = partition.committable()
            if low is not None and low != partition.committed:
                offsets[TopicPartition(self.topic, number)] = low
        if not offsets:
            return
        try:
            await client.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit on %r lost to a rebalance: %s", self.topic, exc)
            return
        for tp, offset in offsets.items():
            self._partitions[tp.partition].committed = offset

    def _pause_full(self, client: AIOKafkaConsumer) -> None:
        for number, partition in self._partitions.items():
            full = len(partition.waiting) >= PAUSE_AT
            if full != partition.paused:
                tp = TopicPartition(self.topic, number)
                if full:
                    client.pause(tp)
                else:
                    client.resume(tp)
                partition.paused = full

    async def _hand_back(self, numbers: set[int]) -> None:
        """Write the held records of ``numbers`` back to partition 0, commit them, forget
        them: their next owner reads each once."""
        client = self._client
        if not numbers or client is None:
            return
        back = sorted(held for held in self._heap if held[3] in numbers)
        if back:
            now = self._now()
            await self._send(self.topic, [entry.moved(0, now) for *_, entry in back])
            self._heap = [held for held in self._heap if held[3] not in numbers]
            heapq.heapify(self._heap)
            for *_, number, entry in back:
                if (partition := self._partitions.get(number)) is not None:
                    partition.held.discard(entry.offset)
        await self._commit(client, numbers)
        for number in numbers:
            self._partitions.pop(number, None)

    # -- ConsumerRebalanceListener ----------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            try:
                await self._hand_back({tp.partition for tp in revoked if tp.topic == self.topic})
            except Exception as exc:
                log.error(
                    "handing back the held records of %r failed (they may be delivered twice): %s",
                    self.destination,
                    exc,
                )
                self._partitions, self._heap = {}, []

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            self._partitions = {tp.partition: _Partition() for tp in assigned}
            self._heap = [held for held in self._heap if held[3] in self._partitions]
            self._blocked = False
