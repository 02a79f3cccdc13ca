"""Delayed delivery on the embedded log: a schedule next to each destination's partitions.

A delayed record is appended, with the partition it is for, to the destination's schedule
topic ``__delayed.<destination>`` (one partition; durable on a durable log, like any topic,
and kept by retention until moved). Every producer and consumer of the destination runs a
:class:`Mover`; the movers are the members of one group on the schedule topic, so one of
them, in whichever process of a shared durable log, holds it. That one reads the schedule
into a heap of (due, offset), and when the head is due appends the record to its partition
(headers as scheduled, ``x-deliver-at`` included), then appends a marker naming the offset it
moved and commits the schedule up to the oldest record not moved yet. A mover that takes over
(the holder closed or died) reads from that commit to the end before moving anything, so it
knows every marker; a record is moved twice only if its holder died between the append and
the marker (at least once, never lost). Records due at the same time move in schedule order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from typing import Any

from binder.clock import Clock
from binder.message import DELIVER_AT
from binders.log.engine import Broker, Entry, Member

__all__ = ["MOVER_GROUP", "SCHEDULE_BATCH", "Mover", "schedule_entries", "schedule_topic"]

log = logging.getLogger("binder.log.scheduler")

MOVER_GROUP = "__streambinder.mover"
"""The group of the movers of every schedule topic."""
TARGET = "x-scheduled-partition"
"""Header of a scheduled record: the destination partition it is for."""
MOVED = "x-scheduled-moved"
"""Header of a marker: the schedule offset of a record that was moved."""
_BATCH = 1000
_STEP = 500
"""Most records one step of a move appends before letting the loop run."""
SCHEDULE_BATCH = 8
"""Records per appended batch of a schedule: a move reads one record back, and the engine
decodes a whole batch to read one, so the schedule's batches are kept small."""
_NEVER = float("inf")


def schedule_topic(destination: str) -> str:
    return f"__delayed.{destination}"


def schedule_entries(records: Any, now: float) -> list[Entry]:
    """The schedule topic's entries of outbound ``records`` (their headers carry
    ``x-deliver-at``), each with the partition it is for."""
    return [(r.key, r.value, {**r.headers, TARGET: str(r.partition)}, now) for r in records]


