"""A dead letter on Kafka carries its original's headers byte-exact, read by a plain client."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from binder import App
from binder.testing.conformance.support import Conformance, Inbox, run

ORIGINAL = [("h", b"1"), ("h", b"2"), ("null", None), ("bin", b"\xff\xfe\x00"), ("e", b"")]


def test_a_dead_letter_keeps_repeated_null_and_binary_headers_exactly(
    kafka: Conformance, kafka_config: dict[str, Any], plain_read: Any, topic: str, group: str
) -> None:
    binding = {"destination": topic, "group": group, "consumer": {"max-attempts": 1}}
    kafka._declare_binding(binding)
    section = {"binders": {"kafka": kafka.binder_config}, "bindings": {"fail-in-0": binding}}
    app = App(config={"binder": section}, environ={})
    tried: Inbox[bytes] = Inbox()

    @app.consumer
    def fail(payload: bytes) -> None:
        tried.add(payload)
        raise ValueError("refused")

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_config["bootstrap-servers"])
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"raw", key=b"k", headers=ORIGINAL)
        finally:
            await producer.stop()
        async with app:
            await tried.wait_count(1, "the failing consumer")
            return await plain_read(kafka.dead_letters(topic, group), 1, 1)

    (letter,) = run(scenario())
    assert (letter.key, letter.value) == (b"k", b"raw")
    headers = list(letter.headers)
    assert headers[: len(ORIGINAL)] == ORIGINAL, "first, in order, byte-exact"
    own = dict(headers[len(ORIGINAL) :])
    assert all(name.startswith("x-") for name in own), own
    assert own["x-exception-type"] == b"builtins.ValueError"
    assert own["x-original-destination"] == topic.encode()
    assert own["x-original-delivery-attempt"] == b"1"
