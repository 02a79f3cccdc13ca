"""binder.testing: the app.test() harness (sync and async) and the pytest plugin fixtures."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from typing import Any

import pytest

from binder import App, ConfigError, Message, plugins
from binder.spi import hookimpl
from binder.testing import TestClient
from binders.log import LogOptions
from binders.log.binder import LogBinder
from binders.log.engine import Broker

TIMEOUT = 2.0


def _echo_app(**doc: Any) -> App:
    app = App(config={"binder": doc} if doc else None, environ={})

    @app.function
    def echo(value: Any) -> Any:
        return value

    return app


# -- sync harness ----------------------------------------------------------------------------


def test_sync_send_and_receive() -> None:
    with _echo_app().test() as t:
        t.send("echo-in-0", {"id": 1}, key="k", headers={"h": "v"})
        out = t.receive("echo-out-0", timeout=TIMEOUT)
    assert out is not None
    assert (out.payload, out.key, out.headers["h"]) == ({"id": 1}, "k", "v")
    assert out.destination == "echo-out-0"


def test_sync_receive_returns_none_on_timeout() -> None:
    with _echo_app().test() as t:
        started = time.monotonic()
        assert t.receive("nothing-here", timeout=0.05) is None
        assert time.monotonic() - started >= 0.05


def test_receive_finds_messages_sent_before_the_call_in_order() -> None:
    with _echo_app().test() as t:
        for n in range(3):
            t.send("echo-in-0", n)
        t.send("side", "sentinel")
        assert t.receive("side", timeout=TIMEOUT) is not None
        outs = [t.receive("echo-out-0", timeout=TIMEOUT) for _ in range(3)]
        assert [m.payload for m in outs if m is not None] == [0, 1, 2]
        inputs = [t.receive("echo-in-0", timeout=TIMEOUT) for _ in range(3)]
        assert [m.payload for m in inputs if m is not None] == [0, 1, 2]


def test_receive_takes_each_message_once_but_sent_keeps_history() -> None:
    with _echo_app().test() as t:
        t.send("somewhere", "a")
        t.send("somewhere", "b")
        assert t.receive("somewhere", timeout=TIMEOUT).payload == "a"  # type: ignore[union-attr]
        assert [m.payload for m in t.sent("somewhere")] == ["a", "b"]
        assert t.receive("somewhere", timeout=TIMEOUT).payload == "b"  # type: ignore[union-attr]
        assert t.receive("somewhere", timeout=0.01) is None
        assert [m.payload for m in t.sent("somewhere")] == ["a", "b"]
        assert t.sent("never-used") == []


def test_binding_and_destination_names_are_interchangeable() -> None:
    doc = {"bindings": {"echo-in-0": {"destination": "in"}, "echo-out-0": {"destination": "out"}}}
    with _echo_app(**doc).test() as t:
        t.send("in", 1)
        t.send("echo-in-0", 2)
        assert t.destination("echo-out-0") == "out"
        assert t.receive("out", timeout=TIMEOUT).payload == 1  # type: ignore[union-attr]
        assert t.receive("echo-out-0", timeout=TIMEOUT).payload == 2  # type: ignore[union-attr]
        assert [m.payload for m in t.sent("echo-in-0")] == [1, 2]


def test_recorded_messages_are_decoded_by_their_content_type() -> None:
    with _echo_app().test() as t:
        t.send("raw", b"\x00\xff")
        out = t.receive("raw", timeout=TIMEOUT)
        assert out is not None
        assert out.payload == b"\x00\xff"  # not JSON: kept as bytes
        assert out.headers["contentType"] == "application/json"


def test_dead_letter_destinations_are_recorded() -> None:
    doc = {"bindings": {"fail-in-0": {"group": "g", "consumer": {"max-attempts": 1}}}}
    app = App(config={"binder": doc}, environ={})

    @app.consumer
    def fail(value: Any) -> None:
        raise RuntimeError("boom")

    with app.test() as t:
        t.send("fail-in-0", {"id": 1})
        letter = t.receive("fail-in-0.g.dlq", timeout=TIMEOUT)
        assert letter is not None
        assert letter.payload == {"id": 1}
        assert letter.headers["x-exception-type"] == "builtins.RuntimeError"
        assert [m.payload for m in t.sent("fail-in-0.g.dlq")] == [{"id": 1}]


def test_anonymous_consumer_dead_letters_to_anonymous_dlq() -> None:
    doc = {"bindings": {"fail-in-0": {"consumer": {"max-attempts": 1}}}}
    app = App(config={"binder": doc}, environ={})
    app.consumer(lambda v: 1 / 0, name="fail")
    with app.test() as t:
        t.send("fail-in-0", 1)
        letter = t.receive("fail-in-0.anonymous.dlq", timeout=TIMEOUT)
        assert letter is not None
        assert letter.headers["x-original-group"] == "anonymous"


def test_each_harness_gets_a_fresh_private_broker() -> None:
    app = _echo_app()
    with app.test() as t:
        t.send("echo-in-0", "first run")
        assert t.receive("echo-out-0", timeout=TIMEOUT) is not None
    with app.test() as t:
        t.send("echo-in-0", "second run")
        out = t.receive("echo-out-0", timeout=TIMEOUT)
        assert out is not None and out.payload == "second run"
        assert [m.payload for m in t.sent("echo-in-0")] == ["second run"]


def test_harness_restores_the_app_afterwards() -> None:
    app = _echo_app()
    seen: list[str] = []
    with app.test() as t:
        assert app._binder_factory is not None
        app.add_observer(lambda destination, record: seen.append(destination))
        assert len(app._observers) == 2
        t.send("echo-in-0", "x")
        assert t.receive("echo-out-0", timeout=TIMEOUT) is not None
    assert app._binder_factory is None
    assert len(app._observers) == 1, "only the harness's own observer is removed"
    assert app.bindings == {}
    assert seen[:2] == ["echo-in-0", "echo-out-0"]


class _TestBinders:
    """A plugin answering the harness's hooks with log binders it counts (registered after
    the built-in ``binders.log``, so pluggy asks it first)."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []
        self.dropped: list[str] = []

    @hookimpl
    def binder_make_test_binder(self, name: str, entry: Any, broker: str) -> Any:
        self.made.append((name, broker))
        return LogBinder(name, LogOptions(broker=broker))

    @hookimpl
    def binder_drop_test_broker(self, broker: str) -> None:
        self.dropped.append(broker)


