"""The producer's own batching: placement of keyless records, order, size limits, timestamps."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import pytest

from binder.errors import BackendError
from binder.spi import OutboundRecord, ProducerSpec
from binder.testing.conformance.support import Conformance, run

PARTITIONS = 4
KEYLESS = 3_000
"""Several default-size (16 KiB) batches' worth of 100-byte records."""


def test_keyless_records_fill_a_partition_then_move_on_in_order(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    sent = [OutboundRecord(f"{n:05d}".encode() + b"." * 95) for n in range(KEYLESS)]

    async def scenario() -> list[Any]:
        await kafka.provision(topic, PARTITIONS)
        async with kafka.binder() as binder:
            producer = await binder.producer(ProducerSpec(topic, PARTITIONS))
            await producer.send_batch(sent)
        return await plain_read(topic, PARTITIONS, KEYLESS)

    started = time.time()
    seen = run(scenario())
    numbers = [int(r.value[:5]) for r in seen]
    assert sorted(numbers) == list(range(KEYLESS)), "each record exactly once"
    per_partition: dict[int, list[int]] = defaultdict(list)
    for record in seen:
        per_partition[record.partition].append(int(record.value[:5]))
    runs = {p: [(g[0], g[-1], len(g)) for g in _runs(got)] for p, got in per_partition.items()}
    assert all(got == sorted(got) for got in per_partition.values()), runs
    assert len(per_partition) > 1, "a full batch moves keyless records to the next partition"
    first = {r.partition for r in seen if int(r.value[:5]) < 50}
    assert len(first) == 1, "consecutive keyless records share a partition (sticky)"
    assert all(started - 60 < r.timestamp / 1000 < time.time() + 60 for r in seen)


def test_concurrent_sends_keep_call_order_per_key(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    async def scenario() -> list[Any]:
        await kafka.provision(topic, PARTITIONS)
        async with kafka.binder() as binder:
            producer = await binder.producer(ProducerSpec(kafka.declare(topic), PARTITIONS))
            await asyncio.gather(
                *(producer.send(OutboundRecord(str(n).encode(), b"one-key")) for n in range(500))
            )
        return await plain_read(topic, PARTITIONS, 500)

    assert [int(r.value) for r in run(scenario())] == list(range(500))


def test_a_record_over_max_request_size_fails_the_send_naming_the_limit(
    kafka: Conformance, kafka_config: dict[str, Any], plain_read: Any, topic: str
) -> None:
    small = OutboundRecord(b"small", b"k")
    huge = OutboundRecord(b"x" * 5_000, b"k")
    limited = Conformance({**kafka_config, "max-request-size": 2_000})

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        async with limited.binder() as binder:
            producer = await binder.producer(ProducerSpec(topic, 1))
            with pytest.raises(BackendError, match=r"kafka at .*5\d{3} bytes.*max-request-size"):
                await producer.send_batch([small, huge, small])
            await producer.send(OutboundRecord(b"after", b"k"))
        return await plain_read(topic, 1, 1)

    assert [r.value for r in run(scenario())] == [b"after"], "nothing of the refused send"


def _runs(numbers: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in numbers:
        if out and n == out[-1][-1] + 1:
            out[-1].append(n)
        else:
            out.append([n])
    return out


def test_the_first_sends_to_a_new_topic_keep_call_order(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    """Sends made while the topic is still being created wait for it together, in order."""

    async def scenario() -> list[Any]:
        async with kafka.app() as app:
            kafka.declare(topic)
            await asyncio.gather(*(app.send(topic, n, key="one-key") for n in range(200)))
        return await plain_read(topic, 1, 200)

    assert [int(r.value) for r in run(scenario())] == list(range(200))


@pytest.mark.parametrize("acks", ["1", "all"])
def test_producer_settings_apply_to_the_batches_it_builds(
    kafka_config: dict[str, Any], plain_read: Any, topic: str, acks: str
) -> None:
    """gzip, a small batch-size and a linger: every record arrives intact, in order."""
    settings = {"compression-type": "gzip", "batch-size": 2048, "linger-ms": 5, "acks": acks}
    tuned = Conformance({**kafka_config, **settings})
    sent = [OutboundRecord(f"{n:04d}".encode() * 25, b"one-key") for n in range(500)]

    async def scenario() -> list[Any]:
        await tuned.provision(topic, 1)
        async with tuned.binder() as binder:
            producer = await binder.producer(ProducerSpec(topic, 1))
            await producer.send_batch(sent)
        return await plain_read(topic, 1, len(sent))

    try:
        assert [r.value for r in run(scenario())] == [r.value for r in sent]
    finally:
        run(tuned.cleanup())
