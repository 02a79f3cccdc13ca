"""binder.app: the App contract end to end, on the in-memory test harness."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from binder import App, BinderError, BindingState, ConfigError, Message
from binder.errors import BackendError
from binder.partitioning import select_partition
from binder.spi import ConsumerSpec
from binder.testing.conformance.support import IdleListener
from binders.log.binder import LOG_BINDER_TYPE
from binders.log.engine import Broker

TIMEOUT = 2.0

ORDERS_DOC: dict[str, Any] = {
    "binder": {
        "bindings": {
            "uppercase-in-0": {"destination": "orders"},
            "uppercase-out-0": {"destination": "shipments"},
        }
    }
}


def _uppercase_app(app: App) -> App:
    @app.function
    def uppercase(order: dict) -> dict:
        return {**order, "status": "UPPER"}

    return app


def _check_uppercase(app: App) -> None:
    with app.test() as t:
        t.send("uppercase-in-0", {"id": 1})
        out = t.receive("uppercase-out-0", timeout=TIMEOUT)
        assert out is not None
        assert out.payload == {"id": 1, "status": "UPPER"}
        assert out.destination == "shipments"
        assert [m.payload for m in t.sent("orders")] == [{"id": 1}]


# -- configuration sources -------------------------------------------------------------------


def test_app_from_config_document() -> None:
    _check_uppercase(_uppercase_app(App(config=ORDERS_DOC)))


def test_app_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "application.yml"
    path.write_text(
        textwrap.dedent(
            """\
            binder:
              bindings:
                uppercase-in-0:
                  destination: orders
                uppercase-out-0:
                  destination: shipments
            """
        )
    )
    _check_uppercase(_uppercase_app(App.from_yaml(path, environ={})))


def test_app_from_environment_only() -> None:
    environ = {
        "BINDER_BINDINGS__UPPERCASE_IN_0__DESTINATION": "orders",
        "BINDER_BINDINGS__UPPERCASE_OUT_0__DESTINATION": "shipments",
    }
    app = _uppercase_app(App(environ=environ))
    assert app.config.binding("uppercase-in-0").destination == "orders"  # type: ignore[union-attr]
    _check_uppercase(app)


def test_app_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINDER_BINDINGS__UPPERCASE_IN_0__DESTINATION", "orders")
    monkeypatch.setenv("BINDER_BINDINGS__UPPERCASE_OUT_0__DESTINATION", "shipments")
    _check_uppercase(_uppercase_app(App()))


def test_environment_overrides_the_document() -> None:
    environ = {"BINDER_BINDINGS__UPPERCASE_OUT_0__DESTINATION": "elsewhere"}
    app = _uppercase_app(App(config=ORDERS_DOC, environ=environ))
    with app.test() as t:
        t.send("orders", {"id": 2})
        out = t.receive("elsewhere", timeout=TIMEOUT)
        assert out is not None and out.payload["status"] == "UPPER"


def test_bad_configuration_fails_at_construction() -> None:
    doc = {"binder": {"bindings": {"x-in-0": {"consumer": {"max-attempts": 0}}}}}
    with pytest.raises(ConfigError, match=r"binder\.bindings\.x-in-0\.consumer\.max-attempts"):
        App(config=doc)


# -- function kinds --------------------------------------------------------------------------


def test_binding_names_default_to_destinations() -> None:
    app = App(environ={})

    @app.function
    def echo(value: Any) -> Any:
        return value

    with app.test() as t:
        t.send("echo-in-0", "hi", key="k", headers={"source": "api"})
        out = t.receive("echo-out-0", timeout=TIMEOUT)
        assert out is not None
        assert (out.payload, out.key, out.headers["source"]) == ("hi", "k", "api")


def test_consumer_receives_the_whole_message() -> None:
    app = App(environ={})
    received: queue.Queue[Message[Any]] = queue.Queue()

    @app.consumer
    def audit(msg: Message[dict]) -> None:
        received.put(msg)

    with app.test() as t:
        t.send("audit-in-0", {"id": 3}, key="c-42", headers={"source": "api"})
        msg = received.get(timeout=TIMEOUT)
    assert msg.payload == {"id": 3}
    assert msg.key == "c-42"
    assert msg.headers["source"] == "api"
    assert msg.headers["x-delivery-attempt"] == "1"
    assert msg.destination == "audit-in-0"
    assert msg.partition == 0 and msg.offset == 0


def test_supplier_is_polled_on_its_interval() -> None:
    app = App(environ={})
    counter = iter(range(1000))

    @app.supplier(interval=0.01)
    def ticks() -> dict:
        return {"n": next(counter)}

    with app.test() as t:
        first = [t.receive("ticks-out-0", timeout=TIMEOUT) for _ in range(3)]
    assert [m.payload["n"] for m in first if m is not None] == [0, 1, 2]


def test_supplier_returning_none_sends_nothing_and_message_sets_key() -> None:
    app = App(environ={})
    values = iter([None, Message({"n": 1}, key="k", headers={"h": "v"})])

    @app.supplier(interval=0.01)
    def maybe() -> Any:
        return next(values, None)

    with app.test() as t:
        out = t.receive("maybe-out-0", timeout=TIMEOUT)
        assert out is not None
        assert (out.payload, out.key, out.headers["h"]) == ({"n": 1}, "k", "v")
        assert len(t.sent("maybe-out-0")) == 1


def test_async_function() -> None:
    app = App(environ={})

    @app.function
    async def double(value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    with app.test() as t:
        t.send("double-in-0", 21)
        out = t.receive("double-out-0", timeout=TIMEOUT)
        assert out is not None and out.payload == 42


def test_function_returning_none_sends_nothing() -> None:
    app = App(environ={})

    @app.function
    def only_even(value: int) -> int | None:
        return value if value % 2 == 0 else None

    with app.test() as t:
        for n in (1, 2, 3, 4):
            t.send("only_even-in-0", n)
        assert t.receive("only_even-out-0", timeout=TIMEOUT).payload == 2  # type: ignore[union-attr]
        assert t.receive("only_even-out-0", timeout=TIMEOUT).payload == 4  # type: ignore[union-attr]
        assert [m.payload for m in t.sent("only_even-out-0")] == [2, 4]


def test_composition_binds_as_joined_names() -> None:
    app = App(config={"binder": {"function-definition": "a|b"}}, environ={})

    @app.function
    def a(value: dict) -> dict:
        return {**value, "a": True}

    @app.function
    async def b(value: dict) -> dict:
        return {**value, "b": True}

    with app.test() as t:
        assert set(app.bindings) == {"ab-in-0"}
        t.send("ab-in-0", {"id": 1})
        out = t.receive("ab-out-0", timeout=TIMEOUT)
        assert out is not None and out.payload == {"id": 1, "a": True, "b": True}


def test_supplier_composed_with_function() -> None:
    app = App(config={"binder": {"function-definition": "source|shout"}}, environ={})

    @app.supplier(interval=0.01)
    def source() -> str:
        return "hi"

    @app.function
    def shout(text: str) -> str:
        return text.upper() + "!"

    with app.test() as t:
        out = t.receive("sourceshout-out-0", timeout=TIMEOUT)
        assert out is not None and out.payload == "HI!"


def test_only_the_defined_functions_are_bound() -> None:
    app = App(config={"binder": {"function-definition": "kept"}}, environ={})
    app.function(lambda v: v, name="kept")
    app.function(lambda v: v, name="ignored")
    with app.test():
        assert set(app.bindings) == {"kept-in-0"}


# -- pydantic --------------------------------------------------------------------------------


class Order(BaseModel):
    id: int
    customer: str


class Shipment(BaseModel):
    order_id: int
    to: str


def test_pydantic_model_in_and_out() -> None:
    app = App(environ={})

    @app.function
    def ship(order: Order) -> Shipment:
        assert isinstance(order, Order)
        return Shipment(order_id=order.id, to=order.customer)

    with app.test() as t:
        t.send("ship-in-0", Order(id=5, customer="ann"))
        out = t.receive("ship-out-0", timeout=TIMEOUT)
        assert out is not None and out.payload == {"order_id": 5, "to": "ann"}


def test_invalid_model_payload_is_dead_lettered() -> None:
    doc = {"binder": {"bindings": {"ship-in-0": {"group": "g"}}}}
    app = App(config=doc, environ={})

    @app.function
    def ship(order: Order) -> Order:
        return order

    with app.test() as t:
        t.send("ship-in-0", {"id": "not a number"})
        letter = t.receive("ship-in-0.g.dlq", timeout=TIMEOUT)
        assert letter is not None
        assert letter.headers["x-exception-type"] == "binder.errors.ConversionError"
        assert letter.headers["x-delivery-attempt"] == "1"


# -- the loop is never blocked ---------------------------------------------------------------


def test_sync_handler_does_not_block_the_loop() -> None:
    app = App(environ={})
    beats: list[float] = []
    during: queue.Queue[int] = queue.Queue()

    @app.supplier(interval=0.01)
    async def heartbeat() -> None:
        beats.append(time.monotonic())

    @app.function
    def slow(value: int) -> int:
        before = len(beats)
        time.sleep(0.3)
        during.put(len(beats) - before)
        return value

    with app.test() as t:
        t.send("slow-in-0", 1)
        assert t.receive("slow-out-0", timeout=TIMEOUT) is not None
    assert during.get(timeout=TIMEOUT) >= 5


# -- app.send --------------------------------------------------------------------------------


def test_send_before_start_raises() -> None:
    app = App(environ={})
    with pytest.raises(BinderError, match="not running"):
        asyncio.run(app.send("anywhere", {"x": 1}))


def test_send_to_a_binding_uses_its_destination_and_settings() -> None:
    doc = {
        "binder": {
            "bindings": {
                "outbound": {
                    "destination": "real-destination",
                    "content-type": "text/plain",
                    "producer": {"partition-count": 3},
                }
            }
        }
    }
    app = App(config=doc, environ={})

    async def scenario() -> None:
        async with app.test() as t:
            await app.send("outbound", "hello", key="k", headers={"n": 1})
            out = await t.receive("real-destination", timeout=TIMEOUT)
            assert out is not None
            assert out.payload == "hello"
            assert out.headers == {"n": "1", "contentType": "text/plain"}
            assert out.partition is not None and 0 <= out.partition < 3
            assert t.sent("outbound") == [out]

    asyncio.run(scenario())


def test_send_to_a_bare_destination() -> None:
    app = App(environ={})

    async def scenario() -> None:
        async with app.test() as t:
            await app.send("somewhere", {"x": 1}, key=7)
            out = await t.receive("somewhere", timeout=TIMEOUT)
            assert out is not None
            assert (out.payload, out.key) == ({"x": 1}, "7")
            assert out.headers == {"contentType": "application/json"}

    asyncio.run(scenario())


def test_send_to_a_function_output_binding() -> None:
    doc = {"binder": {"bindings": {"up-out-0": {"destination": "ups"}}}}
    app = App(config=doc, environ={})
    app.function(lambda v: v, name="up")

    async def scenario() -> None:
        async with app.test() as t:
            await app.send("up-out-0", "direct")
            out = await t.receive("ups", timeout=TIMEOUT)
            assert out is not None and out.payload == "direct"

    asyncio.run(scenario())


def test_many_destinations_keep_the_producer_cache_bounded() -> None:
    app = App(environ={})

    async def scenario() -> None:
        async with app.test() as t:
            await asyncio.gather(*(app.send(f"dest-{n}", n) for n in range(2000)))
            assert len(app._send_outputs) <= 128
            for n in (0, 1, 999, 1999):
                assert [m.payload for m in t.sent(f"dest-{n}")] == [n]
            await app.send("dest-0", "again")  # evicted earlier: made anew
            assert [m.payload for m in t.sent("dest-0")] == [0, "again"]
            assert len(app._send_outputs) <= 128

    asyncio.run(scenario())


def test_concurrent_sends_to_one_destination_all_arrive() -> None:
    app = App(environ={})

    async def scenario() -> None:
        async with app.test() as t:
            await asyncio.gather(*(app.send("many", n) for n in range(500)))
            assert sorted(m.payload for m in t.sent("many")) == list(range(500))

    asyncio.run(scenario())


# -- start-up validation ---------------------------------------------------------------------


def test_binding_for_a_missing_function_fails_at_start_naming_the_key() -> None:
    doc = {"binder": {"bindings": {"uppercse-in-0": {"destination": "orders"}}}}
    app = _uppercase_app(App(config=doc, environ={}))
    with pytest.raises(ConfigError) as info, app.test():
        pass
    assert info.value.path == "binder.bindings.uppercse-in-0"
    assert "did you mean 'uppercase'" in str(info.value)
    assert str(info.value).startswith("binder.bindings.uppercse-in-0:")


def test_unknown_function_in_definition_fails_at_start() -> None:
    app = App(config={"binder": {"function-definition": "ghost"}}, environ={})
    with pytest.raises(ConfigError, match=r"^binder\.function-definition: .*'ghost'"), app.test():
        pass


def test_failed_start_leaves_the_app_stopped() -> None:
    app = App(config={"binder": {"function-definition": "ghost"}}, environ={})
    with pytest.raises(ConfigError), app.test():
        pass
    assert app.bindings == {}
    with pytest.raises(BinderError, match="not running"):
        asyncio.run(app.send("x", 1))


class _JoiningBinder:
    """An in-memory log binder whose consumers take ``delay`` to join (as a Kafka group
    join does), failing for ``fail``; it counts the consumers left open."""

    def __init__(self, name: str, delay: float, fail: str | None = None) -> None:
        self._binder = LOG_BINDER_TYPE.create(
            name, LOG_BINDER_TYPE.options.model_validate({"broker": f"joins-{id(self)}"})
        )
        self._delay, self._fail = delay, fail
        self.open: set[Any] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._binder, name)

    async def consumer(self, spec: Any, listener: Any) -> Any:
        if spec.destination == self._fail:
            raise BackendError(f"cannot join on {spec.destination}")
        await asyncio.sleep(self._delay)
        consumer = await self._binder.consumer(spec, listener)
        self.open.add(consumer)
        close = consumer.close

        async def closed() -> None:
            self.open.discard(consumer)
            await close()

        consumer.close = closed
        return consumer


def _three_consumers() -> App:
    bindings = {f"{n}-in-0": {"destination": n, "group": "g"} for n in ("a", "b", "c")}
    app = App(config={"binder": {"bindings": bindings}}, environ={})
    for name in ("a", "b", "c"):
        app.consumer(lambda value: None, name=name)
    return app


def test_input_bindings_start_concurrently() -> None:
    app = _three_consumers()
    app.use_binder_factory(lambda name, entry: _JoiningBinder(name, delay=0.4))

    async def scenario() -> float:
        started = time.perf_counter()
        async with app:
            return time.perf_counter() - started

    assert asyncio.run(scenario()) < 1.0, "three 0.4 s joins one after another take 1.2 s"


def test_a_binding_failing_to_start_stops_the_others_and_raises_its_error() -> None:
    app = _three_consumers()
    binders: list[_JoiningBinder] = []

    def make(name: str, entry: Any) -> _JoiningBinder:
        binders.append(_JoiningBinder(name, delay=0.2, fail="b"))
        return binders[-1]

    app.use_binder_factory(make)

    async def scenario() -> None:
        async with app:
            pass

    with pytest.raises(BackendError, match="cannot join on b"):
        asyncio.run(scenario())
    assert app.bindings == {}
    assert [b.open for b in binders] == [set()], "no consumer is left open"


class _SlowProvisioning(_JoiningBinder):
    """Connecting and provisioning take a while, as with Kafka; provisions are counted."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(name, delay)
        self.provisioned = 0

    async def start(self) -> None:
        await asyncio.sleep(0.05)
        await self._binder.start()

    async def provision(self, *args: Any, **kwargs: Any) -> int:
        self.provisioned += 1
        await asyncio.sleep(0.05)
        return await self._binder.provision(*args, **kwargs)


