"""The log binder's consumer on a damaged durable log: the damaged partition stops alone."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from binder import App, BindingState
from binder.bindings import InputBinding
from binder.spi import ConsumerSpec
from binder.testing.conformance.support import IdleListener, Inbox
from binders.log import LogBinder, LogOptions
from binders.log.binder import durable_broker_name
from binders.log.engine import Broker
from binders.log.engine.durable import DurableStorage, StorageSettings
from binders.log.engine.segment import CorruptLogError

TOPIC = "orders"
HEALTHY = {(p, i) for p in (0, 2) for i in range(12)}
BEFORE_DAMAGE = {(1, i) for i in range(4)}


def damaged_topic(path: Path) -> None:
    """Three partitions of three batches of four records; the second batch of partition 1
    has a flipped byte."""
    broker = Broker("fill", storage=DurableStorage(path, StorageSettings()))
    broker.create_topic(TOPIC, 3)
    for b in range(3):
        for p in range(3):
            rows = [{"p": p, "i": 4 * b + i} for i in range(4)]
            broker.append(TOPIC, p, [(None, json.dumps(r).encode(), {}, time.time()) for r in rows])
    broker.close()
    segment = next((path / "topics" / TOPIC / "1").glob("*.log"))
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the second of three batches
    segment.write_bytes(bytes(raw))
    segment.with_suffix(".index").unlink()  # so that the start-up scan sees it


def test_an_app_handles_the_healthy_partitions_of_a_damaged_topic_and_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log"
    damaged_topic(path)
    doc = {
        "binders": {"disk": {"type": "log", "path": str(path)}},
        "bindings": {"sink-in-0": {"destination": TOPIC, "group": "g"}},
    }
    app = App(config={"binder": doc}, environ={})
    inbox: Inbox[tuple[int, int]] = Inbox()

    @app.consumer
    async def sink(payload: dict[str, Any]) -> None:
        inbox.add((payload["p"], payload["i"]))

    async def scenario() -> tuple[list[tuple[int, int]], BindingState, dict[int, int]]:
        async with app:
            binding = app.binding("sink-in-0")
            assert isinstance(binding, InputBinding)
            await inbox.wait_count(len(HEALTHY | BEFORE_DAMAGE))
            broker = Broker.named(durable_broker_name(path))
            witness = json.dumps({"p": 0, "i": 12}).encode()
            broker.append(TOPIC, 0, [(None, witness, {}, time.time())])  # after the damage met
            got = await inbox.wait_for((0, 12))
            assert binding.restarts == 0 and binding.error is None
            return got, binding.state, broker.committed("g", TOPIC)

    with caplog.at_level(logging.ERROR, "binder.log"):
        got, state, committed = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert sorted(got) == sorted(HEALTHY | BEFORE_DAMAGE | {(0, 12)})  # each once, none lost
    assert state is BindingState.RUNNING
    assert committed[1] == 4  # the damaged partition did not move past the damage
    stops = [r.getMessage() for r in caplog.records if "stopped at offset" in r.getMessage()]
    assert len(stops) == 1 and f"{TOPIC}/1 stopped at offset 4" in stops[0]
    assert "offsets 4..7 cannot be read" in stops[0]


def test_the_consumer_reports_its_damaged_partitions(tmp_path: Path) -> None:
    damaged_topic(tmp_path / "log")

    async def scenario() -> tuple[list[Any], dict[int, CorruptLogError]]:
        binder = LogBinder("disk", LogOptions(path=str(tmp_path / "log")))
        await binder.start()
        try:
            consumer = await binder.consumer(ConsumerSpec(TOPIC, "g"), IdleListener())
            records: list[Any] = []
            while len(records) < len(HEALTHY | BEFORE_DAMAGE):
                records += await consumer.fetch()
            return records, consumer.damaged
        finally:
            await binder.close()

    records, damaged = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert {(r.partition, r.offset) for r in records} == HEALTHY | BEFORE_DAMAGE
    assert list(damaged) == [1]
    error = damaged[1]
    assert (error.topic, error.partition, error.first, error.end) == (TOPIC, 1, 4, 8)
