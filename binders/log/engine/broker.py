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

Records live behind the protocols of :mod:`binders.log.engine.storage`; this module
never touches a list of records itself. A durable storage brings back the
topics of an earlier run when the broker is made, may ask for a periodic
:meth:`Broker.maintain` (segment roll and retention by age, on a thread of
the broker's), and hands producers a future to await after an append
(:meth:`Broker.append_synced`) so that no fsync ever happens under the broker lock.

A storage shared by several processes (the durable one) also asks for a
watch (:meth:`Broker.watch`, every ``storage.watch_interval`` seconds on a
thread of the broker's): it adopts what other processes appended, waking the
members that read there, and re-lists each group's live members across
processes (``storage.membership``), so a join or a death elsewhere starts the
same cooperative rebalance; a partition is then taken only once its owner in
any process has released it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Sequence

from binder.errors import BackendError, ClosedError
from binders.log.engine.member import Member, MembershipFactory, PartitionsCallback, Start, _Group
from binders.log.engine.storage import (
    Entry,
    LogFactory,
    MemoryOffsetStore,
    MemoryPartitionLog,
    MemoryStorage,
    OffsetStore,
    PartitionLog,
    Storage,
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
    "Storage",
    "StoredRecord",
    "Topic",
    "memory_logs",
]

log = logging.getLogger("binder.log")


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
        storage: Storage | None = None,
        open_log: LogFactory | None = None,
        offsets: OffsetStore | None = None,
    ) -> None:
        """A broker on ``storage`` (in memory by default, or made of ``open_log`` and ``offsets``).

        Topics the storage kept from an earlier run exist at once.
        """
        self.name = name
        self._storage: Storage = (
            storage if storage is not None else MemoryStorage(open_log, offsets)
        )
        self._open_log = self._storage.open_log
        self._offsets = self._storage.offsets
        self.syncs = self._storage.syncs
        """Whether producers await the future of :meth:`append_synced`."""
        self._lock = threading.Lock()
        self._topics: dict[str, Topic] = {}
        self._closed = False
        self._stopping = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._membership = getattr(self._storage, "membership", None)
        try:
            for topic_name, count in self._storage.topics().items():
                topic = self._topics[topic_name] = Topic(topic_name, self._membership)
                topic._logs.extend(self._open_log(topic_name, p) for p in range(count))
            opened = getattr(self._storage, "opened", None)
            if opened is not None:
                opened()  # recovery is over: other processes may open the storage now
        except BaseException:
            self.close()  # releases what was opened, the storage included
            raise
        interval = self._storage.maintenance_interval
        if interval is not None:
            self._housekeeper = self._thread(self._housekeep, interval, "housekeeping")
        watch = getattr(self._storage, "watch_interval", None)
        if watch is not None:
            self._watcher = self._thread(self._watch, watch, "watch")

    def _thread(
        self, target: Callable[[float], None], interval: float, what: str
    ) -> threading.Thread:
        thread = threading.Thread(
            target=target, args=(interval,), name=f"binder-log-{what}", daemon=True
        )
        thread.start()
        return thread

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

    @property
    def storage(self) -> Storage:
        """Where this broker keeps its topics."""
        return self._storage

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
                for partition_log in topic._logs:
                    partition_log.delete()
            for group in self._offsets.groups(name):
                self._offsets.delete_group(group, name)
            self._storage.delete_topic(name)

    def append(self, topic: str, partition: int, entries: Sequence[Entry]) -> int:
        """Append ``entries`` to one partition as a batch; return the first offset.

        Creates a missing topic with one partition; raises
        :class:`~binder.errors.BackendError` for a partition the topic lacks.
        Wakes the members polling that partition. On a durable storage the
        batch has reached the OS when this returns; see :meth:`append_synced`
        to wait for the disk.
        """
        with self._lock:
            self._check_open()
            found = self._topic_locked(topic)
            base = self._log_locked(found, partition).append(entries)
            for member in found._members:
                if member._waiter is not None and partition in member._held:
                    member._wake_locked()
            return base

    def append_synced(
        self, topic: str, partition: int, entries: Sequence[Entry]
    ) -> tuple[int, asyncio.Future[None] | None]:
        """:meth:`append`, and a future resolved once the batch is as durable as the storage's
        fsync policy makes it (``None``: nothing to wait for).

        Call it on the event loop that awaits the future; the wait (and the
        fsync) happens outside the broker lock (see :meth:`PartitionLog.synced`).
        """
        with self._lock:
            self._check_open()
            found = self._topic_locked(topic)
            partition_log = self._log_locked(found, partition)
            base = partition_log.append(entries)
            for member in found._members:
                if member._waiter is not None and partition in member._held:
                    member._wake_locked()
            return base, partition_log.synced(base + len(entries))

    def maintain(self) -> None:
        """Apply the storage's time-based policies now (also done on a timer when it asks)."""
        with self._lock:
            if self._closed:
                return
            for topic in self._topics.values():
                for partition_log in topic._logs:
                    partition_log.maintain()

    def _housekeep(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self.maintain()
            except Exception:
                log.exception("log: housekeeping of broker %r failed", self.name)

    def watch(self, topics: bool = True) -> None:
        """Adopt other processes' appends and group changes now (also done on a timer).

        ``topics``: also adopt topics other processes created or grew (a listing of
        the storage; the timer asks for it once a second).
        """
        with self._lock:
            if self._closed:
                return
            if topics:
                for name, count in self._storage.topics().items():
                    self._grow_locked(self._topic_locked(name), count)
            for topic in self._topics.values():
                self._watch_topic_locked(topic)

    def _watch_topic_locked(self, topic: Topic) -> None:
        for partition, partition_log in enumerate(topic._logs):
            refresh = getattr(partition_log, "refresh", None)
            if refresh is not None and refresh():
                for member in topic._members:
                    if member._waiter is not None and partition in member._held:
                        member._wake_locked()
        for group in topic._groups.values():
            group.check_locked()

    def _watch(self, interval: float) -> None:
        every = max(1, round(1.0 / interval))
        for tick in itertools.count(1):
            if self._stopping.wait(interval):
                return
            try:
                self.watch(topics=tick % every == 0)
            except Exception:
                log.exception("log: watching broker %r failed", self.name)

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

    def groups(self, topic: str) -> list[str]:
        """The groups that committed on ``topic`` or are members of it here, sorted."""
        with self._lock:
            found = self._topics.get(topic)
            if found is None:
                return []
            return sorted(set(self._offsets.groups(topic)) | set(found._groups))

    def members(self, topic: str, group: str) -> list[str]:
        """The live members of ``group`` on ``topic``, in every process of the storage."""
        with self._lock:
            found = self._topics.get(topic)
            if found is None:
                return []
            known = found._group_locked(group)
            if known.shared is not None:
                return sorted(known.shared.live())
            return sorted(member.id for member in known.members)

    def set_committed(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit ``offsets`` (partition → next offset) for ``group``, as a tool does while
        the group has no members (each offset is kept within what the partition holds)."""
        with self._lock:
            self._check_open()
            found = self._topic_locked(topic)
            for partition, offset in offsets.items():
                log = self._log_locked(found, partition)
                bounded = min(max(offset, log.start_offset), log.end_offset)
                self._offsets.commit(group, topic, partition, bounded)

    def offsets_at(self, topic: str, timestamp: float) -> dict[int, int]:
        """Partition → the first offset whose record is at least ``timestamp`` (epoch s) old,
        the end offset when none is."""
        found: dict[int, int] = {}
        for partition, end in self.end_offsets(topic).items():
            offset = self.start_offsets(topic)[partition]
            found[partition] = end
            while offset < end:
                batch = self.read(topic, partition, offset, 1000)
                if not batch:
                    break
                hit = next((r.offset for r in batch if (r.timestamp or 0) >= timestamp), None)
                if hit is not None:
                    found[partition] = hit
                    break
                offset = batch[-1].offset + 1  # type: ignore[operator]
        return found

    def register_group(self, topic: str, group: str) -> None:
        """Create ``group`` on ``topic`` (made if missing) at the earliest offsets. Idempotent.

        A registered (required) group reads everything from the start when it
        first joins, whatever its ``start``; offsets it has committed are kept.
        """
        with self._lock:
            self._check_open()
            found = self._topic_locked(topic)
            self._offsets.require(group, topic)
            for p, partition_log in enumerate(found._logs):
                if self._offsets.committed(group, topic, p) is None:
                    self._offsets.commit(group, topic, p, partition_log.start_offset)

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
                member._group.add_locked(member)
            member._acquire_locked(member._desired_locked())
            return member

    def close(self) -> None:
        """Close every member (their polls return ``[]``), log, the offsets and the storage.

        Idempotent. A durable storage writes what makes its next start clean.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping.set()
            for topic in self._topics.values():
                for member in list(topic._members):
                    member._close_locked()
                for partition_log in topic._logs:
                    partition_log.close()
            self._offsets.close()
            self._storage.close()
        for thread in (self._housekeeper, self._watcher):
            if thread is not None and thread is not threading.current_thread():
                thread.join()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"log: broker {self.name!r} is closed")

    def _topic_locked(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = Topic(name, self._membership)
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

    __slots__ = ("_groups", "_logs", "_members", "_membership", "name")

    def __init__(self, name: str, membership: MembershipFactory | None = None) -> None:
        self.name = name
        self._logs: list[PartitionLog] = []
        self._members: list[Member] = []
        self._groups: dict[str, _Group] = {}
        self._membership = membership

    @property
    def partition_count(self) -> int:
        return len(self._logs)

    def _group_locked(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            shared = None if self._membership is None else self._membership(self.name, name)
            group = self._groups[name] = _Group(name, shared)
        return group

    def __repr__(self) -> str:
        return f"Topic({self.name!r}, partitions={self.partition_count})"