def test_first_sends_to_a_destination_open_it_once_and_keep_call_order() -> None:
    app = App(config={"binder": {"bindings": {}}}, environ={})
    made: list[_SlowProvisioning] = []
    app.use_binder_factory(lambda name, entry: made.append(_SlowProvisioning(name, 0)) or made[-1])

    async def scenario() -> list[Any]:
        async with app:
            await asyncio.gather(*(app.send("fresh", n, key="k") for n in range(50)))
            consumer = await made[0].consumer(ConsumerSpec("fresh", "reader"), IdleListener())
            records = await consumer.fetch()
            await consumer.close()
            return [json.loads(r.value) for r in records]

    assert asyncio.run(scenario()) == list(range(50))
    assert len(made) == 1, "one binder started"
    assert made[0].provisioned == 1, "one output opened, not one per waiting send"


# -- runtime control -------------------------------------------------------------------------


def _control_app() -> tuple[App, asyncio.Queue[Any], asyncio.Queue[Any]]:
    doc = {
        "binder": {
            "bindings": {
                "audit-in-0": {"destination": "events", "group": "audit"},
                "watch-in-0": {"destination": "events", "group": "watch"},
            }
        }
    }
    app = App(config=doc, environ={})
    audited: asyncio.Queue[Any] = asyncio.Queue()
    watched: asyncio.Queue[Any] = asyncio.Queue()

    @app.consumer
    async def audit(value: Any) -> None:
        await audited.put(value)

    @app.consumer
    async def watch(value: Any) -> None:
        await watched.put(value)

    return app, audited, watched


