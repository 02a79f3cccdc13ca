"""Topic provisioning: create, grow, never shrink, auto-create off; a consumer before its topic."""

from __future__ import annotations

import json
from typing import Any

import pytest

from binder import BackendError, ConfigError
from binder.message import ORIGINAL_PARTITION
from binder.spi import OutboundRecord
from binder.testing.conformance.support import Conformance, Inbox, keys_for_partitions, run
from binders.kafka.binder import KafkaBinder


async def _partitions(kafka: Conformance, topic: str) -> int | None:
    async with kafka.binder() as binder:
        assert isinstance(binder, KafkaBinder)
        return await binder.admin.partition_count(topic)


def test_provision_creates_the_topic_with_its_partitions(kafka: Conformance, topic: str) -> None:
    async def scenario() -> tuple[int | None, int | None]:
        before = await _partitions(kafka, topic)
        await kafka.provision(topic, 3)
        return before, await _partitions(kafka, topic)

    assert run(scenario()) == (None, 3)


def test_provision_never_shrinks_a_topic(kafka: Conformance, topic: str) -> None:
    async def scenario() -> int | None:
        await kafka.provision(topic, 4)
        await kafka.provision(topic, 2)  # asks for fewer: nothing to do, no error
        return await _partitions(kafka, topic)

    assert run(scenario()) == 4


def test_too_few_partitions_without_auto_add_is_a_config_error(
    kafka: Conformance, topic: str
) -> None:
    async def scenario() -> None:
        await kafka.provision(topic, 1)
        await kafka.provision(topic, 3)

    with pytest.raises(ConfigError, match="auto-add-partitions") as caught:
        run(scenario())
    assert f"topic {topic!r} has 1 partition(s), 3 wanted" in str(caught.value)


def test_auto_add_partitions_grows_the_topic(kafka_config: dict[str, Any], topic: str) -> None:
    """Grows where the broker has CreatePartitions; Tansu lacks it, and says so clearly."""
    growing = Conformance({**kafka_config, "auto-add-partitions": True})

    async def scenario() -> int | None:
        await growing.provision(topic, 1)
        await growing.provision(topic, 3)
        return await _partitions(growing, topic)

    try:
        try:
            grown = run(scenario())
        except BackendError as exc:
            servers = kafka_config["bootstrap-servers"]
            assert f"kafka at {servers}: grow topic {topic!r} from 1 to 3 partitions" in str(exc)
            assert "CreatePartitions" in str(exc), "the message says the broker cannot grow topics"
            return
        assert grown == 3
    finally:
        run(growing.cleanup())


