"""``App.start`` provisions every configured output before any input starts (the log)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from binder import App
from binders.log.engine import Broker


@pytest.fixture
def broker() -> Iterator[str]:
    name = f"provisioning-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)


def _doc(broker: str, bindings: dict[str, Any]) -> dict[str, Any]:
    return {
        "binder": {"binders": {"local": {"type": "log", "broker": broker}}, "bindings": bindings}
    }


def test_a_send_only_binding_is_provisioned_at_start(broker: str) -> None:
    dest = f"events-{uuid.uuid4().hex[:6]}"
    app = App(
        config=_doc(
            broker,
            {
                "events": {
                    "destination": dest,
                    "producer": {"partition-count": 6, "required-groups": ["billing"]},
                }
            },
        ),
        environ={},
    )

    async def scenario() -> tuple[int, dict[int, int]]:
        async with app:  # nothing sent yet
            log = Broker.named(broker)
            topic = log.topic(dest)
            assert topic is not None, "the destination exists before the first send"
            return topic.partition_count, log.committed("billing", dest)

    partitions, billing = asyncio.run(scenario())
    assert partitions == 6
    assert billing == dict.fromkeys(range(6), 0), "the required group exists, at the start"


def test_an_input_creates_its_destination_with_a_producer_bindings_partition_count(
    broker: str,
) -> None:
    """The consumer process starts first; the producer binding in the same file (of a
    function this process does not run) says how many partitions the destination has."""
    dest = f"orders-{uuid.uuid4().hex[:6]}"
    app = App(
        config=_doc(
            broker,
            {
                "make-out-0": {"destination": dest, "producer": {"partition-count": 4}},
                "sink-in-0": {"destination": dest, "group": "g"},
            },
        ),
        environ={},
    )

    @app.consumer
    def sink(payload: Any) -> None:
        pass

    async def scenario() -> int:
        async with app:
            topic = Broker.named(broker).topic(dest)
            assert topic is not None
            return topic.partition_count

    assert asyncio.run(scenario()) == 4
