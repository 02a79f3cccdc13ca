"""Reading the embedded log as a group member (or anonymously)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from binder.spi import ConsumerSpec, InboundRecord
from binders.log.engine import Member
from binders.log.engine.segment import CorruptLogError
from binders.log.errors import ENGINE_ERRORS, backend_error

__all__ = ["LogConsumer"]


class LogConsumer:
    """One member of a group on one topic; commits are the group's offsets.

    A fetch is safe to cancel (the member advances only when it returns records); a
    pause is the member's and outlasts any reassignment. A partition damaged on disk
    stops alone, at the damage (:attr:`damaged`); the fetch goes on with the others,
    so the binding keeps running.
    """

    def __init__(
        self,
        member: Member,
        spec: ConsumerSpec,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._member = member
        self._max = spec.max_records
        self._topic = spec.destination
        self._on_close = on_close

    async def fetch(self) -> list[InboundRecord]:
        try:
            return await self._member.poll(self._max)
        except ENGINE_ERRORS as exc:
            raise backend_error(f"fetch from {self._topic!r}", exc) from exc

    @property
    def damaged(self) -> dict[int, CorruptLogError]:
        """``{partition: error}`` of the assigned partitions stopped at damage on disk."""
        return self._member.damaged

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        last: dict[int, int] = {}
        for record in records:
            assert record.offset is not None
            last[record.partition] = record.offset
        try:
            for partition, offset in last.items():
                self._member.commit(partition, offset + 1)
        except ENGINE_ERRORS as exc:
            raise backend_error(f"commit on {self._topic!r}", exc) from exc

    async def lag(self) -> dict[int, int]:
        """Partition → records not yet committed by the group, for the partitions held."""
        return self._member.lag()

    def pause(self) -> None:
        self._member.pause()

    def resume(self) -> None:
        self._member.resume()

    async def close(self) -> None:
        await self._member.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            await on_close()