def test_harness_makes_its_binders_through_the_plugin_hook() -> None:
    manager = plugins.plugin_manager()
    plugin = _TestBinders()
    manager.register(plugin)
    try:
        with _echo_app().test() as t:
            t.send("echo-in-0", "via the hook")
            out = t.receive("echo-out-0", timeout=TIMEOUT)
    finally:
        manager.unregister(plugin)
    assert out is not None and out.payload == "via the hook"
    assert [name for name, _ in plugin.made] == ["local"], "the default binder, swapped"
    assert plugin.dropped == [broker for _, broker in plugin.made], "its private broker dropped"


def test_log_broker_fixture_is_dropped_through_the_hook(log_broker: str) -> None:
    with _echo_app().test(broker=log_broker) as t:
        t.send("echo-in-0", 1)
        assert t.receive("echo-out-0", timeout=TIMEOUT) is not None
    assert Broker.named(log_broker).topic("echo-out-0") is not None, "kept until the test ends"


def test_exception_in_the_body_still_stops_the_app() -> None:
    app = _echo_app()
    with pytest.raises(ZeroDivisionError), app.test():
        _ = 1 / 0
    assert app.bindings == {}


# -- async harness ---------------------------------------------------------------------------


def test_async_send_and_receive() -> None:
    app = App(environ={})
    seen: asyncio.Queue[Message[Any]] = asyncio.Queue()

    @app.function
    async def upper(msg: Message[str]) -> str:
        await seen.put(msg)
        return msg.payload.upper()

    async def scenario() -> None:
        async with app.test() as t:
            await t.send("upper-in-0", "hi", key="k")
            out = await t.receive("upper-out-0", timeout=TIMEOUT)
            assert out is not None and (out.payload, out.key) == ("HI", "k")
            received = await asyncio.wait_for(seen.get(), TIMEOUT)
            assert received.payload == "hi"
            assert [m.payload for m in t.sent("upper-in-0")] == ["hi"]

    asyncio.run(scenario())


def test_async_receive_returns_none_on_timeout() -> None:
    async def scenario() -> None:
        async with _echo_app().test() as t:
            assert await t.receive("nothing-here", timeout=0.05) is None

    asyncio.run(scenario())


