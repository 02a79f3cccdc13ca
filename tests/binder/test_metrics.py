"""Metrics: the counters move as messages flow, read from the bindings when scraped."""

from __future__ import annotations

import asyncio
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
