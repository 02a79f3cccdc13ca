"""Delayed delivery on Redis, beyond the conformance scenarios: what a moved record looks like
to another program, two movers on one destination, a mover killed with SIGKILL, and a delay
of 30 days on a clock moved by hand.

The waiting records are in the sorted set ``{<stream>}:delayed`` of each partition, scored
by their due time (:mod:`binders.redis.scheduler`); the tests read it, and the stream, with
a plain redis-py client.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis

from binder import App, ManualClock, Message
from binder.message import DELAY, DELIVER_AT
from binder.testing.conformance.support import Conformance, Inbox, run
from binder.testing.processes import LineProcess
from binders.redis.scheduler import delayed_key

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PROCS = HERE / "_delay_procs.py"
WAIT = 15.0
"""Seconds any one wait gets."""


def _delayed(key_prefix: str, stream: str) -> bytes:
    """The sorted set of the (one-partition) destination ``stream``."""
    return delayed_key((key_prefix + stream).encode())


def _next_entries(plain: Redis, stream: str, after: bytes, count: int) -> list[Any]:
    """The entries of ``stream`` after id ``after`` once there are ``count`` of them, waiting
    with ``XREAD BLOCK`` (the server says when one comes)."""
    entries: list[Any] = []
    deadline = time.monotonic() + WAIT
    while len(entries) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"waited for {count} entries of {stream!r}; got {len(entries)}"
        reply = plain.xread({stream: after}, block=max(int(left * 1000), 1))
        for _, found in reply or ():
            entries += found
            after = found[-1][0]
    return entries


# -- (1) a moved record is an ordinary stream entry -----------------------------------------


def test_a_moved_delayed_record_is_an_ordinary_stream_entry(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str
) -> None:
    """Read with plain ``XRANGE``: the fields of a delayed send, once moved, are exactly those
    of an ordinary send (``payload``, ``key`` when keyed, ``headers`` JSON), its headers those
    of the ordinary one plus ``x-deliver-at`` (and no ``x-delay``); the sorted set is empty."""
    full = key_prefix + stream
    held: list[int] = []

    async def send() -> None:
        async with redis.app() as app:
            await app.send(stream, {"id": 1}, key="c-1", headers={"source": "api"})
            await app.send(stream, {"id": 2}, key="c-1", headers={"source": "api"}, delay=0.5)
            await app.send(stream, {"id": 3}, delay=0.5)
            held.append(plain.zcard(_delayed(key_prefix, stream)))
            await asyncio.to_thread(_next_entries, plain, full, b"0", 3)

    run(send())
    assert held == [2], "both delayed records waited in the sorted set"
    (_, ordinary), (_, keyed), (_, keyless) = plain.xrange(full)
    assert set(ordinary) == set(keyed) == {b"payload", b"key", b"headers"}
    assert set(keyless) == {b"payload", b"headers"}
    assert orjson.loads(keyed[b"payload"]) == {"id": 2} and keyed[b"key"] == b"c-1"
    assert orjson.loads(keyless[b"payload"]) == {"id": 3}
    plain_headers = orjson.loads(ordinary[b"headers"])
    delayed_headers = orjson.loads(keyed[b"headers"])
    assert set(delayed_headers) == set(plain_headers) | {DELIVER_AT}
    assert DELAY not in delayed_headers and delayed_headers["source"] == "api"
    assert int(delayed_headers[DELIVER_AT]) <= int(time.time() * 1000)
    assert DELIVER_AT in orjson.loads(keyless[b"headers"])
    assert plain.zcard(_delayed(key_prefix, stream)) == 0


# -- (2) two movers on one destination ------------------------------------------------------


def test_two_apps_on_one_destination_deliver_each_delayed_message_once(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    """Two apps (two binders, so two movers) consume one destination in one group; 200
    delayed messages due within the same second are each moved and delivered once."""
    count = 200
    binding = {"handle-in-0": {"destination": stream, "group": group}}
    inbox: Inbox[Any] = Inbox()

    def consuming() -> App:
        app = redis.app(binding)

        @app.consumer
        async def handle(message: Message[dict[str, Any]]) -> None:
            inbox.add(message.payload["n"])

        return app

    async def scenario() -> None:
        async with consuming() as first, consuming():
            await asyncio.gather(
                *(first.send(stream, {"n": n}, delay=0.5 + n / 1000) for n in range(count))
            )
            await inbox.wait_count(count, "every delayed message")
            await first.send(stream, {"n": "witness"})  # after the moved ones in the stream
            await inbox.wait_for("witness")

    run(scenario())
    handled = [n for n in inbox.items if n != "witness"]
    assert sorted(handled) == list(range(count)), "each delayed message once"
    assert plain.xlen(key_prefix + stream) == count + 1, "each moved once"
    assert plain.zcard(_delayed(key_prefix, stream)) == 0


# -- (3) a mover killed with SIGKILL ----------------------------------------------------------


class Proc(LineProcess):
    """A ``_delay_procs.py`` process; :attr:`handled` is what its consumer printed."""

    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, str(PROCS), *args], cwd=ROOT, timeout=WAIT)

    @property
    def handled(self) -> list[str]:
        return [line for line in self.lines if line not in ("ready", "scheduled")]


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.process.poll() is None:
            proc.stop(signal.SIGKILL)


def test_delayed_messages_of_a_killed_consumer_are_delivered_once_by_the_next(
    redis_config: dict[str, Any],
    key_prefix: str,
    plain: Redis,
    stream: str,
    group: str,
    procs: list[Proc],
) -> None:
    """A sender process schedules 50 messages due in 3 s and exits; the only consumer
    process left is killed with SIGKILL before they are due; a consumer started after it
    moves and delivers every one, once."""
    settings = json.dumps({"binder": redis_config, "destination": stream, "group": group})
    first = Proc("consume", settings)
    procs.append(first)
    first.wait_until(lambda: "ready" in first.lines, "the first consumer")
    sender = Proc("schedule", settings, "50", "3")
    procs.append(sender)
    assert sender.process.wait(WAIT) == 0 and "scheduled" in sender.lines
    assert plain.zcard(_delayed(key_prefix, stream)) == 50, "held by Redis, not by a process"
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert first.handled == [], "killed before anything was due"
    second = Proc("consume", settings)
    procs.append(second)
    second.wait_until(lambda: len(second.handled) >= 50, "every delayed message")
    plain.xadd(key_prefix + stream, {"payload": b'{"n": "witness"}'})  # after the moved ones
    second.wait_until(lambda: "witness" in second.handled, "the witness")
    assert sorted(second.handled[:-1], key=int) == [str(n) for n in range(50)]
    assert second.handled[-1] == "witness", "nothing delivered twice"
    assert plain.zcard(_delayed(key_prefix, stream)) == 0


# -- (4) a delay of 30 days on a manual clock ---------------------------------------------------


def test_a_delay_of_30_days_is_held_and_delivered_when_the_clock_gets_there(
    redis_config: dict[str, Any], key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    """The record waits in the sorted set scored by its due time, 30 days ahead; moving the
    app's ManualClock 30 days forward delivers it within a second."""
    clock = ManualClock()
    binding = {"destination": stream, "group": group}
    section = {"binders": {"redis": redis_config}, "bindings": {"handle-in-0": binding}}
    app = App(config={"binder": section}, environ={}, clock=clock)
    inbox: Inbox[Message[dict[str, Any]]] = Inbox()
    month = timedelta(days=30)

    @app.consumer
    async def handle(message: Message[dict[str, Any]]) -> None:
        inbox.add(message)

    async def scenario() -> tuple[list[tuple[bytes, float]], float, Message[dict[str, Any]]]:
        async with app:
            sent_at = clock.time()
            await app.send(stream, {"n": "month"}, delay=month)
            await app.send(stream, {"n": "now"})
            await inbox.wait_count(1, "the undelayed message")  # the month one still waits
            held = plain.zrange(_delayed(key_prefix, stream), 0, -1, withscores=True)
            clock.advance(month)
            (_, message) = await inbox.wait_count(2, "the month-delayed message", timeout=1.0)
            return held, sent_at, message

    held, sent_at, message = run(scenario())
    [(_, score)] = held
    assert message.payload == {"n": "month"}
    assert score == int(message.headers[DELIVER_AT])
    assert score / 1000 - sent_at == pytest.approx(month.total_seconds(), abs=1.0)
    assert plain.zcard(_delayed(key_prefix, stream)) == 0
