"""Keys and headers cross the wire exactly, both ways, as any other Kafka client sees them."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from binder.spi import OutboundRecord
from binder.testing.conformance.support import Conformance, fetch_records, partition_of, run

HEADERS = {"trace-id": "t-1", "x-note": "ünïcødé ☃ 𝄞", "empty": "", "contentType": "text/plain"}
KEYS: list[bytes | None] = [b"\xff\x00\xfe binary", "ключ".encode(), b"", None]


def test_binder_records_arrive_exactly_for_a_plain_client(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    sent = [
        OutboundRecord(f"v{n}".encode(), key, HEADERS, partition_of(key, 4) if key else n % 4)
        for n, key in enumerate(KEYS)
    ]

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 4)
        async with kafka.binder() as binder:
            await kafka.send_raw(binder, topic, sent)
        return await plain_read(topic, 4, len(sent))

    seen = {record.value: record for record in run(scenario())}
    for record in sent:
        raw = seen[record.value]
        assert raw.key == record.key
        assert list(raw.headers) == [(k, v.encode()) for k, v in HEADERS.items()], "in order"
        assert raw.partition == record.partition, "written where the core put it"


def test_a_plain_clients_records_arrive_exactly_in_the_binder(
    kafka: Conformance, kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    headers = [("trace-id", b"t-2"), ("x-note", "ü ☃".encode()), ("none", None), ("bad", b"\xff")]

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_config["bootstrap-servers"])
        await producer.start()
        try:
            for key in KEYS:
                await producer.send_and_wait(topic, b"payload", key=key, headers=headers)
            await producer.send_and_wait(topic, None, key=b"tombstone")
        finally:
            await producer.stop()
        async with kafka.binder() as binder:
            consumer = await kafka.consumer(binder, topic, group)
            try:
                return await fetch_records(consumer, len(KEYS) + 1)
            finally:
                await consumer.close()

    records = run(scenario())
    assert [r.key for r in records] == [*KEYS, b"tombstone"]
    assert [r.offset for r in records] == list(range(len(KEYS) + 1))
    expected = {"trace-id": "t-2", "x-note": "ü ☃", "none": "", "bad": "\ufffd"}
    assert all(r.headers == expected for r in records[:-1])
    assert records[-1].value is None, "a tombstone (null value) arrives without a value"
    assert all(r.destination == topic and r.partition == 0 for r in records)
    assert all(isinstance(r.timestamp, float) and r.timestamp > 1e9 for r in records)
