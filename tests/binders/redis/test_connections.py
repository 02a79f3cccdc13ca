"""Connections: the server dropping the consumer's connections mid-stream, and a server
that is not there at all."""

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
from redis import Redis

from binder.errors import BackendError
from binder.testing.conformance.support import Conformance, run

TOTAL = 2_000


def _kill_named(plain: Redis, name: str) -> int:
    """``CLIENT KILL ID`` every connection called ``name`` (only the app's, never another
    user's of a shared server); how many went."""
    ids = [client["id"] for client in plain.client_list() if client["name"] == name]
    return sum(plain.client_kill_filter(_id=client_id) for client_id in ids)


async def _eventually(done: Any, what: str, timeout: float = 20.0) -> None:
    """Poll until ``done()`` (a binding's state has nothing to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, f"waited {timeout}s for {what}"
        await asyncio.sleep(0.02)


def test_a_consumer_whose_connections_are_killed_mid_stream_loses_nothing(
    redis: Conformance, redis_url: str, plain: Redis, stream: str, group: str
) -> None:
    """2000 messages; the consumer's connections are killed after 400 and after 1200 handled:
    every message is handled (at least once) and the binding is running again."""
    name = f"sbt-{uuid.uuid4().hex[:10]}"
    separator = "&" if "?" in redis_url else "?"
    named = {"url": f"{redis_url}{separator}client_name={name}"}
    seen: Counter[int] = Counter()
    figures: dict[str, Any] = {"cut": []}

    async def scenario() -> None:
        await redis.provision(stream, 1, [group])
        async with redis.app() as sender:  # not named: its connections stay
            await asyncio.gather(*(sender.send(stream, {"n": n}) for n in range(TOTAL)))
        app = redis.app({"handle-in-0": {"destination": stream, "group": group}}, options=named)

        @app.consumer
        async def handle(payload: dict[str, int]) -> None:
            seen[payload["n"]] += 1
            if len(seen) % 10 == 0:
                await asyncio.sleep(0.01)  # about 2 s for the lot: time to cut it twice

        async with app:
            binding = app.binding("handle-in-0")
            for mark in (400, 1_200):
                await _eventually(lambda m=mark: len(seen) >= m, f"{mark} handled")
                figures["cut"].append(_kill_named(plain, name))
            await _eventually(lambda: len(seen) == TOTAL, "every message handled")
            await _eventually(lambda: binding.state == "running", "the binding running")
            figures["restarts"] = getattr(binding, "restarts", 0)

    run(scenario())
    assert all(cut > 0 for cut in figures["cut"]), f"each kill cut connections: {figures['cut']}"
    assert set(seen) == set(range(TOTAL)), f"lost: {sorted(set(range(TOTAL)) - set(seen))[:10]}"
    print(
        f"\nkilled connections {figures['cut']}, handled twice "
        f"{sum(c - 1 for c in seen.values())}, binding restarts {figures['restarts']}"
    )


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
    url = f"redis://app:hunter2@127.0.0.1:{closed_port}/0"
    suite = Conformance({"type": "redis", "url": url, "socket-connect-timeout": "2s"})
    app = suite.app({"handle-in-0": {"destination": "orders", "group": "g"}})
    app.consumer(lambda payload: None, name="handle")

    async def start() -> None:
        async with app:
            pass

    with pytest.raises(BackendError) as failure:
        run(start(), timeout=20)
    assert f"redis at redis://app:***@127.0.0.1:{closed_port}/0" in str(failure.value)
    told = "".join(traceback.format_exception(failure.value)) + caplog.text
    assert "hunter2" not in told