class Mover:
    """Moves the due records of one destination while it runs (see the module docstring)."""

    def __init__(self, broker: Broker, destination: str, clock: Clock) -> None:
        self.broker = broker
        self.destination = destination
        self.topic = schedule_topic(destination)
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._member: Member | None = None
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._due: list[tuple[float, int, int]] = []  # (due ms, schedule offset, partition)
        self._waiting: list[int] = []  # offsets not moved yet (lazy: see _moved)
        self._moved: set[int] = set()  # moved (or marked) and still above the commit
        self._next = 0  # the schedule offset after the last one read
        self._held = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mover:{self.destination}"
            )

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        member, self._member = self._member, None
        if member is not None:
            await member.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        """Serve until closed; an error is logged and the mover starts over a second later
        (its records wait in the schedule, nothing is lost)."""
        while not self._closed:
            try:
                await self._serve()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                log.error(
                    "moving the due records of %r failed, again in 1 s: %s",
                    self.destination,
                    exc,
                    exc_info=exc,
                )
                member, self._member = self._member, None
                if member is not None:
                    await member.close()
                await asyncio.sleep(1.0)

    async def _serve(self) -> None:
        broker = self.broker
        broker.create_topic(self.topic, 1)
        broker.register_group(self.topic, MOVER_GROUP)  # retention keeps what is not moved
        self._reset()
        member = self._member = broker.join(
            self.topic,
            MOVER_GROUP,
            start="earliest",
            on_revoke=self._revoked,
            on_assign=self._assigned,
        )
        poll: asyncio.Task[list[Any]] | None = None
        sleep: asyncio.Task[None] | None = None
        sleeping_until = _NEVER
        try:
            while True:
                if poll is None:
                    poll = asyncio.ensure_future(member.poll(_BATCH))
                head = self._due[0][0] if self._due and self._caught_up() else _NEVER
                if head != sleeping_until:
                    if sleep is not None:
                        sleep.cancel()
                    sleep = None
                    if head != _NEVER:
                        sleep = asyncio.ensure_future(self.clock.sleep_until(head / 1000))
                    sleeping_until = head
                waits: set[asyncio.Future[Any]] = {poll} if sleep is None else {poll, sleep}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if poll.done():
                    records = poll.result()
                    poll = None
                    if not records and member.closed:
                        return
                    self._read(records)
                if self._held and self._caught_up():
                    await self._move_due()
                    if sleep is not None and sleep.done():
                        sleep, sleeping_until = None, _NEVER
        finally:
            for task in (poll, sleep):
                if task is not None:
                    task.cancel()

    async def _revoked(self, partitions: set[int]) -> None:
        self._reset()  # another mover holds the schedule now

    async def _assigned(self, partitions: set[int]) -> None:
        self._reset()
        self._held = True
        self._next = self.broker.committed(MOVER_GROUP, self.topic).get(0, 0)

    def _caught_up(self) -> bool:
        """Every schedule record written so far was read (so every marker is known)."""
        return self._next >= self.broker.end_offsets(self.topic).get(0, 0)

    def _read(self, records: list[Any]) -> None:
        for record in records:
            self._next = record.offset + 1
            headers = record.headers
            moved = headers.get(MOVED)
            if moved is not None:
                self._moved.add(int(moved))
                self._moved.add(record.offset)  # a marker is done once read
                heapq.heappush(self._waiting, record.offset)
                continue
            try:
                due = float(headers[DELIVER_AT])
                partition = int(headers[TARGET])
            except (KeyError, ValueError):
                log.error(
                    "schedule of %r: record %d has no due time or partition; moved now",
                    self.destination,
                    record.offset,
                )
                due, partition = 0.0, int(headers.get(TARGET, "0") or 0)
            heapq.heappush(self._due, (due, record.offset, partition))
            heapq.heappush(self._waiting, record.offset)

    async def _move_due(self) -> None:
        """Append every due record to its partition, then the markers, then commit; in steps
        of :data:`_STEP` records, letting the loop run between them (a backlog does not stall
        the app)."""
        while True:
            now = self.clock.time() * 1000
            due: list[tuple[int, int]] = []
            while self._due and self._due[0][0] <= now and len(due) < _STEP:
                _, offset, partition = heapq.heappop(self._due)
                if offset not in self._moved:
                    due.append((offset, partition))
            if due:
                await self._append(due)
            self._commit()
            if len(due) < _STEP:
                return
            await asyncio.sleep(0)

    async def _append(self, due: list[tuple[int, int]]) -> None:
        broker, topic = self.broker, self.topic
        stamp = self.clock.time()
        by_partition: dict[int, list[Entry]] = {}
        for offset, partition in due:
            (record,) = broker.read(topic, 0, offset, 1)
            headers = dict(record.headers)
            del headers[TARGET]
            by_partition.setdefault(partition, []).append(
                (record.key, record.value, headers, stamp)
            )
        waits = []
        for partition, entries in by_partition.items():
            partition = partition if partition < _count(broker, self.destination) else 0
            future = broker.append_synced(self.destination, partition, entries)[1]
            if future is not None:
                waits.append(future)
        for future in waits:
            await future
        markers: list[Entry] = [(None, b"", {MOVED: str(offset)}, stamp) for offset, _ in due]
        broker.append(topic, 0, markers)
        self._moved.update(offset for offset, _ in due)

    def _commit(self) -> None:
        """Commit the schedule up to its oldest record not moved yet."""
        waiting, moved = self._waiting, self._moved
        while waiting and waiting[0] in moved:
            moved.discard(heapq.heappop(waiting))
        low = waiting[0] if waiting else self._next
        member = self._member
        if member is not None and not member.closed and 0 in member.assignment:
            member.commit(0, low)


def _count(broker: Broker, destination: str) -> int:
    topic = broker.topic(destination)
    return topic.partition_count if topic is not None else 1
