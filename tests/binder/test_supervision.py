"""Supervision: nothing a binding meets ends it silently.

Refused sends and commits are injected at the SPI boundary around the real
in-memory log (``binder.testing.conformance.failures.Faults``); the consumer
failures are real: a broker closed under its members, a damaged durable log.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from binder import App, BindingState, Message, plugins
from binder.bindings import InputBinding
from binder.errors import BackendError
from binder.message import EXCEPTION_TYPE
from binder.spi import (
    Binder,
    ConsumerSpec,
    InboundRecord,
    OutboundRecord,
    ProducerSpec,
    RebalanceListener,
)
from binder.testing.conformance.failures import Faults
from binder.testing.conformance.support import IdleListener, Inbox, fetch_records
from binders.log import LogBinder, LogOptions
from binders.log.engine import Broker

FAST_RETRY = {"max-attempts": 2, "back-off-initial-interval": 0.01}


@pytest.fixture
def broker() -> Any:
    name = f"supervision-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)


def _app(broker: str, bindings: dict[str, Any], **section: Any) -> App:
    doc = {"binders": {"local": {"type": "log", "broker": broker}}, "bindings": bindings}
    return App(config={"binder": {**doc, **section}}, environ={})


def _wrapped(app: App, wrap: Any) -> App:
    kind = plugins.binder_types()["log"]
    app.use_binder_factory(lambda name, entry: wrap(kind.create(name, entry.options)))
    return app


async def _read_after(broker: str, dest: str, group: str) -> bytes:
    """Send a witness and read what ``group`` reads first: everything before it was
    committed when the witness comes first."""
    binder = LogBinder("raw", LogOptions(broker=broker))
    await binder.start()
    producer = await binder.producer(ProducerSpec(dest))
    await producer.send_batch([OutboundRecord(b'"witness"', partition=0)])
    consumer = await binder.consumer(ConsumerSpec(dest, group), IdleListener())
    try:
        return (await fetch_records(consumer, 1))[0].value
    finally:
        await consumer.close()
        await binder.close()


def test_refused_send_with_two_lanes_is_dead_lettered_and_the_partition_commits(
    broker: str,
) -> None:
    dest, group = f"in-{uuid.uuid4().hex[:6]}", "g"
    out = f"{dest}-out"
    faults = Faults(lambda d, r: d == out and b"poison" in r.value)
    app = _wrapped(
        _app(
            broker,
            {
                "relay-in-0": {
                    "destination": dest,
                    "group": group,
                    "consumer": {**FAST_RETRY, "concurrency": 2},
                },
                "relay-out-0": {"destination": out},
                "inspect-in-0": {"destination": f"{dest}.{group}.dlq", "group": "i"},
            },
        ),
        faults.wrap,
    )
    handled: Inbox[Any] = Inbox()
    letters: Inbox[Message[Any]] = Inbox()

    @app.function
    async def relay(payload: str) -> str:
        handled.add(payload)
        return payload

    @app.consumer
    async def inspect(message: Message[Any]) -> None:
        letters.add(message)

    async def scenario() -> tuple[BindingState, list[Any], bytes]:
        async with app:
            for n in range(20):
                await app.send(dest, "poison" if n == 5 else f"m{n}", key=f"k{n % 4}")
            await letters.wait_count(1)
            await handled.wait_until(
                lambda items: {f"m{n}" for n in range(6, 20)} <= set(items), "m6..m19"
            )
            binding = app.binding("relay-in-0")
            await binding.on_revoked({0})  # nothing left pending: a rebalance would not wait
            state = binding.state
        return state, letters.items, await _read_after(broker, dest, group)

    state, letters_seen, first_after = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert state is BindingState.RUNNING
    assert letters_seen[0].headers[EXCEPTION_TYPE] == "binder.errors.BackendError"
    assert first_after == b'"witness"', "every message was committed, the refused one too"


class _RefusingCommits:
    """A consumer whose first ``refusals`` commits raise, as a backend refusing them."""

    def __init__(self, inner: Any, refusals: int) -> None:
        self._inner, self.refusals = inner, refusals

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise BackendError("commit refused (injected)")
        await self._inner.commit(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _WrappedConsumers:
    """Wraps a binder so that each consumer it makes is ``make(consumer)``; counts them."""

    def __init__(self, make: Any) -> None:
        self.make, self.opened = make, 0

    def wrap(self, binder: Binder) -> Binder:
        outer = self

        class Wrapped:
            name, capabilities = binder.name, binder.capabilities

            def __getattr__(self, attr: str) -> Any:
                return getattr(binder, attr)

            async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> Any:
                outer.opened += 1
                return outer.make(await binder.consumer(spec, listener))

        return Wrapped()  # type: ignore[return-value]


def test_a_refused_commit_is_retried(broker: str, caplog: pytest.LogCaptureFixture) -> None:
    dest = f"in-{uuid.uuid4().hex[:6]}"
    app = _wrapped(
        _app(broker, {"sink-in-0": {"destination": dest, "group": "g"}}),
        _WrappedConsumers(lambda inner: _RefusingCommits(inner, 2)).wrap,
    )
    inbox: Inbox[Any] = Inbox()

    @app.consumer
    async def sink(payload: Any) -> None:
        inbox.add(payload)

    async def scenario() -> tuple[BindingState, bytes]:
        async with app:
            await app.send(dest, "one")
            await inbox.wait_for("one")
            state = app.binding("sink-in-0").state
        return state, await _read_after(broker, dest, "g")

    with caplog.at_level(logging.WARNING, "binder.bindings"):
        state, first_after = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert state is BindingState.RUNNING
    assert first_after == b'"witness"', "the commit went through on its third try"
    assert caplog.text.count("commit failed") == 2


def test_a_binding_whose_broker_closed_restarts_on_a_new_one(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    dest = f"in-{uuid.uuid4().hex[:6]}"
    app = _app(broker, {"sink-in-0": {"destination": dest, "group": "g"}})
    inbox: Inbox[Any] = Inbox()

    @app.consumer
    async def sink(payload: Any) -> None:
        inbox.add(payload)

    async def scenario() -> tuple[list[BindingState], int, Any]:
        async with app:
            binding = app.binding("sink-in-0")
            assert isinstance(binding, InputBinding)
            await app.send(dest, "before")
            await inbox.wait_for("before")
            Broker.forget(broker)  # the backend goes away under its members
            states = [await _state_after(binding, BindingState.FAILED)]
            states.append(await _state_after(binding, BindingState.RUNNING))
            sender = _app(broker, {})
            async with sender:
                await sender.send(dest, "after")
            await inbox.wait_for("after")
            return states, binding.restarts, binding.error

    with caplog.at_level(logging.WARNING, "binder.bindings"):
        states, restarts, error = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert states == [BindingState.FAILED, BindingState.RUNNING]
    assert restarts == 1 and error is None
    assert "the consumer closed while the binding ran" in caplog.text
    assert "restarting in 1 s" in caplog.text


async def _state_after(binding: InputBinding, wanted: BindingState, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while binding.state is not wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return binding.state


class _FetchFails:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def fetch(self) -> list[InboundRecord]:
        raise BackendError("backend unreachable (injected)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_binding_that_keeps_failing_restarts_with_a_growing_back_off(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    dest = f"in-{uuid.uuid4().hex[:6]}"
    failing = _WrappedConsumers(_FetchFails)  # a backend that stays away
    app = _wrapped(_app(broker, {"sink-in-0": {"destination": dest, "group": "g"}}), failing.wrap)

    @app.consumer
    def sink(payload: Any) -> None:
        pass

    async def scenario() -> tuple[int, BindingState, Any]:
        async with app:
            binding = app.binding("sink-in-0")
            assert isinstance(binding, InputBinding)
            deadline = time.monotonic() + 10
            while binding.restarts < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await _state_after(binding, BindingState.FAILED)
            return binding.restarts, binding.state, binding.error

    with caplog.at_level(logging.WARNING, "binder.bindings"):
        restarts, state, error = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert restarts >= 2 and state is BindingState.FAILED
    assert isinstance(error, BackendError) and "unreachable" in str(error)
    assert "restarting in 1 s" in caplog.text and "restarting in 2 s" in caplog.text
    assert failing.opened == restarts + 1


APP_MODULE = """
from binder import App
from binders.log.engine import Broker

app = App()


@app.supplier(interval=0.05)
def orders():
    return {"id": 1}


@app.consumer
def sink(payload):
    print("handled", payload, flush=True)
    Broker.forget("exit-test")  # the backend goes away under the binding
"""


def test_on_binding_failure_exit_makes_binder_run_exit_with_status_1(tmp_path: Path) -> None:
    (tmp_path / "failing_app.py").write_text(APP_MODULE)
    (tmp_path / "application.yml").write_text(
        textwrap.dedent(
            """
            binder:
              function-definition: orders;sink
              on-binding-failure: exit
              binders:
                local: {type: log, broker: exit-test}
              bindings:
                orders-out-0: {destination: orders}
                sink-in-0: {destination: orders, group: g}
            """
        )
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "binder", "run", "failing_app:app", "--config", "application.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30
    assert "handled {'id': 1}" in done.stdout
    assert "binding sink-in-0 failed: BackendError" in done.stderr
    assert "on-binding-failure: exit" in done.stderr
