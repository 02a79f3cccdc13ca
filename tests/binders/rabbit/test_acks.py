"""Acknowledgements through the SPI on the real broker: out of order, repeated, and of a
channel that closed; what was acknowledged is never delivered again, the rest is."""

from __future__ import annotations

import asyncio
from typing import Any

from binder.spi import ConsumerSpec, InboundRecord, OutboundRecord
from binder.testing.conformance.support import Conformance, IdleListener, fetch_records, run


def _suite(rabbit_url: str, prefix: str) -> Conformance:
    return Conformance({"type": "rabbit", "url": rabbit_url, "prefix": prefix})


async def _primed(suite: Conformance, binder: Any) -> Any:
    """A consumer of ``d`` in group ``g`` past its careful start: a group queue is consumed
    one message at a time until one that was not redelivered was handled and committed."""
    consumer = await binder.consumer(ConsumerSpec("d", "g"), IdleListener())
    await suite.send_raw(binder, "d", [OutboundRecord(b"primer")])
    await consumer.commit(await _fetch(consumer, 1))
    return consumer


async def _fetch(consumer: Any, count: int) -> list[InboundRecord]:
    records: list[InboundRecord] = []
    async with asyncio.timeout(10):
        while len(records) < count:
            records += await consumer.fetch()
    return records


def test_acks_out_of_order_and_repeated_lose_nothing_and_redeliver_nothing(
    rabbit_url: str, rabbit_prefix: str
) -> None:
    suite = _suite(rabbit_url, rabbit_prefix)
    values = [b"%d" % n for n in range(10)]

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        async with suite.binder() as binder:
            await binder.provision("d", 1, ["g"])
            consumer = await _primed(suite, binder)
            await suite.send_raw(binder, "d", [OutboundRecord(v) for v in values])
            records = await _fetch(consumer, 10)
            await consumer.commit(records[5:8])  # behind unfinished ones: acked on their own
            await consumer.commit(records[5:8])  # again: nothing more is sent
            await consumer.commit(records[:3])  # the front: one multiple ack
            await consumer.commit(records[:3])
            await consumer.close()  # 3, 4, 8, 9 were never acknowledged
            again = await binder.consumer(ConsumerSpec("d", "g"), IdleListener())
            redelivered: list[InboundRecord] = []
            while len(redelivered) < 4:  # one at a time: each was redelivered
                batch = await _fetch(again, 1)
                assert len(batch) == 1, "a redelivered message is handed out alone"
                await again.commit(batch)
                redelivered += batch
            await asyncio.sleep(0.3)  # anything more would have arrived by now
            extra = list(again._buffer)  # what arrived past the four
            await again.close()
            await binder.delete("d", ["g"])
        return [r.value or b"" for r in redelivered], [m.body for m in extra]

    redelivered, extra = run(scenario())
    assert sorted(redelivered) == [b"3", b"4", b"8", b"9"]
    assert extra == []


def test_acks_of_a_closed_channel_are_dropped_not_raised(
    rabbit_url: str, rabbit_prefix: str
) -> None:
    suite = _suite(rabbit_url, rabbit_prefix)

    async def scenario() -> list[InboundRecord]:
        async with suite.binder() as binder:
            await binder.provision("d", 1, ["g"])
            await suite.send_raw(binder, "d", [OutboundRecord(b"only")])
            consumer = await binder.consumer(ConsumerSpec("d", "g"), IdleListener())
            (record,) = await _fetch(consumer, 1)
            await consumer.close()
            await consumer.commit([record])  # its channel is gone: the broker redelivers
            again = await binder.consumer(ConsumerSpec("d", "g"), IdleListener())
            redelivered = await fetch_records(again, 1)
            await again.close()
            await binder.delete("d", ["g"])
            return redelivered

    (record,) = run(scenario())
    assert record.value == b"only" and record.deliveries == 2


def test_concurrent_commits_never_ack_a_tag_twice(rabbit_url: str, rabbit_prefix: str) -> None:
    """Lanes commit at once: one's acks on their own must be sent before another's multiple
    ack covers them, or the broker closes the channel on an unknown delivery tag."""
    suite = _suite(rabbit_url, rabbit_prefix)

    async def scenario() -> tuple[bool, list[InboundRecord]]:
        async with suite.binder() as binder:
            await binder.provision("d", 1, ["g"])
            consumer = await _primed(suite, binder)
            await suite.send_raw(binder, "d", [OutboundRecord(b"%d" % n) for n in range(5)])
            r = await _fetch(consumer, 5)
            await asyncio.gather(consumer.commit([r[1], r[2]]), consumer.commit([r[0], r[3]]))
            await asyncio.sleep(0.3)  # a channel error would have come back by now
            healthy = not consumer._underlay.is_closed
            await consumer.close()
            again = await binder.consumer(ConsumerSpec("d", "g"), IdleListener())
            left = await fetch_records(again, 1)
            await again.close()
            await binder.delete("d", ["g"])
            return healthy, left

    healthy, left = run(scenario())
    assert healthy, "the channel was closed by the broker"
    assert [record.value for record in left] == [b"4"]
