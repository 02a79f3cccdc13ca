"""What the log engine keeps, behind two small protocols.

A :class:`PartitionLog` holds one partition's records; an :class:`OffsetStore`
holds every group's committed offsets. The engine (:mod:`binders.log.engine`)
calls both only while holding its broker lock, so an implementation needs no
locking of its own; it should not block for long (appends arrive in batches, so
a durable implementation does its write, and its fsync policy, per batch).

The in-memory implementations here keep everything in lists and dicts and lose
it all on close. A durable implementation (segment files per partition, an
offsets file per group) plugs in through the same protocols: the broker opens a
partition's log through a :data:`LogFactory` and is handed an ``OffsetStore``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from binder.errors import ClosedError
from binder.spi import InboundRecord

__all__ = [
    "Entry",
    "LogFactory",
    "MemoryOffsetStore",
    "MemoryPartitionLog",
    "OffsetStore",
    "PartitionLog",
    "StoredRecord",
    "memory_logs",
]

Entry = tuple[bytes | None, bytes, dict[str, str], float]
"""One record to append: ``(key, value, headers, timestamp)``."""


StoredRecord = InboundRecord
"""A record as the log keeps it: the SPI's record, made once on append and handed to
every reader as is (readers never mutate it), so reading costs no copy."""


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

    def close(self) -> None:
        """Release resources, keeping what is durable. Idempotent."""

    def delete(self) -> None:
        """Close and discard every record (the topic is being deleted). Idempotent."""


LogFactory = Callable[[str, int], PartitionLog]
"""Opens (creating if needed) the log of ``(topic, partition)``."""


class MemoryPartitionLog:
    """A :class:`PartitionLog` in a list; ``max_records`` retains only the newest records."""

    __slots__ = ("_base", "_closed", "_max_records", "_partition", "_records", "_topic")

    def __init__(self, max_records: int | None = None, topic: str = "", partition: int = 0) -> None:
        self._topic = topic
        self._partition = partition
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        self._records: list[StoredRecord] = []
        self._base = 0
        self._max_records = max_records
        self._closed = False

    @property
    def start_offset(self) -> int:
        return self._base

    @property
    def end_offset(self) -> int:
        return self._base + len(self._records)

    def append(self, entries: Sequence[Entry]) -> int:
        if self._closed:
            raise ClosedError("log: partition log is closed")
        base = self._base + len(self._records)
        topic, partition = self._topic, self._partition
        self._records.extend(
            [
                StoredRecord(topic, partition, offset, value, key, headers, timestamp)
                for offset, (key, value, headers, timestamp) in enumerate(entries, base)
            ]
        )
        self._trim()
        return base

    def _trim(self) -> None:
        if self._max_records is None:
            return
        excess = len(self._records) - self._max_records
        if excess > 0:
            del self._records[:excess]
            self._base += excess

    def read(self, offset: int, max_records: int) -> list[StoredRecord]:
        index = max(offset - self._base, 0)
        return self._records[index : index + max_records]

    def close(self) -> None:
        self._closed = True

    def delete(self) -> None:
        self._closed = True
        self._base += len(self._records)
        self._records = []


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
        """Forget the group's offsets on ``topic``. Idempotent."""

    def close(self) -> None:
        """Release resources, keeping what is durable. Idempotent."""


class MemoryOffsetStore:
    """An :class:`OffsetStore` in a dict."""

    __slots__ = ("_offsets",)

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, str], dict[int, int]] = {}

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        partitions = self._offsets.get((group, topic))
        return None if partitions is None else partitions.get(partition)

    def commit(self, group: str, topic: str, partition: int, next_offset: int) -> None:
        self._offsets.setdefault((group, topic), {})[partition] = next_offset

    def groups(self, topic: str) -> set[str]:
        return {group for group, name in self._offsets if name == topic}

    def delete_group(self, group: str, topic: str) -> None:
        self._offsets.pop((group, topic), None)

    def close(self) -> None:
        pass
