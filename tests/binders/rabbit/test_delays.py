"""Delayed delivery on RabbitMQ: the ladder of TTL queues (``binders.rabbit.delays``), what a
delivered delayed message looks like, its lateness, and a sender killed with SIGKILL right
after its delayed send was confirmed (the broker alone delivers it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from binder import App, Message
from binder.errors import ConversionError
from binder.message import DELAY, DELIVER_AT
from binder.testing.conformance.support import Inbox, run
from binders.rabbit.delays import BIT, level_name
from binders.rabbit.testing import queues_info

ROOT = Path(__file__).resolve().parents[3]


def _app(rabbit_config: dict[str, Any], bindings: dict[str, Any] | None = None) -> App:
    section = {"binders": {"rb": rabbit_config}, "bindings": bindings or {}}
    return App(config={"binder": section}, environ={})


def _sink(rabbit_config: dict[str, Any], destination: str, group: str, inbox: Inbox[Any]) -> App:
    app = _app(rabbit_config, {"sink-in-0": {"destination": destination, "group": group}})

    @app.consumer
    async def sink(message: Message[Any]) -> None:
        inbox.add((time.time(), message))

    return app


def test_a_delayed_message_arrives_as_an_ordinary_one_through_its_ladder(
    rabbit_config: dict[str, Any], destination: str, group: str
) -> None:
    """1.5 s is 0b10111011100 ms: levels 0..10 are declared, each queue living 2^k ms; the
    message arrives with its key and headers, ``x-deliver-at``, and none of the ladder's
    headers or RabbitMQ's ``x-death``."""

    async def scenario() -> list[Any]:
        inbox: Inbox[Any] = Inbox()
        async with _sink(rabbit_config, destination, group, inbox), _app(rabbit_config) as app:
            await app.send(destination, {"n": 1}, key="k-1", headers={"x-note": "hi"}, delay=1.5)
            return await inbox.wait_count(1, "the delayed message")

    ((_, message),) = run(scenario())
    assert message.payload == {"n": 1} and message.key == "k-1"
    assert message.headers["x-note"] == "hi"
    assert DELIVER_AT in message.headers and DELAY not in message.headers
    assert not [h for h in message.headers if h.startswith((BIT, "x-death", "x-first-death"))]
    levels = queues_info(f"{destination}.delay.", "arguments")
    assert sorted(levels) == sorted(level_name(destination, k) for k in range(11))
    ten = levels[level_name(destination, 10)]["arguments"].replace(" ", "")
    assert '{"x-message-ttl",1024}' in ten
    assert f'{{"x-dead-letter-exchange","{level_name(destination, 9)}"}}' in ten
    zero = levels[level_name(destination, 0)]["arguments"].replace(" ", "")
    assert f'{{"x-dead-letter-exchange","{destination}"}}' in zero, "level 0 leads home"


def test_delayed_messages_are_at_most_a_little_late(
    rabbit_config: dict[str, Any], destination: str, group: str
) -> None:
    """Twenty messages delayed 0.3 to 2.2 s: none early, none more than the contract's 1 s
    late (the broker's hops cost milliseconds)."""

    async def scenario() -> list[Any]:
        inbox: Inbox[Any] = Inbox()
        async with _sink(rabbit_config, destination, group, inbox), _app(rabbit_config) as app:
            await asyncio.gather(
                *(app.send(destination, {"n": n}, delay=0.3 + n * 0.1) for n in range(20))
            )
            return await inbox.wait_count(20, "every delayed message")

    received = run(scenario())
    lateness = [at - int(m.headers[DELIVER_AT]) / 1000 for at, m in received]
    assert min(lateness) >= -0.002, "never early"
    assert max(lateness) <= 1.0, lateness
    assert [m.payload["n"] for _, m in received] == list(range(20)), "in due order"


def test_a_delay_the_ladder_cannot_hold_is_refused(
    rabbit_config: dict[str, Any], destination: str
) -> None:
    async def scenario() -> None:
        async with _app(rabbit_config) as app:
            await app.send(destination, {"n": 1}, delay=30 * 86_400)  # held: 30 days is fine
            await app.send(destination, {"n": 2}, delay=200 * 86_400)

    with pytest.raises(ConversionError, match="99 days"):
        run(scenario())


SENDER = """
import asyncio, json, os, signal, sys
from binder import App
app = App(config={"binder": json.loads(sys.argv[1])}, environ={})
async def main():
    async with app:
        await app.send(sys.argv[2], {"n": "held"}, delay=2.0)
        print("confirmed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean stop, nothing left to move anything
asyncio.run(main())
"""


def test_the_broker_delivers_what_a_killed_sender_scheduled(
    rabbit_config: dict[str, Any], destination: str, group: str
) -> None:
    section = {"binders": {"rb": rabbit_config}}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    async def scenario() -> list[Any]:
        inbox: Inbox[Any] = Inbox()
        async with _sink(rabbit_config, destination, group, inbox):
            sender = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(SENDER), json.dumps(section), destination],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert sender.returncode == -signal.SIGKILL, sender.stderr
            assert sender.stdout.strip() == "confirmed"
            received = await inbox.wait_count(1, "the message the killed sender delayed")
            await asyncio.sleep(0.5)
            return inbox.items if len(inbox.items) > 1 else received

    received = run(scenario())
    assert [m.payload for _, m in received] == [{"n": "held"}]