async def _wait_for(q: asyncio.Queue[Any], expected: Any) -> None:
    assert await asyncio.wait_for(q.get(), TIMEOUT) == expected


def test_binding_pause_and_resume() -> None:
    app, audited, watched = _control_app()

    async def scenario() -> None:
        async with app.test() as t:
            binding = app.binding("audit-in-0")
            assert binding.state is BindingState.RUNNING
            binding.pause()
            assert binding.state is BindingState.PAUSED
            await t.send("events", "while-paused")
            await t.send("events", "sentinel")
            await _wait_for(watched, "while-paused")
            await _wait_for(watched, "sentinel")  # the unpaused group got past both
            assert audited.empty()
            binding.resume()
            assert binding.state is BindingState.RUNNING
            await _wait_for(audited, "while-paused")
            await _wait_for(audited, "sentinel")

    asyncio.run(scenario())


def test_binding_stop_and_start_resume_from_the_group_position() -> None:
    app, audited, watched = _control_app()

    async def scenario() -> None:
        async with app.test() as t:
            binding = app.binding("audit_in_0")  # '-' and '_' alike
            await t.send("events", "before")
            await _wait_for(audited, "before")
            await binding.stop()
            assert binding.state is BindingState.STOPPED
            await binding.stop()  # idempotent
            await t.send("events", "while-stopped")
            await _wait_for(watched, "before")
            await _wait_for(watched, "while-stopped")
            assert audited.empty()
            await binding.start()
            assert binding.state is BindingState.RUNNING
            await _wait_for(audited, "while-stopped")
            assert app.states() == {"audit-in-0": "running", "watch-in-0": "running"}

    asyncio.run(scenario())


