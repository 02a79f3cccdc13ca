"""Tombstones on a real Kafka, with a plain aiokafka client on the other end."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from binder import TOMBSTONE, App
from binder.message import EXCEPTION_MESSAGE
from binder.testing.conformance.support import Conformance, Inbox, run


def _app(kafka: Conformance, bindings: dict[str, Any]) -> App:
    for binding in bindings.values():
        kafka._declare_binding(binding)
    section = {"binders": {"kafka": kafka.binder_config}, "bindings": bindings}
    return App(config={"binder": section}, environ={})


def test_the_binder_sends_a_tombstone_a_plain_consumer_sees_without_a_value(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    app = _app(kafka, {"users": {"destination": topic}})

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        async with app:
            await app.send("users", {"name": "Ada"}, key="u-1")
            await app.send("users", TOMBSTONE, key="u-1")
        return await plain_read(topic, 1, 2)

    first, second = run(scenario())
    assert first.value == b'{"name":"Ada"}'
    assert (second.key, second.value) == (b"u-1", None)


def test_a_plain_producers_tombstone_reaches_optional_and_is_dead_lettered_for_dict(
    kafka: Conformance, kafka_config: dict[str, Any], plain_read: Any, topic: str, group: str
) -> None:
    dlq = kafka.dead_letters(topic, f"{group}-d")
    app = _app(
        kafka,
        {
            "forget-in-0": {"destination": topic, "group": group},
            "strict-in-0": {"destination": topic, "group": f"{group}-d"},
        },
    )
    seen: Inbox[Any] = Inbox()

    @app.consumer
    def forget(payload: dict[str, Any] | None) -> None:
        seen.add(payload)

    @app.consumer
    def strict(payload: dict[str, Any]) -> None:
        raise AssertionError("a dict parameter is never given a tombstone")

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_config["bootstrap-servers"])
        await producer.start()
        try:
            await producer.send_and_wait(topic, None, key=b"u-1")
        finally:
            await producer.stop()
        async with app:
            await seen.wait_count(1, "the tombstone at the Optional function")
            letters = await plain_read(dlq, 1, 1)
        return letters

    (letter,) = run(scenario())
    assert seen.items == [None]
    assert (letter.key, letter.value) == (b"u-1", None), "the letter is a tombstone too"
    headers = {name: value.decode() for name, value in letter.headers}
    assert "tombstone" in headers[EXCEPTION_MESSAGE]
    assert "'strict'" in headers[EXCEPTION_MESSAGE]
