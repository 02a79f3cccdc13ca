"""Metrics: the counters move as messages flow, read from the bindings when scraped."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from binder import App
from binder.testing.conformance.support import Inbox
from binders.log.engine import Broker


@pytest.fixture
def broker() -> Any:
    name = f"metrics-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counters_move_as_messages_flow_and_fail(broker: str) -> None:
    registry = CollectorRegistry()
    consumer = {"max-attempts": 2, "back-off-initial-interval": 0.01}
    bindings = {
        "check-in-0": {"destination": "orders", "group": "g", "consumer": consumer},
        "check-out-0": {"destination": "checked"},
        "watch-in-0": {"destination": "checked"},
    }
    doc = {"binders": {"local": {"type": "log", "broker": broker}}, "bindings": bindings}
    app = App(config={"binder": doc}, environ={}, metrics_registry=registry)
    seen: Inbox[Any] = Inbox()

    @app.function
    def check(order: dict[str, Any]) -> dict[str, Any]:
        if order["n"] == 3:
            raise ValueError("bad order")
        return order

    @app.consumer
    def watch(order: dict[str, Any]) -> None:
        seen.add(order)

    async def scenario() -> tuple[dict[str, float | None], bytes]:
        async with app:
            for n in range(5):
                await app.send("orders", {"n": n})
            await seen.wait_count(4, "the good orders")
            for _ in range(200):  # the dead letter is counted once it was sent
                if _value(registry, "streambinder_messages_processed_total", **dead) == 1:
                    break
                await asyncio.sleep(0.01)
            figures = {
                "received": _value(registry, "streambinder_messages_received_total", **g),
                "ok": _value(registry, "streambinder_messages_processed_total", **g, outcome="ok"),
                "retried": _value(
                    registry, "streambinder_messages_processed_total", **g, outcome="retried"
                ),
                "dead": _value(registry, "streambinder_messages_processed_total", **dead),
                "sent orders": _value(
                    registry, "streambinder_messages_sent_total", destination="orders"
                ),
                "sent letters": _value(
                    registry, "streambinder_messages_sent_total", destination="orders.g.dlq"
                ),
                "watch anonymous": _value(
                    registry,
                    "streambinder_messages_received_total",
                    binding="watch-in-0",
                    destination="checked",
                    group="anonymous",
                ),
                "up": _value(registry, "streambinder_binding_up", binding="check-in-0"),
                "assigned": _value(
                    registry, "streambinder_assigned_partitions", destination="orders", group="g"
                ),
                "rebalances": _value(
                    registry, "streambinder_rebalances_total", destination="orders", group="g"
                ),
                "timed": _value(
                    registry, "streambinder_process_seconds_count", binding="check-in-0"
                ),
                "slowest bucket": _value(
                    registry, "streambinder_process_seconds_bucket", binding="check-in-0", le="+Inf"
                ),
            }
            return figures, generate_latest(registry)

    g = {"binding": "check-in-0", "destination": "orders", "group": "g"}
    dead = {**g, "outcome": "dead_lettered"}
    figures, text = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert figures == {
        "received": 5.0,
        "ok": 4.0,
        "retried": 1.0,
        "dead": 1.0,
        "sent orders": 5.0,
        "sent letters": 1.0,
        "watch anonymous": 4.0,
        "up": 1.0,
        "assigned": 1.0,
        "rebalances": 1.0,
        "timed": 5.0,
        "slowest bucket": 5.0,
    }
    assert b'streambinder_messages_processed_total{binding="check-in-0"' in text
    after = _value(registry, "streambinder_binding_up", binding="check-in-0")
    assert after is None, "a stopped app's series are gone"


def test_send_errors_are_counted_by_destination(broker: str) -> None:
    registry = CollectorRegistry()
    doc = {"binders": {"local": {"type": "log", "broker": broker}}}
    app = App(config={"binder": doc}, environ={}, metrics_registry=registry)

    async def scenario() -> float | None:
        async with app:
            await app.send("events", {"n": 1})
            output = next(o for o in app.outputs() if o.destination == "events")
            producer = output._producer

            async def refuse(records: Any) -> None:
                raise RuntimeError("refused (injected)")

            producer.send_batch = refuse  # type: ignore[union-attr,method-assign]
            with pytest.raises(RuntimeError):
                await app.send("events", {"n": 2})
            return _value(registry, "streambinder_send_errors_total", destination="events")

    assert asyncio.run(scenario()) == 1.0
    assert _value(registry, "streambinder_messages_sent_total", destination="events") is None


def test_a_rebalance_is_counted_logged_and_the_partitions_follow(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two members of a group on a two-partition destination: the second's arrival takes a
    partition from the first (revoked, handed over, logged at INFO with how long it took)."""
    registry = CollectorRegistry()
    bindings = {
        "orders": {"destination": "orders", "producer": {"partition-count": 2}},
        "sink-in-0": {"destination": "orders", "group": "g"},
    }
    doc = {"binders": {"local": {"type": "log", "broker": broker}}, "bindings": bindings}

    def member() -> App:
        app = App(config={"binder": doc}, environ={}, metrics_registry=registry)
        app.consumer(lambda payload: None, name="sink")
        return app

    def held() -> float | None:
        return _value(registry, "streambinder_assigned_partitions", destination="orders", group="g")

    async def scenario() -> tuple[float | None, float | None, float | None]:
        async with member() as first:
            for _ in range(200):
                if held() == 2:
                    break
                await asyncio.sleep(0.01)
            alone = held()
            async with member():
                for _ in range(500):
                    if len(first.binding("sink-in-0").stats.assigned) == 1 and held() == 2:
                        break
                    await asyncio.sleep(0.01)
                both = held()
                changes = _value(
                    registry, "streambinder_rebalances_total", destination="orders", group="g"
                )
        return alone, both, changes

    with caplog.at_level(logging.INFO, "binder.bindings"):
        alone, both, changes = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert (alone, both) == (2.0, 2.0), "the group holds both partitions, shared after"
    assert changes is not None and changes >= 3, "assigned, revoked, assigned"
    assert "revoked, handed over after" in caplog.text


def test_with_metrics_off_nothing_is_registered_or_timed(broker: str) -> None:
    registry = CollectorRegistry()
    bindings = {"sink-in-0": {"destination": "orders", "group": "g"}}
    doc = {
        "binders": {"local": {"type": "log", "broker": broker}},
        "bindings": bindings,
        "metrics": {"enabled": False},
    }
    app = App(config={"binder": doc}, environ={}, metrics_registry=registry)
    seen: Inbox[Any] = Inbox()
    app.consumer(seen.add, name="sink")

    async def scenario() -> tuple[int, list[int], bytes]:
        async with app:
            for n in range(3):
                await app.send("orders", {"n": n})
            await seen.wait_count(3, "the orders")
            stats = app.binding("sink-in-0").stats  # type: ignore[union-attr]
            return stats.received, list(stats.buckets), generate_latest(registry)

    received, buckets, text = asyncio.run(scenario())
    assert received == 3  # counted in memory, as ever
    assert sum(buckets) == 0  # never timed
    assert b"streambinder_" not in text
