"""Core hardening on a real Kafka: a refused send, and provisioning order across two apps."""

from __future__ import annotations

from typing import Any

from binder import BindingState, Message
from binder.message import EXCEPTION_MESSAGE, EXCEPTION_TYPE
from binder.spi import OutboundRecord
from binder.testing.conformance.support import Conformance, Inbox, run
from binders.kafka.binder import KafkaBinder


def test_an_output_the_broker_refuses_is_dead_lettered_and_the_partition_commits(
    kafka: Conformance, topic: str, group: str
) -> None:
    """A record over ``max-request-size``: each attempt's send fails, the message goes to
    the dead letters naming the error, the ones after it are handled and committed."""
    out = kafka.declare(f"{topic}-out", f"{group}-out")
    dlq = kafka.dead_letters(topic, group)
    app = kafka.app(
        {
            "grow-in-0": {
                "destination": topic,
                "group": group,
                "consumer": {"max-attempts": 2, "back-off-initial-interval": 0.01},
            },
            "grow-out-0": {"destination": out},
            "collect-in-0": {"destination": out, "group": f"{group}-out"},
            "inspect-in-0": {"destination": dlq, "group": f"{group}-dlq"},
        },
        options={"max-request-size": 4096},
    )
    collected: Inbox[Any] = Inbox()
    letters: Inbox[Message[Any]] = Inbox()

    @app.function
    def grow(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "pad": "x" * payload["size"]}

    @app.consumer
    def collect(payload: dict[str, Any]) -> None:
        collected.add(payload["n"])

    @app.consumer
    def inspect(message: Message[Any]) -> None:
        letters.add(message)

    async def scenario() -> tuple[list[Any], list[Message[Any]], BindingState, bytes]:
        async with app:
            for n, size in enumerate([10, 10_000, 10, 10]):
                await app.send(topic, {"n": n, "size": size}, key="k")
            await collected.wait_for(3)
            await letters.wait_count(1, f"a dead letter on {dlq}")
            state = app.binding("grow-in-0").state
        async with kafka.binder() as binder:
            await kafka.send_raw(binder, topic, [OutboundRecord(b'{"witness": 1}')])
        after = await kafka.read_raw(topic, group, 1)
        return collected.items, letters.items, state, after[0].value

    collected_items, letters_seen, state, first_after = run(scenario())
    assert collected_items == [0, 2, 3]
    (letter,) = letters_seen
    assert letter.payload == {"n": 1, "size": 10_000}
    assert letter.headers[EXCEPTION_TYPE] == "binder.errors.BackendError"
    assert "max-request-size" in letter.headers[EXCEPTION_MESSAGE]
    assert state is BindingState.RUNNING
    assert first_after == b'{"witness": 1}', "the group committed past every message"


def _shared_file(kafka: Conformance, topic: str, group: str) -> dict[str, Any]:
    """One configuration for both processes: a send-only binding and a consumer."""
    return {
        "events": {
            "destination": topic,
            "producer": {"partition-count": 6, "required-groups": [group]},
        },
        "sink-in-0": {"destination": topic, "group": group},
    }


async def _partitions(kafka: Conformance, topic: str) -> int | None:
    async with kafka.binder() as binder:
        assert isinstance(binder, KafkaBinder)
        return await binder.admin.partition_count(topic)


def test_the_producer_app_provisions_at_start_before_a_consumer_app_starts(
    kafka: Conformance, topic: str, group: str
) -> None:
    bindings = _shared_file(kafka, topic, group)
    producer = kafka.app(bindings)  # registers no function: sink-in-0 is another process's
    consumer = kafka.app(bindings)
    inbox: Inbox[Any] = Inbox()

    @consumer.consumer
    def sink(payload: Any) -> None:
        inbox.add(payload)

    async def scenario() -> tuple[int | None, list[Any]]:
        async with producer:
            created = await _partitions(kafka, topic)  # before any send
            async with consumer:
                for n in range(12):
                    await producer.send("events", {"n": n}, key=f"k{n}")
                await inbox.wait_count(12)
        return created, inbox.items

    created, items = run(scenario())
    assert created == 6
    assert sorted(item["n"] for item in items) == list(range(12))


def test_a_consumer_app_started_first_creates_the_topic_as_the_producer_binding_says(
    kafka: Conformance, topic: str, group: str
) -> None:
    bindings = _shared_file(kafka, topic, group)
    consumer = kafka.app(bindings, options={"default-partition-count": 1})
    producer = kafka.app(bindings)
    inbox: Inbox[Any] = Inbox()

    @consumer.consumer
    def sink(payload: Any) -> None:
        inbox.add(payload)

    async def scenario() -> tuple[int | None, list[Any]]:
        async with consumer:
            created = await _partitions(kafka, topic)
            async with producer:
                await producer.send("events", {"n": 1}, key="k")
                await inbox.wait_count(1)
        return created, inbox.items

    created, items = run(scenario())
    assert created == 6
    assert items == [{"n": 1}]
