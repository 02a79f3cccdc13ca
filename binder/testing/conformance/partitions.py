"""Partitions: Kafka-compatible routing by key or key expression, order per key."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

from binder.message import Message
from binder.testing.conformance.support import (
    Conformance,
    Inbox,
    keys_for_partitions,
    partition_of,
    require,
    run,
)

__all__ = [
    "test_keyless_messages_are_spread_over_partitions",
    "test_order_per_key_under_concurrency",
    "test_partition_by_key_expression",
    "test_partition_by_message_key",
]

PARTITIONS = 4


async def _routed(
    conformance: Conformance,
    dest: str,
    group: str,
    producer: dict[str, Any],
    messages: list[tuple[Any, Any]],
) -> list[Message[Any]]:
    """Send ``(payload, key)`` pairs through a partitioned binding; the messages received."""
    await conformance.provision(dest, PARTITIONS)
    app = conformance.app(
        {
            "sender": {
                "destination": dest,
                "producer": {"partition-count": PARTITIONS, **producer},
            },
            "sink-in-0": {"destination": dest, "group": group, "consumer": {"partitioned": True}},
        }
    )
    inbox: Inbox[Message[Any]] = Inbox()

    @app.consumer
    async def sink(message: Message[Any]) -> None:
        inbox.add(message)

    async with app:
        for payload, key in messages:
            await app.send("sender", payload, key=key)
        return await inbox.wait_count(len(messages), f"{len(messages)} message(s) on {dest}")


def test_partition_by_key_expression(conformance: Conformance, dest: str, group: str) -> None:
    require(conformance.capabilities, "consumer_groups")
    customers = [f"customer-{c}" for c in range(12)]
    messages = [({"customer": c, "n": n}, None) for n in range(3) for c in customers]
    producer = {"partition-key-expression": "payload.customer"}
    received = run(_routed(conformance, dest, group, producer, messages))
    seen: dict[str, set[int | None]] = defaultdict(set)
    for message in received:
        customer = message.payload["customer"]
        seen[customer].add(message.partition)
        assert message.partition == partition_of(customer, PARTITIONS), (
            f"{customer!r} belongs on partition {partition_of(customer, PARTITIONS)} "
            f"(murmur2 of its UTF-8 bytes, as Kafka's Java partitioner), "
            f"came from {message.partition}"
        )
    assert sorted(seen) == sorted(customers)
    assert len({p for ps in seen.values() for p in ps}) > 1, "12 keys use more than 1 partition"


def test_partition_by_message_key(conformance: Conformance, dest: str, group: str) -> None:
    require(conformance.capabilities, "consumer_groups")
    keys = [*keys_for_partitions(PARTITIONS, "key"), "ключ", "🔑", "12345"]
    messages = [({"key": k, "n": n}, k) for n in range(2) for k in keys]
    received = run(_routed(conformance, dest, group, {}, messages))
    for message in received:
        assert message.key == message.payload["key"]
        assert message.partition == partition_of(message.key, PARTITIONS), (
            f"key {message.key!r} belongs on partition {partition_of(message.key, PARTITIONS)}, "
            f"came from {message.partition}"
        )
    assert {m.partition for m in received} == set(range(PARTITIONS))


def test_keyless_messages_are_spread_over_partitions(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    messages = [({"n": n}, None) for n in range(4 * PARTITIONS)]
    received = run(_routed(conformance, dest, group, {}, messages))
    assert sorted(m.payload["n"] for m in received) == list(range(4 * PARTITIONS))
    assert len({m.partition for m in received}) > 1, "keyless messages are spread"


def test_order_per_key_under_concurrency(conformance: Conformance, dest: str, group: str) -> None:
    require(conformance.capabilities, "consumer_groups", "order_per_key")
    keys = [f"key-{k}" for k in range(16)]
    per_key = 8
    rng = random.Random(7)

    async def scenario() -> list[tuple[str, int]]:
        await conformance.provision(dest, PARTITIONS)
        app = conformance.app(
            {
                "sender": {"destination": dest, "producer": {"partition-count": PARTITIONS}},
                "sink-in-0": {"destination": dest, "group": group, "consumer": {"concurrency": 4}},
            }
        )
        inbox: Inbox[tuple[str, int]] = Inbox()

        @app.consumer
        async def sink(message: Message[dict[str, Any]]) -> None:
            await asyncio.sleep(rng.uniform(0, 0.003))  # lanes finish out of order
            inbox.add((message.key, message.payload["seq"]))

        async with app:
            for seq in range(per_key):
                for key in keys:
                    await app.send("sender", {"seq": seq}, key=key)
            return await inbox.wait_count(len(keys) * per_key)

    received = run(scenario())
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, seq in received:
        by_key[key].append(seq)
    for key in keys:
        assert by_key[key] == list(range(per_key)), f"{key}: handled out of order {by_key[key]}"
