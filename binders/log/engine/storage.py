"""What the log engine keeps, behind three small protocols.

A :class:`PartitionLog` holds one partition's records; an :class:`OffsetStore`
holds every group's committed offsets; a :class:`Storage` opens the logs,
owns the offset store and remembers which topics exist. The engine
(:mod:`binders.log.engine.broker`) calls all of them only while holding its broker
lock, so an implementation needs no locking of its own; it must not block for
long there: a durable log writes each batch with one system call and leaves
the fsync to a thread of its own, handing the producer a future to await
(:meth:`PartitionLog.synced`).

The in-memory implementations here keep everything in lists and dicts and lose
it all on close; the durable ones are in :mod:`binders.log.engine.durable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Protocol, runtime_checkable

from binder.errors import ClosedError
from binder.spi import InboundRecord

__all__ = [
    "Entry",
    "LogFactory",
    "MemoryOffsetStore",
    "MemoryPartitionLog",
    "MemoryStorage",
    "OffsetStore",
    "PartitionLog",
    "RecordColumns",
    "Storage",
    "StoredRecord",
    "make_records",
    "memory_logs",
]

Entry = tuple[bytes | None, bytes, dict[str, str], float]
"""One record to append: ``(key, value, headers, timestamp)``."""


StoredRecord = InboundRecord
"""A record as the log hands it to readers: the SPI's record (readers never mutate it), made
for each read from the partition's :class:`RecordColumns` (or decoded from disk)."""


@runtime_checkable
class PartitionLog(Protocol):
    """The records of one partition, in offset order; offsets start at 0 and never repeat."""

    @property
    def start_offset(self) -> int:
        """Offset of the first retained record (``end_offset`` when none is retained)."""

    @property
    def end_offset(self) -> int:
        """Offset the next appended record gets."""

    def append(self, entries: Sequence[Entry]) -> int:
        """Append ``entries`` as one batch, atomically; return the first one's offset.

        Raises :class:`~binder.errors.ClosedError` after :meth:`close`.
        """

    def read(self, offset: int, max_records: int) -> list[StoredRecord]:
        """Up to ``max_records`` records from ``max(offset, start_offset)``; ``[]`` at the end.

        Never blocks; the returned list is the caller's to keep.
        """

    def synced(self, offset: int) -> asyncio.Future[None] | None:
        """A future of the running loop resolved once the records before ``offset`` are as
        durable as the log's fsync policy makes them; ``None`` when there is nothing to wait for.

        Called right after :meth:`append` (still under the broker lock); the
        caller awaits the future after releasing it. The future fails with
        :class:`~binder.errors.BackendError` if the fsync failed.
        """

    def maintain(self) -> None:
        """Apply time-based policies (segment roll, retention by age); cheap when none is due."""

    def close(self) -> None:
        """Release resources, keeping what is durable. Idempotent."""

    def delete(self) -> None:
        """Close and discard every record (the topic is being deleted). Idempotent."""


LogFactory = Callable[[str, int], PartitionLog]
"""Opens (creating if needed) the log of ``(topic, partition)``."""


def make_records(
    topic: str,
    partition: int,
    base: int,
    values: Sequence[bytes],
    keys: Iterable[bytes | None],
    headers: Iterable[dict[str, str]],
    stamps: Iterable[float],
) -> list[StoredRecord]:
    """Records ``base, base + 1, ...`` of a partition, one per value, from columns (``map``
    in C: what decoding a batch and reading the tail cache both end with)."""
    count = len(values)
    return list(
        map(
            StoredRecord,
            repeat(topic, count),
            repeat(partition, count),
            range(base, base + count),
            values,
            keys,
            headers,
            stamps,
        )
    )


class RecordColumns:
    """The records ``[base, base + len)`` of a partition as columns: the in-memory log's
    records, the durable log's tail cache of this process's recent appends.

    Keys and values (bytes), headers (dicts of str) and timestamps are objects the garbage
    collector does not track; a record object per entry would be one it does (an entry
    tuple too: it holds a dict), and every full collection walks every tracked object:
    10^5 records held made each one take 0.1 s, a pause every reader of the process
    waited out. So an append adds its entries to the columns (``map`` in C, about 50 ns an
    entry) and a read makes records for what it returns, the same work the first read did
    when records were kept (the in-memory log made them once on append)."""

    __slots__ = ("base", "headers", "keys", "stamps", "values")

    def __init__(self, base: int) -> None:
        self.base = base
        self.keys: list[bytes | None] = []
        self.values: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.stamps: list[float] = []

    @property
    def end(self) -> int:
        """The offset after the last record."""
        return self.base + len(self.values)

    def extend(self, entries: Sequence[Entry]) -> None:
        self.keys += map(_KEY, entries)
        self.values += map(_VALUE, entries)
        self.headers += map(_HEADERS, entries)
        self.stamps += map(_STAMP, entries)

    def records(
        self, topic: str, partition: int, offset: int, max_records: int
    ) -> list[StoredRecord]:
        """Up to ``max_records`` records from ``offset`` (at least :attr:`base`)."""
        start = offset - self.base
        stop = start + max_records
        return make_records(
            topic,
            partition,
            offset,
            self.values[start:stop],
            self.keys[start:stop],
            self.headers[start:stop],
            self.stamps[start:stop],
        )

    def drop_below(self, offset: int) -> None:
        """Forget the records before ``offset``."""
        drop = offset - self.base
        if drop > 0:
            del self.keys[:drop], self.values[:drop], self.headers[:drop], self.stamps[:drop]
            self.base = offset