def test_supplier_binding_pause_and_resume() -> None:
    app = App(environ={})

    @app.supplier(interval=0.01)
    def ticks() -> str:
        return "tick"

    async def scenario() -> None:
        async with app.test() as t:
            binding = app.binding("ticks-out-0")
            assert await t.receive("ticks-out-0", timeout=TIMEOUT) is not None
            binding.pause()
            assert binding.state is BindingState.PAUSED
            binding.resume()
            assert binding.state is BindingState.RUNNING
            before = len(t.sent("ticks-out-0"))
            while len(t.sent("ticks-out-0")) <= before:
                assert await t.receive("ticks-out-0", timeout=TIMEOUT) is not None
            await binding.stop()
            assert binding.state is BindingState.STOPPED

    asyncio.run(scenario())


def test_unknown_binding_is_key_error_listing_running_ones() -> None:
    app = App(environ={})
    app.consumer(lambda v: None, name="audit")
    with app.test(), pytest.raises(KeyError, match="audit-in-0"):
        app.binding("nope")


def test_bindings_are_gone_after_stop() -> None:
    app = App(environ={})
    app.consumer(lambda v: None, name="audit")
    with app.test():
        assert set(app.states()) == {"audit-in-0"}
    assert app.bindings == {}


# -- app.run() -------------------------------------------------------------------------------

