"""A Kafka broker that dies under a running app: the binding does not read as running on a dead
broker (it fails naming the broker, the app reads down, it restarts), a send fails within the
request timeout instead of waiting for ever, and once the broker is back the binding runs and
messages flow again. A broker of this test's own (Tansu), stopped and started on one port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from binder import App, BindingState
from binder.errors import BackendError
from binders.kafka.testing import FAST_GROUPS, Tansu


async def _until(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def test_a_dead_broker_fails_the_binding_and_a_broker_back_runs_it_again() -> None:
    broker = Tansu()
    servers = broker.start()
    options = {
        "type": "kafka",
        "bootstrap-servers": servers,
        **FAST_GROUPS,
        "request-timeout-ms": 8000,
    }
    app = App(
        {
            "binder": {
                "binders": {"k": options},
                "bindings": {"eat-in-0": {"destination": "meals", "group": "diners"}},
            }
        },
        environ={},
    )
    eaten: list[Any] = []

    @app.consumer
    def eat(meal: dict[str, Any]) -> None:
        eaten.append(meal)

    again = Tansu(port=broker.port)
    binding = None

    async def scenario() -> None:
        nonlocal binding
        async with app:
            (binding,) = app.bindings.values()
            await app.send("meals", {"n": 1})
            await _until(lambda: eaten, 30, "the first message")
            broker.stop()
            took = await _until(
                lambda: binding.state is not BindingState.RUNNING, 45, "the binding to fail"
            )
            assert took < 40
            health = app.health()
            assert health["status"] == "down"
            error = health["bindings"]["eat-in-0"]["error"]
            assert error and servers in error, error
            started = time.monotonic()
            with pytest.raises(BackendError, match=servers):
                await asyncio.wait_for(app.send("meals", {"n": 2}), 60)
            assert time.monotonic() - started < 30, "a send fails within the request timeout"
            again.start()  # on the same port: the app's bootstrap servers reach it
            await _until(lambda: binding.state is BindingState.RUNNING, 90, "running again")
            await _until(lambda: app.health()["status"] == "up", 10, "the app to read up again")
            await app.send("meals", {"n": 3})
            await _until(lambda: {"n": 3} in eaten, 60, "a message after the broker is back")

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
        again.stop()
