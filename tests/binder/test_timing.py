"""Time in the core: ``app.send(delay=, ttl=)``, the ``x-delay`` header, expiry, delayed
retries, and ``app.test(clock=ManualClock())`` moving time without sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from binder import App, CapabilityError, ConfigError, ManualClock, Message
from binder.clock import millis_of, seconds_of
from binder.errors import ConversionError
from binder.message import DELAY, DELIVER_AT, EXCEPTION_TYPE, EXPIRES_AT
from binders.log.binder import LogBinder
from binders.log.engine import Broker
from binders.log.options import LogOptions

RELAY = {
    "relay-in-0": {"destination": "in", "group": "g"},
    "relay-out-0": {"destination": "out"},
}


def _relay(bindings: dict[str, Any] | None = None, **consumer: Any) -> App:
    bindings = {name: dict(b) for name, b in (bindings or RELAY).items()}
    if consumer:  # keyword names as YAML keys: retry_mode → retry-mode
        bindings["relay-in-0"]["consumer"] = {k.replace("_", "-"): v for k, v in consumer.items()}
    app = App(config={"binder": {"bindings": bindings}}, environ={})
    app.function(lambda order: order, name="relay")
    return app


def test_a_delay_is_held_until_the_manual_clock_passes_it() -> None:
    clock = ManualClock()
    app = _relay()
    with app.test(clock=clock) as t:
        t.send("in", {"n": 1}, delay=timedelta(days=30))
        t.send("in", {"n": 2}, delay=3600)
        assert t.receive("out", timeout=0.3) is None
        clock.advance(3599.9)
        assert t.receive("out", timeout=0.3) is None, "not one millisecond early"
        clock.advance(0.1)
        second = t.receive("out", timeout=5)
        assert second is not None and second.payload == {"n": 2}
        clock.advance(timedelta(days=30))
        first = t.receive("out", timeout=5)
        assert first is not None and first.payload == {"n": 1}
        assert [m.payload for m in t.sent("in")] == [{"n": 1}, {"n": 2}], "both were sent"


def test_the_function_sees_x_deliver_at_and_not_x_delay() -> None:
    clock = ManualClock(1_000_000)
    app = App(config={"binder": {"bindings": {"sink-in-0": {"destination": "in"}}}}, environ={})
    seen: list[Message[Any]] = []

    @app.consumer
    def sink(message: Message[Any]) -> None:
        seen.append(message)

    with app.test(clock=clock) as t:
        t.send("in", "x", headers={DELAY: "1500"})
        clock.advance(1.5)
        _wait(lambda: bool(seen))
    (message,) = seen
    assert message.headers[DELIVER_AT] == str(1_000_000 * 1000 + 1500)
    assert DELAY not in message.headers


def test_an_output_with_x_delay_is_delayed_too() -> None:
    clock = ManualClock()
    app = App(config={"binder": {"bindings": RELAY}}, environ={})

    @app.function
    def relay(order: dict[str, Any]) -> Message[dict[str, Any]]:
        return Message(order, headers={DELAY: "60000"})

    with app.test(clock=clock) as t:
        t.send("in", {"n": 1})
        t.settle()  # the relay has sent it, due a minute from now
        assert t.receive("out", timeout=0.3) is None
        clock.advance(60)
        out = t.receive("out", timeout=5)
        assert out is not None and out.payload == {"n": 1}
        assert DELIVER_AT in out.headers and DELAY not in out.headers


def test_ttl_expires_on_the_manual_clock_and_the_letter_says_why() -> None:
    clock = ManualClock()
    app = _relay(max_attempts=1)
    with app.test(clock=clock) as t:
        t.send("in", {"n": "late"}, ttl=10, delay=20)  # due after it expired
        t.send("in", {"n": "fresh"}, ttl=10)
        fresh = t.receive("out", timeout=5)
        assert fresh is not None and fresh.payload == {"n": "fresh"}
        assert EXPIRES_AT not in fresh.headers, "an output does not inherit its input's expiry"
        clock.advance(20)
        letter = t.receive("in.g.dlq", timeout=5)
        assert t.receive("out", timeout=0.2) is None
    assert letter is not None and letter.payload == {"n": "late"}
    assert letter.headers[EXCEPTION_TYPE] == "binder.errors.MessageExpired"
    assert EXPIRES_AT not in letter.headers, "a letter does not expire"


def test_producer_ttl_stamps_every_send_of_the_binding() -> None:
    clock = ManualClock(2_000)
    bindings = {
        "relay-in-0": {"destination": "in", "group": "g"},
        "relay-out-0": {"destination": "out", "producer": {"ttl": "90s"}},
    }
    app = _relay(bindings)
    with app.test(clock=clock) as t:
        t.send("in", {"n": 1})
        out = t.receive("out", timeout=5)
    assert out is not None and out.headers[EXPIRES_AT] == str(2_000_000 + 90_000)


def test_an_unreadable_x_expires_at_is_another_programs_and_not_an_expiry() -> None:
    app = _relay()
    with app.test() as t:
        t.send("in", {"n": 1}, headers={EXPIRES_AT: "tomorrow"})
        out = t.receive("out", timeout=5)
    assert out is not None and out.payload == {"n": 1}


def test_delayed_retries_follow_the_manual_clock() -> None:
    clock = ManualClock()
    bindings = {"work-in-0": {"destination": "in", "group": "g"}}
    bindings["work-in-0"]["consumer"] = {  # type: ignore[index]
        "retry-mode": "delayed",
        "max-attempts": 3,
        "back-off-initial-interval": "1m",
    }
    app = App(config={"binder": {"bindings": bindings}}, environ={})
    calls: list[tuple[Any, str]] = []

    @app.consumer
    def work(message: Message[Any]) -> None:
        calls.append((message.payload, message.headers["x-delivery-attempt"]))
        if message.payload == "poison":
            raise RuntimeError("no")

    with app.test(clock=clock) as t:
        t.send("in", "poison", key="k")
        t.send("in", "good", key="k")
        assert t.receive("in", timeout=5) is not None  # what the harness saw sent
        _wait(lambda: len(calls) == 2)
        assert calls == [("poison", "1"), ("good", "1")], "the good one did not wait"
        t.settle()  # the retry is scheduled
        clock.advance(60)
        _wait(lambda: len(calls) == 3)
        t.settle()
        clock.advance(120)
        letter = t.receive("in.g.dlq", timeout=5)
    assert calls[2:] == [("poison", "2"), ("poison", "3")]
    assert letter is not None and letter.headers["x-original-delivery-attempt"] == "3"
    assert letter.headers["x-original-destination"] == "in"


def _wait(done: Any, timeout: float = 5.0) -> None:
    """Until ``done()`` (the app runs on the harness's own thread meanwhile)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- refused: what is certainly a mistake ---------------------------------------------------


def test_a_negative_delay_or_ttl_is_refused_at_the_call() -> None:
    app = _relay()
    with app.test() as t:
        with pytest.raises(ValueError, match="delay must be 0 or more"):
            t.send("in", {"n": 1}, delay=-1)
        with pytest.raises(ValueError, match="ttl must be more than 0"):
            t.send("in", {"n": 1}, ttl=0)
        with pytest.raises(TypeError, match="seconds"):
            t.send("in", {"n": 1}, delay="5s")  # type: ignore[arg-type]


def test_an_unreadable_x_delay_fails_the_send_naming_the_header() -> None:
    app = _relay()
    with app.test() as t, pytest.raises(ConversionError, match="x-delay"):
        t.send("in", {"n": 1}, headers={DELAY: "soon"})


_BROKERS: list[str] = []


def _without_delays(name: str, entry: Any) -> LogBinder:
    """A log binder that does not declare delayed_delivery."""
    _BROKERS.append(f"nodelay-{uuid.uuid4().hex}")
    binder = LogBinder(name, LogOptions(broker=_BROKERS[-1]))
    binder.capabilities = dataclasses.replace(binder.capabilities, delayed_delivery=False)
    return binder


def test_a_delay_to_a_binder_without_delayed_delivery_is_refused() -> None:
    app = _relay()
    app.use_binder_factory(_without_delays)

    async def scenario() -> None:
        async with app:
            await app.send("in", {"n": 1}, delay=1)

    with pytest.raises(CapabilityError, match="delayed_delivery"):
        asyncio.run(scenario())


def test_delayed_retries_need_a_group_and_delayed_delivery() -> None:
    bindings = {"relay-in-0": {"destination": "in"}, "relay-out-0": {"destination": "out"}}
    app = _relay(bindings, retry_mode="delayed")
    with pytest.raises(ConfigError, match=r"relay-in-0\.consumer\.retry-mode.*group"):
        asyncio.run(app.start())
    asyncio.run(app.stop())
    app = _relay(retry_mode="delayed")
    app.use_binder_factory(_without_delays)
    with pytest.raises(CapabilityError, match="delayed_delivery"):
        asyncio.run(app.start())
    asyncio.run(app.stop())


def test_an_unknown_retry_mode_or_expired_value_fails_at_load() -> None:
    with pytest.raises(ConfigError, match="retry-mode"):
        _relay(retry_mode="later")
    with pytest.raises(ConfigError, match="expired"):
        _relay(expired="ignore")


def test_seconds_and_millis_of_durations() -> None:
    assert seconds_of(timedelta(minutes=2)) == 120
    assert millis_of(0.0015) == 2, "rounded up: a delay is never shortened"
    assert millis_of(timedelta(days=30)) == 30 * 86_400_000
    with pytest.raises(ValueError, match="finite"):
        seconds_of(float("nan"))


def teardown_module() -> None:
    for name in _BROKERS:
        Broker.forget(name)


def test_settle_waits_for_a_chain_of_bindings_and_names_one_that_does_not_finish() -> None:
    app = App(
        config={
            "binder": {
                "bindings": {
                    "slow-in-0": {"destination": "in", "group": "g"},
                    "slow-out-0": {"destination": "mid"},
                    "sink-in-0": {"destination": "mid", "group": "g"},
                }
            }
        },
        environ={},
    )
    seen: list[Any] = []
    release = threading.Event()

    @app.function
    def slow(n: int) -> int:
        time.sleep(0.2)
        return n

    @app.consumer
    def sink(n: int) -> None:
        if n < 0:
            release.wait(10)
        seen.append(n)

    with app.test() as t:
        t.send("in", 1)
        t.settle()
        assert seen == [1], "settled only once the sink had it"
        t.send("mid", -1)
        with pytest.raises(TimeoutError, match=r"sink-in-0 \(1 left\)"):
            t.settle(timeout=0.3)
        release.set()
        t.settle()
        assert seen == [1, -1]
        app.binding("sink-in-0").pause()
        t.send("mid", 2)
        t.settle()  # a paused binding is not waited for
        assert seen == [1, -1]
