"""The embedded log engine: topics of partitions, consumer groups, committed offsets.

A :class:`Broker` is shared by every app in the process that names it
(:meth:`Broker.named`), and those apps may each run their own event loop in
their own thread. So:

- every state change happens under one ``threading.Lock`` per broker, and
  nothing awaits while holding it;
- a :class:`Member` waiting in :meth:`Member.poll` parks on a future of its own
  loop; whoever wakes it (an append, a rebalance, a resume, a close) resolves
  that future directly when on the same loop, else through
  ``loop.call_soon_threadsafe``.

Group rebalancing is cooperative. Members of one group on one topic split its
partitions round-robin in join order; when that assignment changes, each member
gives up what it no longer should own in its next :meth:`Member.poll` (after
awaiting ``on_revoke``, where the core commits finished work), and a member
takes a partition only once nobody holds it, at the group's committed offset.
No two members of a group read one partition at once, and the next owner
starts right after the last commit.

Records live behind the protocols of :mod:`binders.log.storage`; this module
never touches a list of records itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Literal

from binder.errors import BackendError, ClosedError
from binders.log.storage import (
    Entry,
    LogFactory,
    MemoryOffsetStore,
    MemoryPartitionLog,
    OffsetStore,
    PartitionLog,
    StoredRecord,
    memory_logs,
)

__all__ = [
    "Broker",
    "Entry",
    "LogFactory",
    "Member",
    "MemoryOffsetStore",
    "MemoryPartitionLog",
    "OffsetStore",
    "PartitionLog",
    "Start",
    "StoredRecord",
    "Topic",
    "memory_logs",
]

Start = Literal["earliest", "latest"]
PartitionsCallback = Callable[[set[int]], Awaitable[None]]

_registry_lock = threading.Lock()
_registry: dict[str, Broker] = {}


class Broker:
    """Topics, groups and offsets, shared by name across apps, loops and threads.

    Every method is thread-safe and returns without waiting for anything but
    the broker lock. Methods raise :class:`~binder.errors.ClosedError` once the
    broker is closed, except :meth:`close` and the read-only look-ups.
    """

    def __init__(
        self,
        name: str = "",
        *,
        open_log: LogFactory | None = None,
        offsets: OffsetStore | None = None,
    ) -> None:
        self.name = name
        self._open_log = open_log or memory_logs()
        self._offsets = offsets if offsets is not None else MemoryOffsetStore()
        self._lock = threading.Lock()
        self._topics: dict[str, Topic] = {}
        self._closed = False

    @classmethod
    def named(cls, name: str, factory: Callable[[], Broker] | None = None) -> Broker:
        """The process-wide broker called ``name``, made on first use by ``factory``.

        Without ``factory`` the broker is in memory. A closed broker is replaced.
        """
        with _registry_lock:
            broker = _registry.get(name)
            if broker is None or broker.closed:
                broker = _registry[name] = factory() if factory else cls(name)
            return broker

    @staticmethod
    def forget(name: str) -> None:
        """Unregister and close the broker called ``name``, if any. Idempotent."""
        with _registry_lock:
            broker = _registry.pop(name, None)
        if broker is not None:
            broker.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def create_topic(self, name: str, partitions: int = 1) -> Topic:
        """The topic ``name`` with at least ``partitions`` partitions. Idempotent.

        A topic grows and never shrinks; members pick up new partitions in
        their next poll, and every group known on the topic starts the new
        partitions at their first record.
        """
        if partitions < 1:
            raise ValueError(f"a topic needs at least one partition, not {partitions}")
        with self._lock:
            self._check_open()
            topic = self._topic_locked(name)
            self._grow_locked(topic, partitions)
            return topic

    def topic(self, name: str) -> Topic | None:
        """The topic ``name``, or ``None`` if it does not exist."""
        with self._lock:
            return self._topics.get(name)

    def delete_topic(self, name: str) -> None:
        """Delete ``name``, its records and its groups' offsets; close its members. Idempotent."""
        with self._lock:
            self._check_open()
            topic = self._topics.pop(name, None)
            if topic is not None:
                for member in list(topic._members):
                    member._close_locked()
                for log in topic._logs:
                    log.delete()
            for group in self._offsets.groups(name):
                self._offsets.delete_group(group, name)

    def append(self, topic: str, partition: int, entries: Sequence[Entry]) -> int:
        """Append ``entries`` to one partition as a batch; return the first offset.

        Creates a missing topic with one partition; raises
        :class:`~binder.errors.BackendError` for a partition the topic lacks.
        Wakes the members polling that partition.
        """
        with self._lock:
            self._check_open()
            found = self._topic_locked(topic)
            base = self._log_locked(found, partition).append(entries)
            for member in found._members:
                if member._waiter is not None and partition in member._held:
                    member._wake_locked()
            return base

    def read(self, topic: str, partition: int, offset: int, max_records: int) -> list[StoredRecord]:
        """Up to ``max_records`` records of a partition from ``offset`` (for inspection)."""
        with self._lock:
            found = self._topics.get(topic)
            if found is None or partition >= found.partition_count:
                return []
            return found._logs[partition].read(offset, max_records)

    def start_offsets(self, topic: str) -> dict[int, int]:
        """Partition → first retained offset; ``{}`` for an unknown topic."""
        with self._lock:
            found = self._topics.get(topic)
            return {} if found is None else dict(enumerate(x.start_offset for x in found._logs))

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Partition → next offset to be written; ``{}`` for an unknown topic."""
        with self._lock:
            found = self._topics.get(topic)
            return {} if found is None else dict(enumerate(x.end_offset for x in found._logs))

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Partition → the group's committed offset, for the partitions it committed."""
        with self._lock:
            found = self._topics.get(topic)
            count = 0 if found is None else found.partition_count
            offsets = ((p, self._offsets.committed(group, topic, p)) for p in range(count))
            return {p: offset for p, offset in offsets if offset is not None}

    def register_group(self, topic: str, group: str) -> None:
        """Create ``group`` on ``topic`` (made if missing) at the earliest offsets. Idempotent.

        A registered (required) group reads everything from the start when it
        first joins, whatever its ``start``; offsets it has committed are kept.
        """
        with self._lock:
            self._check_open()
            found = self._topic_locked(topic)
            for p, log in enumerate(found._logs):
                if self._offsets.committed(group, topic, p) is None:
                    self._offsets.commit(group, topic, p, log.start_offset)

    def join(
        self,
        topic: str,
        group: str | None = None,
        *,
        start: Start | None = None,
        static: tuple[int, int] | None = None,
        on_revoke: PartitionsCallback | None = None,
        on_assign: PartitionsCallback | None = None,
    ) -> Member:
        """A new consumer of ``topic`` (made with one partition if missing).

        ``group=None`` is anonymous: every partition, from the end unless
        ``start="earliest"``, no commits, nothing kept after close. A named
        group starts a partition at its committed offset, else at the earliest
        record unless ``start="latest"`` (that starting point is committed at
        once, so later members of the group start there too). ``static=(index,
        count)`` owns the partitions ``p % count == index`` without sharing;
        otherwise the group's members split the partitions (see
        :meth:`Member.poll`). Partitions free now are taken at once, so nothing
        appended after ``join`` returns is missed.
        """
        if start not in (None, "earliest", "latest"):
            raise ValueError(f"start must be 'earliest', 'latest' or None, not {start!r}")
        if static is not None and not 0 <= static[0] < static[1]:
            raise ValueError(f"static must be (index, count) with 0 <= index < count: {static}")
        with self._lock:
            self._check_open()
            found = self._topic_locked(topic)
            member = Member(self, found, group, start, static, on_revoke, on_assign)
            found._members.append(member)
            if member._group is not None:
                member._group.members.append(member)
                member._group.nudge_locked(member)
            member._acquire_locked(member._desired_locked())
            return member

    def close(self) -> None:
        """Close every member (their polls return ``[]``), log and the offset store. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for topic in self._topics.values():
                for member in list(topic._members):
                    member._close_locked()
                for log in topic._logs:
                    log.close()
            self._offsets.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"log: broker {self.name!r} is closed")

    def _topic_locked(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = Topic(name)
            self._grow_locked(topic, 1)
        return topic

    def _grow_locked(self, topic: Topic, partitions: int) -> None:
        old = topic.partition_count
        if partitions <= old:
            return
        topic._logs.extend(self._open_log(topic.name, p) for p in range(old, partitions))
        if old:
            self._start_groups_locked(topic, range(old, partitions))
        for member in topic._members:
            member._stale = True
            member._wake_locked()

    def _start_groups_locked(self, topic: Topic, partitions: range) -> None:
        """Existing groups read partitions added now from their first record."""
        known = self._offsets.groups(topic.name)
        known.update(m.group for m in topic._members if m.group is not None)
        for group in known:
            for p in partitions:
                if self._offsets.committed(group, topic.name, p) is None:
                    self._offsets.commit(group, topic.name, p, topic._logs[p].start_offset)

    def _log_locked(self, topic: Topic, partition: int) -> PartitionLog:
        if not 0 <= partition < topic.partition_count:
            raise BackendError(
                f"log: topic {topic.name!r} has {topic.partition_count} partition(s),"
                f" no partition {partition}"
            )
        return topic._logs[partition]


class Topic:
    """A topic's partitions and who reads them; changed only under its broker's lock."""

    __slots__ = ("_groups", "_logs", "_members", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logs: list[PartitionLog] = []
        self._members: list[Member] = []
        self._groups: dict[str, _Group] = {}

    @property
    def partition_count(self) -> int:
        return len(self._logs)

    def _group_locked(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(name)
        return group

    def __repr__(self) -> str:
        return f"Topic({self.name!r}, partitions={self.partition_count})"


class _Group:
    """The dynamic members of one group on one topic, and which member holds which partition."""

    __slots__ = ("holders", "members", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[Member] = []
        self.holders: dict[int, Member] = {}

    def nudge_locked(self, source: Member) -> None:
        """Make every other member re-check its assignment in its next poll (a new generation)."""
        for member in self.members:
            if member is not source:
                member._stale = True
                member._wake_locked()


_REVOKE, _ASSIGN = "revoke", "assign"


class Member:
    """One consumer instance of a topic, made by :meth:`Broker.join`.

    :meth:`poll` is meant to be called by one task at a time; every other
    method may be called from anywhere.
    """

    def __init__(
        self,
        broker: Broker,
        topic: Topic,
        group: str | None,
        start: Start | None,
        static: tuple[int, int] | None,
        on_revoke: PartitionsCallback | None,
        on_assign: PartitionsCallback | None,
    ) -> None:
        self.topic = topic.name
        self.group = group
        self.static = static
        self._broker = broker
        self._lock = broker._lock
        self._topic = topic
        self._start = start
        self._on_revoke = on_revoke
        self._on_assign = on_assign
        dynamic = group is not None and static is None
        self._group = topic._group_locked(group) if dynamic else None
        self._joined_with = topic.partition_count
        self._held: dict[int, int] = {}
        self._order: list[int] = []
        self._cursor = 0
        self._unannounced: set[int] = set()
        self._stale = False
        self._paused = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def assignment(self) -> frozenset[int]:
        """The partitions this member holds now."""
        with self._lock:
            return frozenset(self._held)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def paused(self) -> bool:
        return self._paused

    def position(self, partition: int) -> int | None:
        """The next offset this member reads from ``partition``; ``None`` if not held."""
        with self._lock:
            return self._held.get(partition)

    async def poll(self, max_records: int) -> list[StoredRecord]:
        """Up to ``max_records`` records (each knows its partition); waits until there is one.

        First settles a pending rebalance: awaits ``on_revoke(partitions)`` for
        what this member must give up and then releases them, takes newly
        assigned partitions once free and awaits ``on_assign(partitions)``.
        Then reads round-robin across held partitions, in offset order within
        each, advancing this member's positions (not the group's commits).
        With nothing to read, or while paused, waits for an append to a held
        partition, a rebalance, :meth:`resume` or :meth:`close`. Returns ``[]``
        once closed. Cancellation is safe: nothing is read by a cancelled poll.
        An exception from a callback propagates (revoked partitions are
        released all the same).
        """
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        while True:
            with self._lock:
                if self._closed:
                    return []
                step = self._step_locked()
                if step is None:
                    if not self._paused:
                        batch = self._read_locked(max_records)
                        if batch:
                            return batch
                    waiter = self._park_locked()
            if step is None:
                await self._wait(waiter)
            elif step[0] is _REVOKE:
                await self._revoke(step[1])
            elif self._on_assign is not None:
                await self._on_assign(step[1])

    def commit(self, partition: int, next_offset: int) -> None:
        """Record ``next_offset`` as the group's position in ``partition``.

        Only moves forward, and only while this member holds the partition: a
        late commit never rewinds another member. A no-op for anonymous
        members and after :meth:`close`.
        """
        with self._lock:
            if self.group is None or partition not in self._held:
                return
            offsets = self._broker._offsets
            current = offsets.committed(self.group, self.topic, partition)
            if current is None or next_offset > current:
                offsets.commit(self.group, self.topic, partition, next_offset)

    def pause(self) -> None:
        """Stop returning records from :meth:`poll`; rebalances are still handled."""
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`, waking a waiting :meth:`poll`."""
        with self._lock:
            self._paused = False
            self._wake_locked()

    async def close(self) -> None:
        """Leave without committing anything; wake a waiting poll. Idempotent.

        Released partitions go to the group's other members, which resume
        from the last commit: records fetched but not committed are delivered
        again.
        """
        with self._lock:
            self._close_locked()

    def __repr__(self) -> str:
        return f"Member({self.topic!r}, group={self.group!r}, assignment={sorted(self._held)})"

    def _park_locked(self) -> asyncio.Future[None]:
        if self._waiter is not None:
            raise RuntimeError("Member.poll is already waiting in another task")
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    async def _wait(self, waiter: asyncio.Future[None]) -> None:
        try:
            await waiter
        finally:
            with self._lock:
                if self._waiter is waiter:
                    self._waiter = None

    async def _revoke(self, partitions: set[int]) -> None:
        try:
            if self._on_revoke is not None:
                await self._on_revoke(set(partitions))
        finally:
            with self._lock:
                self._release_locked(partitions & self._held.keys())
                self._stale = True

    def _step_locked(self) -> tuple[str, set[int]] | None:
        """What poll must do before reading: revoke, announce an assignment, or nothing."""
        if self._stale:
            self._stale = False
            desired = self._desired_locked()
            revoked = self._held.keys() - desired
            silent = revoked & self._unannounced  # the core never heard of these
            self._release_locked(silent)
            if revoked - silent:
                return _REVOKE, revoked - silent
            self._acquire_locked(desired)
        if self._unannounced:
            announced, self._unannounced = self._unannounced, set()
            return _ASSIGN, announced
        return None

    def _desired_locked(self) -> set[int]:
        count = self._topic.partition_count
        if self.static is not None:
            return set(range(self.static[0], count, self.static[1]))
        if self._group is None:
            return set(range(count))
        members = self._group.members
        return set(range(members.index(self), count, len(members)))

    def _acquire_locked(self, desired: set[int]) -> None:
        holders = None if self._group is None else self._group.holders
        for partition in sorted(desired - self._held.keys()):
            if holders is not None:
                if partition in holders:
                    continue  # its holder releases it in its next poll, then nudges us
                holders[partition] = self
            self._held[partition] = self._start_locked(partition)
            self._unannounced.add(partition)
        self._order = sorted(self._held)

    def _start_locked(self, partition: int) -> int:
        log = self._topic._logs[partition]
        offsets = self._broker._offsets
        if self.group is not None:
            committed = offsets.committed(self.group, self.topic, partition)
            if committed is not None:
                return committed
        latest = self._start == "latest" or (self._start is None and self.group is None)
        # A partition added after this member joined only holds records sent since.
        new = partition >= self._joined_with
        position = log.end_offset if latest and not new else log.start_offset
        if self.group is not None:
            offsets.commit(self.group, self.topic, partition, position)
        return position

    def _release_locked(self, partitions: set[int]) -> None:
        if not partitions:
            return
        for partition in partitions:
            del self._held[partition]
            self._unannounced.discard(partition)
            if self._group is not None and self._group.holders.get(partition) is self:
                del self._group.holders[partition]
        self._order = sorted(self._held)
        if self._group is not None:
            self._group.nudge_locked(self)

    def _read_locked(self, max_records: int) -> list[StoredRecord]:
        """Round-robin over held partitions, a fair share each, until full or dry."""
        order, held, logs = self._order, self._held, self._topic._logs
        count = len(order)
        out: list[StoredRecord] = []
        if not count:
            return out
        first = self._cursor % count
        self._cursor = first + 1
        share = -(-max_records // count)
        remaining, progressed = max_records, True
        while remaining and progressed:
            progressed = False
            for i in range(count):
                partition = order[(first + i) % count]
                log = logs[partition]
                if log.end_offset <= held[partition]:
                    continue
                records = log.read(held[partition], min(share, remaining))
                if records:
                    held[partition] = records[-1].offset + 1
                    out.extend(records)
                    remaining -= len(records)
                    progressed = True
                    if not remaining:
                        break
        return out

    def _wake_locked(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _resolve_soon(waiter)

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release_locked(set(self._held))
        self._topic._members.remove(self)
        group = self._group
        if group is not None:
            group.members.remove(self)
            group.nudge_locked(self)
            if not group.members and self._topic._groups.get(group.name) is group:
                del self._topic._groups[group.name]
        self._wake_locked()


def _resolve_soon(waiter: asyncio.Future[None]) -> None:
    """Resolve ``waiter`` on its own loop, from any thread (a closed loop is ignored)."""
    loop = waiter.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _resolve(waiter)
    else:
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
