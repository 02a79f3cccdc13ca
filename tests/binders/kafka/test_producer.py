"""The producer's own batching: each record on the partition the core chose, order, size
limits, timestamps."""

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


def test_records_go_to_the_partition_they_carry_in_order(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    """Runs of several full batches per partition, then back to the first partitions:
    the binder writes each record where the core put it and places none itself."""
    sent = [
        OutboundRecord(f"{n:05d}".encode() + b"." * 95, None, {}, (n // 400) % PARTITIONS)
        for n in range(KEYLESS)
    ]

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
    for record in seen:
        assert record.partition == (int(record.value[:5]) // 400) % PARTITIONS, runs
    assert all(started - 60 < r.timestamp / 1000 < time.time() + 60 for r in seen)


def test_concurrent_sends_keep_call_order_per_key(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    async def scenario() -> list[Any]:
        await kafka.provision(topic, PARTITIONS)
        async with kafka.binder() as binder:
            producer = await binder.producer(ProducerSpec(kafka.declare(topic), PARTITIONS))
            await asyncio.gather(
                *(
                    producer.send_batch((OutboundRecord(str(n).encode(), b"one-key", {}, 2),))
                    for n in range(500)
                )
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
            await producer.send_batch([OutboundRecord(b"after", b"k")])
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


def test_a_full_batch_goes_to_the_client_before_the_next_is_built(
    kafka: Conformance, kafka_bootstrap_servers: str, plain_read: Any, topic: str
) -> None:
    """One large send: each full batch is submitted at once (on the wire while the next ones
    are built), not after every batch of the send was built; all arrive in order."""
    from aiokafka import AIOKafkaProducer

    from binders.kafka.producer import SendQueue

    calls: list[str] = []

    class Recording(AIOKafkaProducer):  # the real client; it only notes the calls it gets
        def create_batch(self) -> Any:
            calls.append("create")
            return super().create_batch()

        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
            calls.append("send")
            return await super().send_batch(batch, topic, partition=partition)

    sent = [OutboundRecord(f"{n:05d}".encode() + b"." * 95, b"one-key") for n in range(KEYLESS)]

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        client = Recording(bootstrap_servers=kafka_bootstrap_servers)
        await client.start()
        try:
            await SendQueue(client, 1 << 20).send(topic, sent)
        finally:
            await client.stop()
        return await plain_read(topic, 1, KEYLESS)

    assert [r.value for r in run(scenario())] == [r.value for r in sent]
    assert calls.count("send") > 2, "several batches"
    assert calls[:3] == ["create", "send", "create"], calls[:8]
