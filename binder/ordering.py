"""Per-key ordering under concurrency, and in-order acknowledgement.

With ``concurrency: N`` an input binding runs N lanes. A record goes to the lane
of its key (``hash(key) % N``), or of its partition when it has no key, so one
key — and one partition's keyless records — is always handled by one lane, in
order, while different keys proceed in parallel.

Records finish out of order across lanes, but a partition is acknowledged only
up to its first unfinished record (:class:`AckTracker`): a crash never skips a
message that had not finished, at the price of redelivering some that had.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence

from binder.spi import InboundRecord

__all__ = ["AckTracker", "lane_of"]


def lane_of(record: InboundRecord, lanes: int) -> int:
    """The lane for ``record``: by key, else by partition."""
    if record.key is not None:
        return hash(record.key) % lanes
    return record.partition % lanes


class AckTracker:
    """Tracks fetched records per partition and releases them for commit in order."""

    def __init__(self) -> None:
        self._pending: dict[int, deque[InboundRecord]] = {}
        self._done: set[int] = set()
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Records fetched and not yet released for commit."""
        return self._count

    def track(self, records: Sequence[InboundRecord]) -> None:
        """Remember ``records`` (in fetch order) as in flight."""
        for record in records:
            self._pending.setdefault(record.partition, deque()).append(record)
        self._count += len(records)
        if self._count:
            self._idle.clear()

    def complete(self, records: Iterable[InboundRecord]) -> list[InboundRecord]:
        """Mark ``records`` finished; return those now safe to commit, in order."""
        partitions = set()
        for record in records:
            self._done.add(id(record))
            partitions.add(record.partition)
        released: list[InboundRecord] = []
        for partition in partitions:
            queue = self._pending[partition]
            while queue and id(queue[0]) in self._done:
                record = queue.popleft()
                self._done.discard(id(record))
                released.append(record)
        self._count -= len(released)
        if not self._count:
            self._idle.set()
        return released

    def abandon(self) -> None:
        """Forget every tracked record (its consumer is gone: they will be redelivered) and
        release :meth:`wait_idle`."""
        self._pending.clear()
        self._done.clear()
        self._count = 0
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once every tracked record has been released."""
        await self._idle.wait()
