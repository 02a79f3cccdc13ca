"""What another Kafka client writes and reads: librdkafka (confluent-kafka) on both ends.

A librdkafka producer writes records the way non-Python services do (repeated, null and
binary headers; tombstones; Spring's quoted ``contentType`` and a BOM before JSON), the
binder handles them, and a librdkafka consumer reads what the binder wrote.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from binder import TOMBSTONE, Message
from binder.testing.conformance.support import Conformance, Inbox, run

ORIGINAL = [("h", b"1"), ("h", b"2"), ("null", None), ("bin", b"\xff\xfe\x00"), ("e", b"")]


def _produce(servers: str, topic: str, records: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": servers})
    for record in records:
        producer.produce(topic, **record)
    assert producer.flush(15) == 0, "librdkafka could not deliver every record"


def _consume(servers: str, topic: str, count: int, timeout: float = 20) -> list[Any]:
    """The first ``count`` records of partition 0, read by a librdkafka consumer."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"rd-{uuid.uuid4().hex[:8]}"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen.append(message)
    finally:
        consumer.close()
    assert len(seen) >= count, f"librdkafka read {len(seen)} of {count} record(s) of {topic}"
    return seen


def test_a_dead_letter_keeps_librdkafka_headers_exactly(
    kafka: Conformance, kafka_bootstrap_servers: str, topic: str, group: str
) -> None:
    app = kafka.app(
        {"fail-in-0": {"destination": topic, "group": group, "consumer": {"max-attempts": 1}}},
    )
    tried: Inbox[bytes] = Inbox()

    @app.consumer
    def fail(payload: bytes) -> None:
        tried.add(payload)
        raise ValueError("refused")

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        record = {"value": b"raw", "key": b"k", "headers": ORIGINAL}
        await asyncio.to_thread(_produce, kafka_bootstrap_servers, topic, [record])
        async with app:
            await tried.wait_count(1, "the failing consumer")
        dlq = kafka.dead_letters(topic, group)
        return await asyncio.to_thread(_consume, kafka_bootstrap_servers, dlq, 1)

    (letter,) = run(scenario())
    assert (letter.key(), letter.value()) == (b"k", b"raw")
    headers = letter.headers()
    assert headers[: len(ORIGINAL)] == ORIGINAL, "first, in order, byte for byte"
    own = dict(headers[len(ORIGINAL) :])
    assert own["x-exception-type"] == b"builtins.ValueError"
    assert own["x-original-delivery-attempt"] == b"1"


def test_tombstones_cross_between_librdkafka_and_the_binder(
    kafka: Conformance, kafka_bootstrap_servers: str, topic: str, group: str
) -> None:
    out = kafka.declare(f"{topic}-out")
    app = kafka.app({"users-in-0": {"destination": topic, "group": group}})
    seen: Inbox[tuple[Any, Any]] = Inbox()

    @app.consumer
    def users(message: Message[dict[str, Any] | None]) -> None:
        seen.add((message.key, message.payload))

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        await kafka.provision(out, 1)
        records = [{"value": b'{"name": "ann"}', "key": b"u-1"}, {"value": None, "key": b"u-1"}]
        await asyncio.to_thread(_produce, kafka_bootstrap_servers, topic, records)
        async with app:
            await seen.wait_count(2, "the record and its tombstone")
            await app.send(out, TOMBSTONE, key="u-2")
        return await asyncio.to_thread(_consume, kafka_bootstrap_servers, out, 1)

    (written,) = run(scenario())
    assert seen.items == [("u-1", {"name": "ann"}), ("u-1", None)]
    assert (written.key(), written.value()) == (b"u-2", None), "librdkafka sees a tombstone"


def test_spring_content_types_and_a_bom_from_librdkafka_are_read_as_json(
    kafka: Conformance, kafka_bootstrap_servers: str, topic: str, group: str
) -> None:
    app = kafka.app({"orders-in-0": {"destination": topic, "group": group}})
    seen: Inbox[dict[str, Any]] = Inbox()

    @app.consumer
    def orders(order: dict[str, Any]) -> None:
        seen.add(order)

    forms = [b'"application/json"', b"application/json;charset=UTF-8", b""]
    records = [
        {"value": f'{{"n": {n}}}'.encode(), "headers": [("contentType", form)]}
        for n, form in enumerate(forms)
    ]
    records.append({"value": b'\xef\xbb\xbf{"n": 3}'})  # a BOM, no contentType

    async def scenario() -> list[dict[str, Any]]:
        await kafka.provision(topic, 1)
        await asyncio.to_thread(_produce, kafka_bootstrap_servers, topic, records)
        async with app:
            return await seen.wait_count(4, "every form decoded")

    assert run(scenario()) == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