RUN_SCRIPT = """
import logging, sys, time
from binder import App
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
app = App(config={"binder": {"bindings": {
    "source-out-0": {"destination": "jobs"},
    "work-in-0": {"destination": "jobs", "group": "workers"},
}}}, environ={})
jobs = iter(["job-1"])

@app.supplier(interval=0.01)
def source():
    return next(jobs, None)

@app.consumer
def work(job: str) -> None:
    print("started", job, flush=True)
    time.sleep(0.3)
    print("finished", job, flush=True)

app.run()
print("returned", flush=True)
"""


def test_run_drains_in_flight_work_and_exits_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(15, proc.kill)  # a hung child fails the test, never blocks it
    watchdog.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "started job-1\n"  # blocks until the handler runs
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout == "finished job-1\nreturned\n"
    assert "running: source-out-0, work-in-0" in stderr
    assert "draining" in stderr


# -- retries and dead letters ----------------------------------------------------------------


class Flaky(Exception):
    pass


def _retry_doc(**consumer: Any) -> dict[str, Any]:
    options = {"back-off-initial-interval": 0.01, "back-off-max-interval": 0.02, **consumer}
    return {"binder": {"bindings": {"work-in-0": {"group": "g", "consumer": options}}}}


def test_failed_message_is_retried_until_it_succeeds() -> None:
    app = App(config=_retry_doc(**{"max-attempts": 3}), environ={})
    attempts: list[str] = []

    @app.function
    def work(msg: Message[int]) -> int:
        attempts.append(msg.headers["x-delivery-attempt"])
        if len(attempts) < 3:
            raise Flaky("not yet")
        return msg.payload

    with app.test() as t:
        t.send("work-in-0", 9)
        out = t.receive("work-out-0", timeout=TIMEOUT)
        assert out is not None and out.payload == 9
    assert attempts == ["1", "2", "3"]


