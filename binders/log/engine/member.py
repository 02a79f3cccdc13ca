"""A consumer of the embedded log: one member of a group (or an anonymous reader).

Split from :mod:`binders.log.engine.broker`, which owns the state it reads: every
method here that ends in ``_locked`` runs under the broker's lock, and a
member waiting in :meth:`Member.poll` parks on a future of its own event loop,
woken from any thread (see the engine's docstring for the whole model).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, Protocol

from binder.errors import BackendError
from binder.wakeup import wake
from binders.log.engine.membership import member_id
from binders.log.engine.segment import CorruptLogError
from binders.log.engine.storage import StoredRecord

if TYPE_CHECKING:
    from binders.log.engine import Broker, Topic

__all__ = ["Member", "MembershipFactory", "PartitionsCallback", "SharedGroup", "Start"]

log = logging.getLogger("binder.log")

Start = Literal["earliest", "latest"]
PartitionsCallback = Callable[[set[int]], Awaitable[None]]


class SharedGroup(Protocol):
    """A group's members and partition owners across processes
    (:mod:`binders.log.engine.membership`)."""

    def join(self, member: str) -> None: ...
    def leave(self, member: str) -> None: ...
    def live(self) -> list[str]: ...
    def own(self, partition: int) -> bool: ...
    def disown(self, partition: int) -> None: ...
    def close(self) -> None: ...


MembershipFactory = Callable[[str, str], SharedGroup]
"""``(topic, group)`` → the group's :class:`SharedGroup` (a storage's ``membership``)."""


class _Group:
    """The dynamic members of one group on one topic, and which member holds which partition.

    With ``shared`` (several processes), the assignment is computed over every
    live member's id, sorted, and a partition is held only with its owner lock.
    """

    __slots__ = ("holders", "ids", "members", "name", "shared")

    def __init__(self, name: str, shared: SharedGroup | None = None) -> None:
        self.name = name
        self.members: list[Member] = []
        self.holders: dict[int, Member] = {}
        self.shared = shared
        self.ids: list[str] = []

    def add_locked(self, member: Member) -> None:
        self.members.append(member)
        if self.shared is not None:
            self.shared.join(member.id)
            self.ids = self.shared.live()
        self.nudge_locked(member)

    def remove_locked(self, member: Member) -> None:
        self.members.remove(member)
        if self.shared is not None:
            self.shared.leave(member.id)
            self.ids = [i for i in self.ids if i != member.id]
        self.nudge_locked(member)

    def check_locked(self) -> None:
        """Re-list the live members elsewhere; re-check assignments that changed or wait."""
        if self.shared is None:
            return
        ids = self.shared.live()
        changed, self.ids = ids != self.ids, ids
        for member in self.members:
            if changed or member._held.keys() != member._desired_locked():
                member._stale = True
                member._wake_locked()

    def nudge_locked(self, source: Member | None) -> None:
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
        self.id = member_id()
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
        self._committed: dict[int, int] = {}
        self._damaged: dict[int, CorruptLogError] = {}
        self._reported: set[tuple[int, int | None]] = set()
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

    def lag(self) -> dict[int, int]:
        """Partition → records after the group's committed offset (a member of no group, or
        of one that has not committed there: after its read position), per partition held."""
        with self._lock:
            offsets = self._broker._offsets
            lag = {}
            for partition, position in self._held.items():
                end = self._topic._logs[partition].end_offset
                committed = None
                if self.group is not None:
                    committed = offsets.committed(self.group, self.topic, partition)
                lag[partition] = max(0, end - (position if committed is None else committed))
            return lag

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def damaged(self) -> dict[int, CorruptLogError]:
        """Held partitions stopped at damage on disk, each with its error (see :meth:`poll`)."""
        with self._lock:
            return dict(self._damaged)

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
        released all the same). On a durable log, a held partition whose next
        records are damaged on disk stops there alone: the records before the
        damage are returned, the error is logged once and kept in
        :attr:`damaged`, its position stays at the damage (nothing is skipped)
        and the other partitions go on. It is read again only once it was
        released and assigned again (after ``binder log repair``, say).
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
        members and after :meth:`close`. Forward of what this member committed
        (read from the store when it took the partition): only the holder commits
        a partition, so the store is not read again for each commit (it costs
        file-system calls on a durable log, per message).
        """
        with self._lock:
            if self.group is None or partition not in self._held:
                return
            current = self._committed.get(partition)
            if current is None or next_offset > current:
                self._broker._offsets.commit(self.group, self.topic, partition, next_offset)
                self._committed[partition] = next_offset

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
        if self._group.shared is not None:
            ids = self._group.ids
            return set(range(ids.index(self.id), count, len(ids))) if self.id in ids else set()
        members = self._group.members
        return set(range(members.index(self), count, len(members)))

    def _acquire_locked(self, desired: set[int]) -> None:
        holders = None if self._group is None else self._group.holders
        shared = None if self._group is None else self._group.shared
        for partition in sorted(desired - self._held.keys()):
            if holders is not None:
                if partition in holders:
                    continue  # its holder releases it in its next poll, then nudges us
                if shared is not None and not shared.own(partition):
                    continue  # another process holds it; the watch retries
                holders[partition] = self
            self._held[partition] = self._committed[partition] = self._start_locked(partition)
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
            self._committed.pop(partition, None)
            self._damaged.pop(partition, None)
            self._unannounced.discard(partition)
            if self._group is not None and self._group.holders.get(partition) is self:
                del self._group.holders[partition]
                if self._group.shared is not None:
                    self._group.shared.disown(partition)
        self._order = sorted(self._held)
        if self._group is not None:
            self._group.nudge_locked(self)

    def _read_locked(self, max_records: int) -> list[StoredRecord]:
        """Round-robin over held partitions, a fair share each, until full or dry.

        A partition that cannot read on (damage on disk) is set aside in
        :attr:`_damaged` at its position; the others are read on.
        """
        order, held, logs, damaged = self._order, self._held, self._topic._logs, self._damaged
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
                if log.end_offset <= held[partition] or partition in damaged:
                    continue
                try:
                    records = log.read(held[partition], min(share, remaining))
                except CorruptLogError as exc:
                    self._set_aside_locked(partition, exc)
                    continue
                except BackendError:  # hand out what was read before the failure first
                    if out:
                        return out
                    raise
                if records:
                    held[partition] = records[-1].offset + 1
                    out.extend(records)
                    remaining -= len(records)
                    progressed = True
                    if not remaining:
                        break
        return out

    def _set_aside_locked(self, partition: int, exc: CorruptLogError) -> None:
        """Stop reading ``partition`` at its position (damage on disk); log it once."""
        self._damaged[partition] = exc
        position = self._held[partition]
        if (partition, exc.first) in self._reported:
            return
        self._reported.add((partition, exc.first))
        if exc.end is not None:
            unread = f"offsets {exc.first}..{exc.end - 1}"
        else:
            unread = f"the batch holding offset {position}"
        log.error(
            "log: %s/%d stopped at offset %d for group %s: %s cannot be read (damage on disk);"
            " the other partitions go on. `binder log repair PATH --skip-damaged` gives them up"
            " (%s)",
            self.topic,
            partition,
            position,
            self.group or "(anonymous)",
            unread,
            exc,
            extra={"destination": self.topic, "group": self.group, "partition": partition},
        )

    def _wake_locked(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            wake(waiter)

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release_locked(set(self._held))
        self._topic._members.remove(self)
        group = self._group
        if group is not None:
            group.remove_locked(self)
            if not group.members and self._topic._groups.get(group.name) is group:
                del self._topic._groups[group.name]
                if group.shared is not None:
                    group.shared.close()
        self._wake_locked()
