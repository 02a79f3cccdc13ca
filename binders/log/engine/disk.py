"""The durable partition log: segment files, a tail cache, segment roll and retention.

A :class:`DiskPartitionLog` keeps one partition in ``<path>/topics/<topic>/<p>/``
(see :mod:`binders.log.engine.segment` for the files). Like every storage object it
is called only under the broker lock; it never fsyncs there during appends —
it reports each write to the storage's :class:`~binders.log.engine.sync.Syncer`, and
a producer awaits the future :meth:`DiskPartitionLog.synced` hands it.

Reads are served, cheapest first, from

1. the tail cache: the entries of recent appends (up to ``TAIL_CACHE_BYTES``
   of encoded batches), kept as columns and made into records for each read —
   consumers that follow the tail never touch the disk (see
   :class:`~binders.log.engine.storage.RecordColumns` for why not as records);
2. the read-ahead: the whole batches decoded by the previous disk read,
   so a reader catching up decodes each batch once;
3. the disk: the segment holding the offset (bisect on base offsets), then
   the batch before it in the sparse index, decoding forward (a sequential
   reader continues from where the last read stopped, without the index).

Several processes may share a partition. Every change on disk (recovery,
append, roll, retention, the index written at close) happens holding an
exclusive ``flock`` on ``<p>/lock``, after adopting what other processes
appended or rolled since (:meth:`DiskPartitionLog.refresh`, which reads only
the file size when nothing changed): offsets never collide and batches never
interleave. The tail cache holds this process's own appends only; records
another process appended are read from disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from binder.errors import ClosedError
from binders.log.engine.records import encode
from binders.log.engine.recovery import recover
from binders.log.engine.segment import CorruptLogError, Damage, Segment, log_name
from binders.log.engine.storage import Entry, RecordColumns, StoredRecord
from binders.log.engine.sync import Syncer, fsync_path

__all__ = ["TAIL_CACHE_BYTES", "DiskPartitionLog", "TopicPolicy"]

log = logging.getLogger("binder.log")

TAIL_CACHE_BYTES = 4 * 1024 * 1024
"""Encoded bytes of recent batches a partition keeps ready to read in memory."""

Floor = Callable[[], "tuple[int, list[str]] | None"]
"""The lowest offset a required group still needs, and those groups (``None``: no such group)."""


@dataclass(frozen=True)
class TopicPolicy:
    """Segment roll and retention of one topic (from the binder's options and per-topic ones)."""

    segment_bytes: int = 64 * 1024 * 1024
    segment_ms: int | None = 7 * 24 * 3600 * 1000
    retention_ms: int | None = None
    retention_bytes: int | None = None
    retention_hard_bytes: int | None = None


class DiskPartitionLog:
    """A :class:`~binders.log.engine.storage.PartitionLog` on disk (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        policy: TopicPolicy,
        syncer: Syncer | None,
        floor: Floor,
    ) -> None:
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.policy = policy
        self._syncer = syncer
        self._floor = floor
        self._label = f"{topic}/{partition}"
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with _Flock(self._lock_fd):
                found = recover(directory, self._label, repair=True)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._segments: list[Segment] = found.segments
        self._bases = [s.base for s in self._segments]
        self._damage: list[Damage] = found.damage
        self._end = self._segments[-1].end
        self._closed = False
        self._cache = RecordColumns(self._end)
        self._cache_sizes: deque[tuple[int, int]] = deque()
        self._cache_bytes = 0
        # the read-ahead, and where a sequential disk reader continues
        self._ahead: list[StoredRecord] = []
        self._ahead_base = 0
        self._hint: tuple[int, Segment, int] | None = None
        self._reading: Segment | None = None
        self.maintain()

    # -- the PartitionLog protocol ---------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        return self._segments[0].base

    @property
    def end_offset(self) -> int:
        return self._end

    def append(self, entries: Sequence[Entry]) -> int:
        if self._closed:
            raise ClosedError(f"log: partition {self._label} is closed")
        fd = self._lock_fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if self._catch_up() != self._segments[-1].size:
                self._segments[-1].cut_to_view()  # a dead writer's torn tail
            base = self._end
            parts, size, max_ts = encode(base, entries)
            active = self._segments[-1]
            if active.size and active.size + size > self.policy.segment_bytes:
                active = self._roll()  # (a roll by age happens in maintain, on a timer)
            active.append(parts, size, base, len(entries), max_ts)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._end = end = base + len(entries)
        self._cache.extend(entries)
        self._cache_sizes.append((base, size))
        self._cache_bytes += size
        if self._cache_bytes > TAIL_CACHE_BYTES:
            self._trim_cache()
        if self._syncer is not None:
            self._syncer.written(self, end, active.path)
        return base

    def read(self, offset: int, max_records: int) -> list[StoredRecord]:
        if offset >= self._cache.base:
            return self._cache.records(self.topic, self.partition, offset, max_records)
        offset = max(offset, self.start_offset)
        index = offset - self._ahead_base
        if 0 <= index < len(self._ahead):
            return self._ahead[index : index + max_records]
        if offset >= self._cache.base:
            return self.read(offset, max_records)
        return self._read_disk(offset, max_records)

    def synced(self, offset: int) -> asyncio.Future[None] | None:
        """A future resolved once records before ``offset`` are fsynced; ``None`` if no wait."""
        return None if self._syncer is None else self._syncer.wait(self, offset)

    def maintain(self) -> None:
        """Roll an aged active segment and apply retention (called on a timer)."""
        if self._closed:
            return
        with _Flock(self._lock_fd):
            self._catch_up()
            now = time.time()
            active = self._segments[-1]
            if active.size and self._aged(active, now):
                self._roll()
            else:
                self._retain(now)

    def refresh(self) -> bool:
        """Adopt what other processes appended since (no lock taken); True if the end moved."""
        if self._closed:
            return False
        before = self._end
        self._catch_up()
        return self._end != before

    def close(self) -> None:
        if self._closed:
            return
        with _Flock(self._lock_fd):
            self._catch_up()
            self._closed = True
            active = self._segments[-1]
            active.write_index()  # the record of a clean stop: it matches the log's size
            for path in (active.path, active.index_path, self.directory):
                fsync_path(path)
        os.close(self._lock_fd)
        if self._syncer is not None:
            self._syncer.forget(self, self._end)
        for segment in self._segments:
            segment.close()
        self._drop_caches()

    def delete(self) -> None:
        was_open = not self._closed
        self._closed = True
        if was_open and self._syncer is not None:
            self._syncer.forget(self, self._end)
        for segment in self._segments:
            segment.delete()
        if was_open:
            os.close(self._lock_fd)
        shutil.rmtree(self.directory, ignore_errors=True)
        self._drop_caches()

    # -- tools -----------------------------------------------------------------------------------

    @property
    def segments(self) -> list[Segment]:
        """The segments, oldest first (the last one takes appends)."""
        return list(self._segments)

    @property
    def cached_bytes(self) -> int:
        """Encoded bytes of the recent batches the tail cache holds."""
        return self._cache_bytes

    @property
    def damage(self) -> list[Damage]:
        """Offsets recovery found unreadable (mid-log corruption, gaps); ``skipped`` ones were
        given up by ``binder log repair`` and are read past."""
        return list(self._damage)

    # -- other processes -----------------------------------------------------------------------

    def _catch_up(self) -> int:
        """Adopt other processes' appends, rolls and retention; the active file's size."""
        before = self._end
        while True:
            active = self._segments[-1]
            size = active.catch_up()
            following = self.directory / log_name(active.end)
            if active.end == active.base or not following.exists():
                break
            active.sealed = True  # another process rolled (and wrote this segment's index)
            active.close()
            new = Segment(self.directory, active.end)
            new.reopen_active()
            self._segments.append(new)
            self._bases.append(new.base)
        while len(self._segments) > 1 and not self._segments[0].path.exists():
            self._forget_segment_view(self._segments[0])
        if self._end != self._segments[-1].end:
            self._end = self._segments[-1].end
            if self._end != before:
                self._drop_caches()  # the cache holds only this process's own appends
        return size

    def _forget_segment_view(self, segment: Segment) -> None:
        """Another process's retention deleted ``segment``: stop reading it."""
        if self._reading is segment:
            self._reading = None
        if self._hint is not None and self._hint[1] is segment:
            self._hint = None
        segment.close()
        del self._segments[0]
        del self._bases[0]
        self._forget_below(self._segments[0].base)

    # -- the tail cache ------------------------------------------------------------------------

    def _trim_cache(self) -> None:
        """Forget the oldest cached batches, down to three quarters of the budget."""
        sizes, budget = self._cache_sizes, TAIL_CACHE_BYTES * 3 // 4
        while self._cache_bytes > budget and len(sizes) > 1:
            self._cache_bytes -= sizes.popleft()[1]
        self._cache.drop_below(sizes[0][0])

    def _drop_caches(self) -> None:
        self._cache, self._ahead = RecordColumns(self._end), []
        self._cache_sizes.clear()
        self._hint = None

    # -- reading from disk ---------------------------------------------------------------------

    def _read_disk(self, offset: int, max_records: int) -> list[StoredRecord]:
        for damage in self._damage:
            if damage.first <= offset < damage.end:
                if damage.skipped:  # given up by `binder log repair`: go on after it
                    return self.read(damage.end, max_records)
                raise CorruptLogError(
                    f"log: offsets {damage.first}..{damage.end - 1} of {self._label} are damaged"
                    f" on disk; run `binder log verify` on the log's path",
                    topic=self.topic,
                    partition=self.partition,
                    first=damage.first,
                    end=damage.end,
                )
        segment = self._segments[max(bisect_right(self._bases, offset) - 1, 0)]
        hint = self._hint
        if hint is not None and hint[0] == offset and hint[1] is segment:
            position = hint[2]
        else:
            position = self._past_damage(segment, offset, segment.locate(offset))
        if self._reading is not segment:
            if self._reading is not None:
                self._reading.release()
            self._reading = segment
        records, position = segment.read(position, offset, max_records, self.topic, self.partition)
        if not records:
            return []
        first = records[0].offset
        assert first is not None
        self._ahead, self._ahead_base = records, first
        self._hint = (first + len(records), segment, position)
        return records[:max_records]

    def _past_damage(self, segment: Segment, offset: int, position: int) -> int:
        """Where to decode from, so that damage in ``segment`` before ``offset`` is jumped."""
        for damage in self._damage:
            inside = segment.base <= damage.first and damage.end <= segment.end
            if inside and damage.end <= offset and position < damage.position + damage.size:
                position = damage.position + damage.size
        return position

    # -- roll and retention ----------------------------------------------------------------------

    def _aged(self, segment: Segment, now: float) -> bool:
        limit = self.policy.segment_ms
        first = segment.first_ts
        return limit is not None and first is not None and (now - first) * 1000 >= limit

    def _roll(self) -> Segment:
        old = self._segments[-1]
        old.seal()
        new = Segment.create(self.directory, self._end)
        self._segments.append(new)
        self._bases.append(new.base)
        if self._syncer is not None:
            self._syncer.also(self, old.path, old.index_path, self.directory)
        log.debug("log: %s rolled to segment %s", self._label, new.path.name)
        self._retain(time.time())
        return new

    def _retain(self, now: float) -> None:
        """Delete the oldest sealed segments that retention allows (never the active one)."""
        policy = self.policy
        total = sum(s.size for s in self._segments)
        floor = self._floor()
        doomed = 0
        for segment in self._segments[:-1]:
            hard = policy.retention_hard_bytes is not None and total > policy.retention_hard_bytes
            expired = policy.retention_ms is not None and (
                (now - segment.max_ts) * 1000 > policy.retention_ms
            )
            big = policy.retention_bytes is not None and total > policy.retention_bytes
            if not (hard or expired or big):
                break
            unread = floor is not None and segment.end > floor[0]
            if unread and not hard:
                break
            reason = "hard size limit" if hard else "age" if expired else "size"
            self._forget_segment(segment, reason, floor if unread else None)
            total -= segment.size
            doomed += 1
        if doomed:
            del self._segments[:doomed]
            del self._bases[:doomed]
            self._forget_below(self._segments[0].base)

    def _forget_below(self, start: int) -> None:
        """Caches and damage records never hold offsets retention deleted."""
        self._damage = [d for d in self._damage if d.end > start]
        if self._ahead_base < start:
            self._ahead = []
        if self._cache.base < start:
            while self._cache_sizes and self._cache_sizes[0][0] < start:
                self._cache_bytes -= self._cache_sizes.popleft()[1]
            self._cache.drop_below(start)

    def _forget_segment(
        self, segment: Segment, reason: str, floor: tuple[int, list[str]] | None
    ) -> None:
        if self._reading is segment:
            self._reading = None
        if self._hint is not None and self._hint[1] is segment:
            self._hint = None
        if floor is not None:
            log.warning(
                "log: %s: the hard size limit deletes offsets %d..%d, not yet consumed by"
                " required group(s) %s (at offset %d)",
                self._label,
                max(segment.base, floor[0]),
                segment.end - 1,
                ", ".join(floor[1]),
                floor[0],
            )
        log.info(
            "log: %s: retention (%s) deletes segment %s, offsets %d..%d, %d bytes",
            self._label,
            reason,
            segment.path.name,
            segment.base,
            segment.end - 1,
            segment.size,
        )
        segment.delete()

    def __repr__(self) -> str:
        return f"DiskPartitionLog({self._label}, offsets {self.start_offset}..{self._end})"


class _Flock:
    """An exclusive ``flock`` on an open file, as a context manager."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