def test_a_missing_topic_without_auto_create_fails_at_start(
    kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    strict = Conformance({**kafka_config, "auto-create-topics": False})
    app = strict.app({"sink-in-0": {"destination": topic, "group": group}})

    @app.consumer
    async def sink(payload: Any) -> None: ...

    async def scenario() -> None:
        async with app:
            pass

    with pytest.raises(ConfigError, match="auto-create-topics") as caught:
        run(scenario())
    assert f"topic {topic!r} does not exist" in str(caught.value)
    assert run(_partitions(strict, topic)) is None, "nothing was created"


def test_a_consumer_that_starts_before_its_topic_exists(
    kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    kafka = Conformance({**kafka_config, "default-partition-count": 2})
    app = kafka.app({"sink-in-0": {"destination": topic, "group": group}})
    inbox: Inbox[Any] = Inbox()

    @app.consumer
    async def sink(payload: Any) -> None:
        inbox.add(payload)

    async def scenario() -> tuple[list[Any], int | None]:
        async with app:  # the consumer creates the topic, then joins
            partitions = await _partitions(kafka, topic)
            async with kafka.app() as sender:
                for n in range(10):
                    await sender.send(topic, {"n": n}, key=f"k{n}")
            return await inbox.wait_count(10, f"10 messages on {topic}"), partitions

    try:
        received, partitions = run(scenario())
    finally:
        run(kafka.cleanup())
    assert partitions == 2, "created with default-partition-count"
    assert sorted(p["n"] for p in received) == list(range(10))


def test_required_groups_and_dead_letter_topics_are_provisioned(
    kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    kafka = Conformance({**kafka_config, "dlq-partition-count": 2})
    dlq = kafka.declare(f"{topic}-parked")  # any name: the core says it is a dead-letter one

    async def scenario() -> tuple[int, int, int | None]:
        await kafka.provision(topic, 1, [group])
        async with kafka.binder() as binder:
            made = await binder.provision(dlq, 1, dead_letters_of=topic)
            again = await binder.provision(dlq, 1, dead_letters_of=topic)
        return made, again, await _partitions(kafka, dlq)

    try:
        assert run(scenario()) == (2, 2, 2), "a dead-letter topic gets dlq-partition-count"
    finally:
        run(kafka.cleanup())


def test_provision_returns_the_real_partition_count(kafka: Conformance, topic: str) -> None:
    """A topic made elsewhere with more partitions than asked: the count the core places
    records over is the topic's."""

    async def scenario() -> tuple[int, int]:
        kafka.declare(topic)
        async with kafka.binder() as binder:
            made = await binder.provision(topic, 5)
            asked_fewer = await binder.provision(topic, 2)
        return made, asked_fewer

    assert run(scenario()) == (5, 5)


def test_sends_go_over_the_real_partitions_of_a_topic_made_with_more(
    kafka: Conformance, plain_read: Any, topic: str
) -> None:
    """The binding asks for 2 partitions of a topic that has 4: keyed messages land where
    murmur2 over 4 puts them (where a Java producer would), not over 2."""
    app = kafka.app({"feed": {"destination": topic, "producer": {"partition-count": 2}}})
    keys = keys_for_partitions(4)

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 4)
        async with app:
            for key in keys:
                await app.send("feed", {"key": key}, key=key)
        return await plain_read(topic, 4, len(keys))

    placed = {json.loads(r.value)["key"]: r.partition for r in run(scenario())}
    assert placed == {key: p for p, key in enumerate(keys)}


def test_default_partition_count_applies_only_to_topics_the_binder_creates(
    kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    kafka = Conformance({**kafka_config, "default-partition-count": 3})

    async def scenario() -> tuple[int | None, int | None]:
        async with Conformance(kafka_config).binder() as plain:
            await plain.provision(topic, 1)  # made elsewhere, with one partition
        async with kafka.binder() as binder:
            consumer = await kafka.consumer(binder, topic, group)  # takes it as it is
            await consumer.close()
            await binder.provision(f"{topic}-new", 1)
        return await _partitions(kafka, topic), await _partitions(kafka, f"{topic}-new")

    kafka.declare(f"{topic}-new")
    try:
        assert run(scenario()) == (1, 3)
    finally:
        run(kafka.cleanup())


@pytest.mark.parametrize("custom", [False, True], ids=["default-name", "custom-name"])
def test_a_dead_letter_topic_has_its_sources_partitions_and_keeps_each_letters_partition(
    kafka: Conformance, plain_read: Any, topic: str, group: str, custom: bool
) -> None:
    """``dlq-partition-count: same`` (the default), as Spring Cloud Stream does it, whatever
    the dead-letter topic's name. The poison messages share one key but sit on all four
    partitions, so a letter placed by its key would not land where its original was."""
    poison = [OutboundRecord(b'{"n": %d}' % p, b"one-key", {}, p) for p in range(4)]
    dlq = kafka.declare(f"{topic}-parked") if custom else kafka.dead_letters(topic, group)
    consumer: dict[str, Any] = {"max-attempts": 1}
    if custom:
        consumer["dead-letter-destination"] = dlq
    app = kafka.app({"fail-in-0": {"destination": topic, "group": group, "consumer": consumer}})

    @app.consumer
    async def fail(payload: Any) -> None:
        raise ValueError("poison")

    async def scenario() -> tuple[int | None, list[Any]]:
        await kafka.provision(topic, 4)
        async with app:
            async with kafka.binder() as binder:
                await kafka.send_raw(binder, topic, poison)
            letters = await plain_read(dlq, 4, len(poison))
        return await _partitions(kafka, dlq), letters

    partitions, letters = run(scenario())
    assert partitions == 4, "created with the partitions of the topic it serves"
    origin = {int(dict(r.headers)[ORIGINAL_PARTITION]) for r in letters}
    assert origin == {0, 1, 2, 3}
    assert all(r.partition == int(dict(r.headers)[ORIGINAL_PARTITION]) for r in letters)