def test_exhausted_retries_dead_letter_and_later_messages_still_flow() -> None:
    app = App(config=_retry_doc(**{"max-attempts": 2}), environ={})

    @app.function
    def work(value: int) -> int:
        if value < 0:
            raise Flaky(f"negative: {value}")
        return value

    with app.test() as t:
        t.send("work-in-0", -1, key="k", headers={"source": "api"})
        t.send("work-in-0", 1, key="k")
        out = t.receive("work-out-0", timeout=TIMEOUT)
        assert out is not None and out.payload == 1
        letter = t.receive("work-in-0.g.dlq", timeout=TIMEOUT)
    assert letter is not None
    assert (letter.payload, letter.key) == (-1, "k")
    assert letter.headers["source"] == "api"
    assert letter.headers["x-exception-type"] == f"{Flaky.__module__}.Flaky"
    assert letter.headers["x-exception-message"] == "negative: -1"
    assert letter.headers["x-original-destination"] == "work-in-0"
    assert letter.headers["x-original-group"] == "g"
    assert letter.headers["x-original-partition"] == "0"
    assert letter.headers["x-original-offset"] == "0"
    assert letter.headers["x-delivery-attempt"] == "2"


def test_non_retryable_exception_is_dead_lettered_after_one_attempt() -> None:
    doc = _retry_doc(**{"max-attempts": 5, "retryable-exceptions": {"Flaky": False}})
    app = App(config=doc, environ={})
    calls: list[int] = []

    @app.function
    def work(value: int) -> int:
        calls.append(value)
        raise Flaky("permanent")

    with app.test() as t:
        t.send("work-in-0", 1)
        letter = t.receive("work-in-0.g.dlq", timeout=TIMEOUT)
        assert letter is not None and letter.headers["x-delivery-attempt"] == "1"
    assert calls == [1]


# -- running without the harness -------------------------------------------------------------


def test_async_with_app_on_a_named_broker(log_broker: str) -> None:
    doc = {"binder": {"binders": {"local": {"type": "log", "broker": log_broker}}}}
    app = App(config=doc, environ={})
    seen: asyncio.Queue[Any] = asyncio.Queue()

    @app.consumer
    async def audit(value: Any) -> None:
        await seen.put(value)

    async def scenario() -> None:
        async with app:
            await app.start()  # idempotent
            await app.send("audit-in-0", {"id": 1})
            assert await asyncio.wait_for(seen.get(), TIMEOUT) == {"id": 1}
        await app.stop()  # idempotent

    asyncio.run(scenario())
    (stored,) = Broker.named(log_broker).read("audit-in-0", 0, 0, 10)
    assert stored.value == b'{"id":1}'


def test_key_expression_on_output_sees_the_input_key_as_text() -> None:
    doc = {
        "binder": {
            "bindings": {
                "echo-out-0": {
                    "producer": {"partition-key-expression": 'key + "-x"', "partition-count": 4}
                }
            }
        }
    }
    app = App(config=doc, environ={})
    app.function(lambda value: value, name="echo")
    with app.test() as t:
        t.send("echo-in-0", {"id": 1}, key="c-42")
        out = t.receive("echo-out-0", timeout=TIMEOUT)
        assert out is not None
        assert (out.key, out.partition) == ("c-42", select_partition(b"c-42-x", 4))