def test_async_receive_finds_messages_sent_before_the_call() -> None:
    async def scenario() -> None:
        async with _echo_app().test() as t:
            await t.send("echo-in-0", 1)
            await t.send("echo-in-0", 2)
            first = await t.receive("echo-out-0", timeout=TIMEOUT)
            second = await t.receive("echo-out-0", timeout=TIMEOUT)
            assert [first.payload, second.payload] == [1, 2]  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_async_receive_wakes_when_a_message_arrives() -> None:
    async def scenario() -> None:
        async with _echo_app().test() as t:
            waiting = asyncio.create_task(t.receive("later", timeout=TIMEOUT))
            await asyncio.sleep(0)  # the receive is parked before the send
            await t.send("later", "now")
            out = await waiting
            assert out is not None and out.payload == "now"

    asyncio.run(scenario())


# -- choosing the binder ---------------------------------------------------------------------


def test_unknown_test_binder_is_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BINDER_TEST_BINDER", "nope")
    app = _echo_app()
    with pytest.raises(ConfigError) as info, app.test():
        pass
    assert info.value.path == "BINDER_TEST_BINDER"
    assert info.value.value == "nope"
    assert str(info.value).startswith("BINDER_TEST_BINDER:")
    assert "log" in str(info.value)
    assert app.bindings == {}


def test_test_binder_log_uses_the_apps_own_log_options(
    monkeypatch: pytest.MonkeyPatch, log_broker: str
) -> None:
    monkeypatch.setenv("BINDER_TEST_BINDER", "log")
    app = _echo_app(binders={"local": {"type": "log", "broker": log_broker}})
    with app.test() as t:
        t.send("echo-in-0", "kept")
        assert t.receive("echo-out-0", timeout=TIMEOUT) is not None
    (stored,) = Broker.named(log_broker).read("echo-out-0", 0, 0, 10)
    assert stored.value == b'"kept"'


# -- pytest plugin fixtures ------------------------------------------------------------------


def test_binder_test_fixture_runs_the_app(binder_test: Callable[[App], TestClient]) -> None:
    t = binder_test(_echo_app())
    t.send("echo-in-0", "via fixture")
    out = t.receive("echo-out-0", timeout=TIMEOUT)
    assert out is not None and out.payload == "via fixture"


def test_log_broker_fixture_names_a_fresh_broker(log_broker: str) -> None:
    assert log_broker.startswith("pytest-")
    assert Broker.named(log_broker).topic("anything") is None


def _member_app(broker: str, got: queue.Queue[tuple[str, Any]], member: str) -> App:
    doc = {
        "binder": {
            "binders": {"local": {"type": "log", "broker": broker, "default-partition-count": 2}},
            "bindings": {"work-in-0": {"destination": "jobs", "group": "workers"}},
        }
    }
    app = App(config=doc, environ={})

    @app.consumer
    def work(value: Any) -> None:
        got.put((member, value))

    return app


def test_two_apps_on_a_log_broker_share_a_group(
    monkeypatch: pytest.MonkeyPatch,
    binder_test: Callable[[App], TestClient],
    log_broker: str,
) -> None:
    got: queue.Queue[tuple[str, Any]] = queue.Queue()
    a = binder_test(_member_app(log_broker, got, "a"), broker=log_broker)
    binder_test(_member_app(log_broker, got, "b"), broker=log_broker)
    deliveries: list[tuple[str, Any]] = []
    members: set[str] = set()
    sent = 0
    deadline = time.monotonic() + 5
    while members != {"a", "b"}:  # keep sending until each member has had one
        assert time.monotonic() < deadline, f"only {members} received: {deliveries}"
        a.send("jobs", sent)
        sent += 1
        deliveries.append(got.get(timeout=TIMEOUT))
        members.add(deliveries[-1][0])
    a.send("jobs", "end-1")  # round robin: one sentinel per partition, behind everything sent
    a.send("jobs", "end-2")
    while not {"end-1", "end-2"} <= {value for _, value in deliveries}:
        deliveries.append(got.get(timeout=TIMEOUT))
    values = [value for _, value in deliveries]
    assert sorted(values, key=str) == sorted([*range(sent), "end-1", "end-2"], key=str)
