"""Reading the embedded log as a group member (or anonymously)."""

from __future__ import annotations

from collections.abc import Sequence

from binder.spi import ConsumerSpec, InboundRecord
from binders.log.engine import Member

__all__ = ["LogConsumer"]


class LogConsumer:
    """One member of a group on one topic; commits are the group's offsets."""

    def __init__(self, member: Member, spec: ConsumerSpec) -> None:
        self._member = member
        self._max = spec.max_records

    async def fetch(self) -> list[InboundRecord]:
        return await self._member.poll(self._max)

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        last: dict[int, int] = {}
        for record in records:
            assert record.offset is not None
            last[record.partition] = record.offset
        for partition, offset in last.items():
            self._member.commit(partition, offset + 1)

    def pause(self) -> None:
        self._member.pause()

    def resume(self) -> None:
        self._member.resume()

    async def close(self) -> None:
        await self._member.close()
