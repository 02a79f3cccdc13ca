"""Queue settings on the real broker: binder-wide, per binding under ``consumer:`` (the queues
it reads) and ``producer:`` (its required groups' queues), and queues that already exist."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from binder import App
from binders.rabbit.testing import rabbitmqctl


def _queues(prefix: str) -> dict[str, tuple[str, str]]:
    """Queue name → (type, arguments as rabbitmqctl prints them), for names under ``prefix``."""
    listed = rabbitmqctl("list_queues", "name", "type", "arguments")
    rows = (line.split("\t") for line in listed.splitlines())
    return {row[0]: (row[1], row[2]) for row in rows if row[0].startswith(prefix)}


def _app(url: str, bindings: dict[str, Any], **binder: Any) -> App:
    section = {"binders": {"r": {"type": "rabbit", "url": url, **binder}}, "bindings": bindings}
    return App(config={"binder": section}, environ={})


def _start(app: App) -> None:
    async def scenario() -> None:
        async with app:
            pass

    asyncio.run(scenario())


def test_a_bindings_queue_type_and_ttl_shape_its_group_queue(
    rabbit_url: str, rabbit_prefix: str
) -> None:
    d = f"{rabbit_prefix}orders"
    consumer = {"queue-type": "quorum", "message-ttl": "90s", "max-length": 500, "max-attempts": 1}
    app = _app(rabbit_url, {"sink-in-0": {"destination": d, "group": "g", "consumer": consumer}})

    @app.consumer
    def sink(payload: Any) -> None:
        raise ValueError("to the dead letters")

    async def scenario() -> None:
        async with app:
            await app.send(d, {"n": 1})
            for _ in range(200):  # the letters' queue is declared before the first letter
                if f"{d}.g.dlq" in _queues(rabbit_prefix):
                    return
                await asyncio.sleep(0.05)

    asyncio.run(scenario())
    kind, arguments = _queues(rabbit_prefix)[f"{d}.g"]
    assert kind == "quorum"
    assert "x-message-ttl" in arguments and "90000" in arguments
    assert "x-max-length" in arguments and "500" in arguments
    letters = _queues(rabbit_prefix)[f"{d}.g.dlq"]
    assert letters[0] == "quorum" and "x-message-ttl" not in letters[1], "letters never expire"


def test_binder_wide_settings_and_a_producers_required_groups(
    rabbit_url: str, rabbit_prefix: str
) -> None:
    d = f"{rabbit_prefix}events"
    producer = {"required-groups": ["audit"], "partition-count": 2, "message-ttl": "1h"}
    app = _app(
        rabbit_url, {"events": {"destination": d, "producer": producer}}, **{"queue-type": "quorum"}
    )
    _start(app)
    queues = _queues(rabbit_prefix)
    for p in range(2):
        kind, arguments = queues[f"{d}.audit-{p}"]
        assert kind == "quorum"
        assert "x-single-active-consumer" in arguments and "3600000" in arguments


def test_an_existing_queue_with_other_arguments_is_used_as_it_is(
    rabbit_url: str, rabbit_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = f"{rabbit_prefix}legacy"
    first = _app(rabbit_url, {"sink-in-0": {"destination": d, "group": "g"}})
    first.consumer(lambda payload: None, name="sink")
    _start(first)
    received: list[Any] = []
    consumer = {"message-ttl": "5s"}
    second = _app(rabbit_url, {"sink-in-0": {"destination": d, "group": "g", "consumer": consumer}})
    second.consumer(received.append, name="sink")

    async def scenario() -> None:
        async with second:
            await second.send(d, {"n": 1})
            for _ in range(200):
                if received:
                    return
                await asyncio.sleep(0.025)

    with caplog.at_level(logging.WARNING, logger="binder.rabbit.binder"):
        asyncio.run(scenario())
    assert received == [{"n": 1}], "the existing queue is read"
    assert any("exists with other arguments" in r.getMessage() for r in caplog.records)
    assert "x-message-ttl" not in _queues(rabbit_prefix)[f"{d}.g"][1]