_KEY, _VALUE, _HEADERS, _STAMP = (itemgetter(i) for i in range(4))


class MemoryPartitionLog:
    """A :class:`PartitionLog` in :class:`RecordColumns`; ``max_records`` retains only the
    newest records."""

    __slots__ = ("_closed", "_max_records", "_partition", "_records", "_topic")

    def __init__(self, max_records: int | None = None, topic: str = "", partition: int = 0) -> None:
        self._topic = topic
        self._partition = partition
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        self._records = RecordColumns(0)
        self._max_records = max_records
        self._closed = False

    @property
    def start_offset(self) -> int:
        return self._records.base

    @property
    def end_offset(self) -> int:
        return self._records.end

    def append(self, entries: Sequence[Entry]) -> int:
        if self._closed:
            raise ClosedError("log: partition log is closed")
        records = self._records
        base = records.end
        records.extend(entries)
        if self._max_records is not None and records.end - records.base > self._max_records:
            records.drop_below(records.end - self._max_records)
        return base

    def read(self, offset: int, max_records: int) -> list[StoredRecord]:
        records = self._records
        return records.records(self._topic, self._partition, max(offset, records.base), max_records)

    def synced(self, offset: int) -> asyncio.Future[None] | None:
        return None

    def maintain(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True

    def delete(self) -> None:
        self._closed = True
        self._records.drop_below(self._records.end)


def memory_logs(max_records: int | None = None) -> LogFactory:
    """A factory of :class:`MemoryPartitionLog`, each retaining at most ``max_records``."""

    def open_log(topic: str, partition: int) -> PartitionLog:
        return MemoryPartitionLog(max_records, topic, partition)

    return open_log


@runtime_checkable
class OffsetStore(Protocol):
    """Committed offsets per ``(group, topic, partition)``: the next offset the group reads.

    The store records what it is told; the engine decides what may be committed
    (offsets only move forward, and only the partition's owner commits).
    """

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The committed offset, or ``None`` if the group never committed this partition."""

    def commit(self, group: str, topic: str, partition: int, next_offset: int) -> None:
        """Record ``next_offset`` as the group's position (durably, for a durable store)."""

    def groups(self, topic: str) -> set[str]:
        """Every group with a committed offset on ``topic``."""

    def delete_group(self, group: str, topic: str) -> None:
        """Forget the group's offsets on ``topic`` (and that it was required). Idempotent."""

    def require(self, group: str, topic: str) -> None:
        """Remember ``group`` as required on ``topic`` (retention keeps what it has not read)."""

    def close(self) -> None:
        """Release resources, keeping what is durable. Idempotent."""


class MemoryOffsetStore:
    """An :class:`OffsetStore` in a dict."""

    __slots__ = ("_offsets", "required")

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, str], dict[int, int]] = {}
        self.required: set[tuple[str, str]] = set()

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        partitions = self._offsets.get((group, topic))
        return None if partitions is None else partitions.get(partition)

    def commit(self, group: str, topic: str, partition: int, next_offset: int) -> None:
        self._offsets.setdefault((group, topic), {})[partition] = next_offset

    def groups(self, topic: str) -> set[str]:
        return {group for group, name in self._offsets if name == topic}

    def delete_group(self, group: str, topic: str) -> None:
        self._offsets.pop((group, topic), None)
        self.required.discard((group, topic))

    def require(self, group: str, topic: str) -> None:
        self.required.add((group, topic))

    def close(self) -> None:
        pass


@runtime_checkable
class Storage(Protocol):
    """Where a broker keeps its topics: partition logs, group offsets, the topic list."""

    @property
    def offsets(self) -> OffsetStore:
        """The groups' committed offsets."""

    @property
    def syncs(self) -> bool:
        """Whether logs may hand out :meth:`PartitionLog.synced` futures (producers then await)."""

    @property
    def maintenance_interval(self) -> float | None:
        """Seconds between calls of :meth:`PartitionLog.maintain`; ``None``: never needed."""

    def topics(self) -> dict[str, int]:
        """Topics kept from an earlier run, with their partition counts."""

    def open_log(self, topic: str, partition: int) -> PartitionLog:
        """Open (creating if needed) the log of ``(topic, partition)``."""

    def delete_topic(self, topic: str) -> None:
        """Forget ``topic`` once its logs were deleted. Idempotent."""

    def close(self) -> None:
        """Release what the storage holds, after its logs and offsets were closed. Idempotent."""


class MemoryStorage:
    """A :class:`Storage` in memory: nothing survives the process."""

    syncs = False
    maintenance_interval = None

    def __init__(
        self, open_log: LogFactory | None = None, offsets: OffsetStore | None = None
    ) -> None:
        self.open_log = open_log or memory_logs()
        self.offsets = offsets if offsets is not None else MemoryOffsetStore()

    def topics(self) -> dict[str, int]:
        return {}

    def delete_topic(self, topic: str) -> None:
        pass

    def close(self) -> None:
        pass
