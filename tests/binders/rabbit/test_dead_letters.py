"""A dead letter the broker refuses: the original stays unacknowledged (the core retries the
dead-letter send every ``back-off-max-interval`` and commits only once it went through), so
nothing is lost, whether the dead-letter path comes back while the app runs or only after
a restart.

The refusal is real: once a first dead letter went through (the dead-letter output
provisions its destination, queue included, on its first send), the dead-letter
destination's queue is deleted behind the binder's back, so its exchange has no queue bound
and the next ``mandatory`` publish comes back unroutable (``unroutable: fail``, the default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from binder import App, Message
from binder.message import EXCEPTION_MESSAGE, ORIGINAL_GROUP
from binder.testing.conformance.support import Conformance, Inbox, run
from binders.rabbit.testing import queues_info

REFUSED = "dead-letter send failed"
"""What ``binder.bindings`` logs for each refused dead-letter send."""


class _Said(logging.Handler):
    """The messages ``binder.bindings`` logs, in an Inbox (to wait on)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: Inbox[str] = Inbox()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.add(record.getMessage())

    async def refused(self, times: int) -> list[str]:
        """The refusals, once ``times`` dead-letter sends were refused."""
        lines = await self.lines.wait_until(
            lambda lines: sum(REFUSED in line for line in lines) >= times, f"{times} refusal(s)"
        )
        return [line for line in lines if REFUSED in line]


@pytest.fixture
def said() -> Iterator[_Said]:
    handler = _Said()
    logger = logging.getLogger("binder.bindings")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _app(rabbit: Conformance, destination: str, group: str, calls: list[Any]) -> App:
    consumer = {
        "max-attempts": 2,
        "back-off-initial-interval": 0.01,
        "back-off-max-interval": 0.2,  # how often the refused dead letter is sent again
    }
    binding = {"destination": destination, "group": group, "consumer": consumer}
    app = rabbit.app({"handle-in-0": binding})

    @app.consumer
    async def handle(message: Message[dict[str, Any]]) -> None:
        calls.append(message.payload["n"])
        raise RuntimeError(f"cannot handle {message.payload['n']}")

    return app


async def _delete_queue(url: str, queue: str) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await (await connection.channel()).get_underlay_channel()
        await channel.queue_delete(queue)


async def _bind_queue(url: str, queue: str) -> None:
    """``queue``, bound to the exchange of its own name with ``#``, as the binder declares a
    dead-letter destination's (exchange included)."""
    async with await aio_pika.connect(url) as connection:
        channel = await (await connection.channel()).get_underlay_channel()
        await channel.exchange_declare(queue, exchange_type="topic", durable=True)
        await channel.queue_declare(queue, durable=True)
        await channel.queue_bind(queue, queue, routing_key="#")


async def _letters(url: str, queue: str, count: int) -> list[aio_pika.abc.AbstractMessage]:
    """The first ``count`` messages of ``queue``, read by a plain consumer (and acked)."""
    seen: Inbox[aio_pika.abc.AbstractIncomingMessage] = Inbox()

    async def add(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.add(message)

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue_ = await channel.get_queue(queue)
        await queue_.consume(add, no_ack=True)
        return list(await seen.wait_count(count, f"{count} letter(s) in {queue}"))


async def _break_dead_letters(app: App, url: str, dlq: str) -> None:
    """A first dead letter (``n`` 0) through, then the dead-letter queue deleted."""
    await _bind_queue(url, dlq)  # to read the first letter from, whenever it is sent
    await app.send(app.destination_of("handle-in-0"), {"n": 0})
    await _letters(url, dlq, 1)
    await _delete_queue(url, dlq)


def _counts(queue: str) -> tuple[int, int]:
    info = queues_info(queue, "messages_ready", "messages_unacknowledged")[queue]
    return int(info["messages_ready"]), int(info["messages_unacknowledged"])


def test_a_refused_dead_letter_keeps_the_original_until_the_path_is_back(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str, said: _Said
) -> None:
    """While the dead-letter queue is gone, the letter is refused again and again and the
    original stays unacknowledged in the group queue; once the queue is back, the letter
    arrives there and the original is acknowledged. The function is not called again."""
    group_queue, dlq = f"{destination}.{group}", f"{destination}.{group}.dlq"
    calls: list[Any] = []
    figures: dict[str, Any] = {}

    async def scenario() -> list[aio_pika.abc.AbstractMessage]:
        app = _app(rabbit, destination, group, calls)
        async with app:
            await _break_dead_letters(app, rabbit_url, dlq)
            await app.send(destination, {"n": 1})
            figures["refusals"] = await said.refused(2)
            figures["held"] = await asyncio.to_thread(_counts, group_queue)
            await _bind_queue(rabbit_url, dlq)
            letters = await _letters(rabbit_url, dlq, 1)
        return letters

    (letter,) = run(scenario())
    assert all(
        f"unroutable: no queue is bound to exchange {dlq!r}" in line for line in figures["refusals"]
    )
    assert figures["held"] == (0, 1), "refused: the original is still unacknowledged"
    assert letter.body == b'{"n":1}'
    assert letter.headers[ORIGINAL_GROUP] == group
    assert letter.headers[EXCEPTION_MESSAGE] == "cannot handle 1"
    assert calls == [0, 0, 1, 1], "two attempts each, then only the dead-letter send is retried"
    assert _counts(group_queue) == (0, 0), "acknowledged once dead-lettered"


def test_an_app_stopped_while_its_dead_letter_is_refused_leaves_the_original_queued(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str, said: _Said
) -> None:
    """Stopping gives up the refused dead-letter send without acknowledging: the original is
    back in the group queue, and once the dead-letter queue is back, the next run
    dead-letters it."""
    group_queue, dlq = f"{destination}.{group}", f"{destination}.{group}.dlq"
    calls: list[Any] = []
    figures: dict[str, Any] = {}

    async def scenario() -> list[aio_pika.abc.AbstractMessage]:
        first = _app(rabbit, destination, group, calls)
        async with first:
            await _break_dead_letters(first, rabbit_url, dlq)
            await first.send(destination, {"n": 1})
            await said.refused(1)
        figures["stopped"] = await asyncio.to_thread(_counts, group_queue)
        await _bind_queue(rabbit_url, dlq)  # the path back (the next run's letter declares it too)
        async with _app(rabbit, destination, group, calls):
            return await _letters(rabbit_url, dlq, 1)

    (letter,) = run(scenario())
    assert figures["stopped"] == (1, 0), "the original is back in the group queue"
    assert letter.body == b'{"n":1}'
    assert letter.headers[ORIGINAL_GROUP] == group
    assert _counts(group_queue) == (0, 0)
