"""Fixtures of the Kafka binder's own tests: its configuration and a cleaning-up helper."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from binder.testing.conformance.support import Conformance, run, unique_group, unique_name
from binders.kafka.testing import FAST_GROUPS


@pytest.fixture
def kafka_config(kafka_bootstrap_servers: str) -> dict[str, Any]:
    """The binder's options as under ``binder.binders.<name>``, ``type`` included."""
    return {"type": "kafka", "bootstrap-servers": kafka_bootstrap_servers, **FAST_GROUPS}


@pytest.fixture
def kafka(kafka_config: dict[str, Any]) -> Iterator[Conformance]:
    """Apps and raw binders on Kafka; every topic a test declared is deleted afterwards."""
    suite = Conformance(kafka_config)
    yield suite
    run(suite.cleanup())


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses."""
    return unique_name(request, "kt")


@pytest.fixture
def group() -> str:
    return unique_group()


PlainRead = Callable[[str, int, int], Awaitable[list[Any]]]


@pytest.fixture
def plain_read(kafka_bootstrap_servers: str) -> PlainRead:
    """``await plain_read(topic, partitions, count)``: what a plain aiokafka consumer
    (no group, from the earliest offset) sees, at least ``count`` records."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read(topic: str, partitions: int, count: int) -> list[Any]:
        client = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap_servers, auto_offset_reset="earliest"
        )
        await client.start()
        try:
            client.assign([TopicPartition(topic, p) for p in range(partitions)])
            seen: list[Any] = []
            while len(seen) < count:
                for records in (await client.getmany(timeout_ms=2000)).values():
                    seen.extend(records)
            return seen
        finally:
            await client.stop()

    return read
