"""Offset commits: coalesced in the background, flushed on close, failures not swallowed."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from binder.errors import BackendError
from binder.spi import ConsumerSpec, InboundRecord, OutboundRecord
from binder.testing.conformance.support import Conformance, IdleListener, run
from binders.kafka.consumer import KafkaConsumer

COUNT = 400
CHUNK = 10


class _CountingCommits:
    """Wraps the real client's ``commit``: counts the requests, can fail the next one."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self.requests: list[dict[Any, int]] = []
        self.fail_next = False
        client = consumer._client
        self._commit = client.commit
        client.commit = self  # type: ignore[method-assign]

    async def __call__(self, offsets: dict[Any, int]) -> None:
        self.requests.append(dict(offsets))
        if self.fail_next:
            self.fail_next = False
            raise KafkaConnectionError("injected: connection dropped")
        await self._commit(offsets)


async def _fetch(consumer: KafkaConsumer, count: int) -> list[InboundRecord]:
    taken: list[InboundRecord] = []
    while len(taken) < count:
        taken.extend(await consumer.fetch())
    return taken


async def _first_value(kafka: Conformance, topic: str, group: str) -> bytes:
    """What a new member of ``group`` reads first: where the group's commit left off."""
    async with kafka.binder() as binder:
        consumer = await binder.consumer(ConsumerSpec(topic, group), IdleListener())
        try:
            return (await consumer.fetch())[0].value
        finally:
            await consumer.close()


async def _sent(kafka: Conformance, topic: str, group: str) -> None:
    await kafka.provision(topic, 1, [group])
    async with kafka.binder() as binder:
        records = [OutboundRecord(f"m{n}".encode(), b"k") for n in range(COUNT)]
        await kafka.send_raw(binder, topic, records)


def test_a_burst_of_commits_is_coalesced_and_flushed_on_close(
    kafka: Conformance, topic: str, group: str
) -> None:
    async def scenario() -> tuple[int, bytes]:
        await _sent(kafka, topic, group)
        async with kafka.binder() as binder:
            consumer = await binder.consumer(ConsumerSpec(topic, group), IdleListener())
            assert isinstance(consumer, KafkaConsumer)
            spy = _CountingCommits(consumer)
            taken = (await _fetch(consumer, COUNT))[: COUNT // 2]
            for start in range(0, len(taken), CHUNK):  # as fast as a core finishing chunks
                await consumer.commit(taken[start : start + CHUNK])
            await consumer.close()
            assert spy.requests, "close flushed what was noted"
            last = max(offset for request in spy.requests for offset in request.values())
            assert last == taken[-1].offset + 1, "the last request carries the newest offset"
            return len(spy.requests), await _first_value(kafka, topic, group)

    requests, first = run(scenario())
    assert requests <= 2, f"{requests} commit requests for {COUNT // 2 // CHUNK} calls"
    assert first == f"m{COUNT // 2}".encode()


def test_a_failed_commit_is_raised_by_the_next_call_and_its_offsets_kept(
    kafka: Conformance, topic: str, group: str
) -> None:
    async def scenario() -> bytes:
        await _sent(kafka, topic, group)
        async with kafka.binder() as binder:
            consumer = await binder.consumer(ConsumerSpec(topic, group), IdleListener())
            assert isinstance(consumer, KafkaConsumer)
            spy = _CountingCommits(consumer)
            taken = await _fetch(consumer, 30)
            spy.fail_next = True
            await consumer.commit(taken[:20])
            await consumer.flush()
            with pytest.raises(BackendError, match=r"kafka at .*commit on .*KafkaConnectionError"):
                await consumer.commit(taken[20:30])
            await consumer.close()  # commits the offsets kept from the failed request
            return await _first_value(kafka, topic, group)

    assert run(scenario()) == b"m20"
