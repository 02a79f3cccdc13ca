"""Connections: the broker closing the consumer's connection mid-stream (as an operator's
``rabbitmqctl close_connection`` does), and a server that refuses or is not there."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from binder import App
from binder.errors import BackendError
from binder.testing.conformance.support import run
from binders.rabbit.testing import close_connections, rabbitmqctl

BATCH = 300
"""Messages sent before, during and after the connection is closed (each)."""


async def _eventually(done: Any, what: str, timeout: float = 20.0) -> None:
    """Poll until ``done()`` (a binding's state has nothing to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, f"waited {timeout}s for {what}"
        await asyncio.sleep(0.02)


def _app(binder_name: str, config: dict[str, Any], bindings: dict[str, Any]) -> App:
    section = {"binders": {binder_name: config}, "default-binder": binder_name}
    return App(config={"binder": {**section, "bindings": bindings}}, environ={})


def test_a_consumer_whose_connection_the_broker_closes_resumes_and_loses_nothing(
    rabbit_config: dict[str, Any], destination: str, group: str
) -> None:
    """The consumer's connection is closed by the broker after some of the first batch were
    handled; a second batch is sent at once (while the binding is down), a third once it is
    back: every message of the three is handled at least once, by a restarted consumer."""
    name = f"member-{uuid.uuid4().hex[:8]}"  # the connection is "streambinder <name>"
    binding = {"destination": destination, "group": group}
    seen: Counter[int] = Counter()
    figures: dict[str, Any] = {}

    async def scenario() -> None:
        app = _app(name, rabbit_config, {"handle-in-0": binding})

        @app.consumer
        async def handle(payload: dict[str, int]) -> None:
            seen[payload["n"]] += 1
            await asyncio.sleep(0.002)  # about 2 s for the lot: time to close it mid-stream

        sender = _app("sender", rabbit_config, {})  # a binder (connection) of its own
        async with app, sender:
            binding_ = app.binding("handle-in-0")
            await asyncio.gather(*(sender.send(destination, {"n": n}) for n in range(BATCH)))
            await _eventually(lambda: len(seen) >= BATCH // 3, "some handled")
            figures["closed"] = await asyncio.to_thread(close_connections, f"streambinder {name}")
            during = range(BATCH, 2 * BATCH)
            await asyncio.gather(*(sender.send(destination, {"n": n}) for n in during))
            # restarts after 1 s, then 2 s, 4 s … (the core's back-off): 10 s is three tries
            await _eventually(lambda: binding_.restarts >= 1, "a restarted consumer", 10.0)
            after = range(2 * BATCH, 3 * BATCH)
            await asyncio.gather(*(sender.send(destination, {"n": n}) for n in after))
            await _eventually(lambda: len(seen) == 3 * BATCH, "every message handled")
            figures["state"] = binding_.state
            figures["restarts"] = binding_.restarts

    run(scenario())
    assert figures["closed"] == 1, "the broker closed the consumer's connection"
    assert figures["restarts"] >= 1 and figures["state"] == "running", figures
    assert set(seen) == set(range(3 * BATCH))


# -- the password ---------------------------------------------------------------------------


def _consuming(binder_name: str, config: dict[str, Any]) -> App:
    """An app whose start connects (a consumer binding opens the binder)."""
    app = _app(binder_name, config, {"handle-in-0": {"destination": "orders", "group": "g"}})
    app.consumer(lambda payload: None, name="handle")
    return app


@pytest.fixture(scope="module")
def secret_user(rabbit_url: str) -> Iterator[tuple[str, str]]:
    """A broker user of this module's own (name, password), with every right on ``/``."""
    user, password = f"rt-{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)


def _url(rabbit_url: str, user: str, password: str, port: int | None = None) -> str:
    host = rabbit_url.split("@", 1)[1].split("/", 1)[0]
    if port is not None:
        host = f"{host.rsplit(':', 1)[0]}:{port}"
    return f"amqp://{user}:{password}@{host}/"


def test_the_password_is_never_logged_while_the_app_runs_and_loses_its_connection(
    rabbit_url: str,
    secret_user: tuple[str, str],
    destination: str,
    group: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Start, send, consume, lose the connection (the binding fails, naming the server),
    stop: at DEBUG, no log record carries the password."""
    user, password = secret_user
    caplog.set_level(logging.DEBUG)
    name = f"secret-{uuid.uuid4().hex[:8]}"
    config = {"type": "rabbit", "url": _url(rabbit_url, user, password)}
    seen: list[int] = []

    async def scenario() -> None:
        app = _app(name, config, {"handle-in-0": {"destination": destination, "group": group}})
        app.consumer(lambda payload: seen.append(payload["n"]), name="handle")
        async with app:
            await app.send(destination, {"n": 1})
            await _eventually(lambda: seen == [1], "one handled")
            assert await asyncio.to_thread(close_connections, f"streambinder {name}") == 1
            await _eventually(lambda: app.binding("handle-in-0").state == "failed", "a failure")

    run(scenario())
    assert f"amqp://{user}:***@" in caplog.text, "the server is named, masked"
    assert password not in caplog.text


def test_a_wrong_password_fails_start_naming_the_server_without_the_password(
    rabbit_url: str, secret_user: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    user, password = secret_user
    caplog.set_level(logging.DEBUG)
    wrong = f"{password}-wrong"
    config = {"type": "rabbit", "url": _url(rabbit_url, user, wrong), "connect-timeout": "5s"}

    async def start() -> None:
        async with _consuming("wrong", config):
            pass

    with pytest.raises(BackendError) as failure:
        run(start(), timeout=20)
    assert f"rabbitmq at amqp://{user}:***@" in str(failure.value)
    told = "".join(traceback.format_exception(failure.value)) + caplog.text
    assert wrong not in told and password not in told


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port held bound but not listening, so connections to it are refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def test_an_unreachable_server_fails_start_naming_it_without_the_password(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"amqp://app:hunter2@127.0.0.1:{closed_port}/"
    config = {"type": "rabbit", "url": url, "connect-timeout": "2s"}

    async def start() -> None:
        async with _consuming("gone", config):
            pass

    with pytest.raises(BackendError) as failure:
        run(start(), timeout=20)
    assert f"rabbitmq at amqp://app:***@127.0.0.1:{closed_port}/" in str(failure.value)
    told = "".join(traceback.format_exception(failure.value)) + caplog.text
    assert "hunter2" not in told
