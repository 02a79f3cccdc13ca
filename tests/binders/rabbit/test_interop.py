"""Interop with plain aio-pika, the second program on the other end: what it publishes to a
destination's exchange is received, and what the binder sends is what a plain consumer
reads (payload as the body, headers in the table, the key as ``x-key``)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest

from binder import Message
from binder.testing.conformance.support import Conformance, Inbox, run

Publish = Callable[[aio_pika.abc.AbstractExchange], Awaitable[Any]]


def _received(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str, publish: Publish
) -> Message[Any]:
    """The message the group receives once a plain client ran ``publish`` on the
    destination's exchange (after the group's queue was declared)."""

    async def scenario() -> Message[Any]:
        app = rabbit.app({"handle-in-0": {"destination": destination, "group": group}})
        seen: Inbox[Message[Any]] = Inbox()

        @app.consumer
        async def handle(message: Message[Any]) -> None:
            seen.add(message)

        async with app, await aio_pika.connect(rabbit_url) as connection:
            channel = await connection.channel()
            await publish(await channel.get_exchange(destination))
            (message,) = await seen.wait_count(1)
            return message

    return run(scenario())


def _publish(body: bytes, routing_key: str, **properties: Any) -> Publish:
    async def publish(exchange: aio_pika.abc.AbstractExchange) -> None:
        await exchange.publish(aio_pika.Message(body, **properties), routing_key=routing_key)

    return publish


@pytest.mark.parametrize(
    "properties",
    [
        {"content_type": "application/json"},
        {"headers": {"contentType": "application/json"}},
        {},
    ],
    ids=["content_type property", "contentType header", "no content type"],
)
def test_a_plain_json_publish_is_received_as_json(
    rabbit: Conformance,
    rabbit_url: str,
    destination: str,
    group: str,
    properties: dict[str, Any],
) -> None:
    """Without any content type, the binding's (``application/json``) applies."""
    publish = _publish(b'{"a": 1}', destination, **properties)
    message = _received(rabbit, rabbit_url, destination, group, publish)
    assert message.payload == {"a": 1}
    assert message.key is None


def test_a_text_publish_is_received_as_text_with_its_headers(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str
) -> None:
    """The ``content_type`` property names the type; the table's other entries are headers
    (as strings); any routing key reaches the group's queue (bound with ``#``)."""
    headers = {"source": "plain", "count": 3}
    publish = _publish(b"hello", "any.key", content_type="text/plain", headers=headers)
    message = _received(rabbit, rabbit_url, destination, group, publish)
    assert message.payload == "hello"
    assert message.headers["source"] == "plain" and message.headers["count"] == "3"


def test_the_x_key_header_is_the_messages_key(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str
) -> None:
    headers = {"x-key": "customer-42"}
    publish = _publish(b'{"a": 1}', destination, content_type="application/json", headers=headers)
    message = _received(rabbit, rabbit_url, destination, group, publish)
    assert message.key == "customer-42"
    assert "x-key" not in message.headers


def test_a_base64_x_key_is_decoded_to_its_bytes(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str
) -> None:
    raw = b"\xff\x00k"
    headers = {"x-key": base64.b64encode(raw).decode(), "x-key-encoding": "base64"}
    publish = _publish(b"{}", destination, headers=headers)
    message = _received(rabbit, rabbit_url, destination, group, publish)
    assert message.key == raw
    assert "x-key-encoding" not in message.headers


# -- what the binder writes, read by a plain consumer -----------------------------------------


async def _read_plain(
    rabbit: Conformance, rabbit_url: str, destination: str, send: Callable[[Any], Awaitable[Any]]
) -> aio_pika.abc.AbstractIncomingMessage:
    """What a plain client's own queue, bound to the destination's exchange with ``#``,
    gets once ``send(app)`` ran."""
    async with await aio_pika.connect(rabbit_url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            destination, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="#")
        async with rabbit.app() as app:
            await send(app)
        got: Inbox[aio_pika.abc.AbstractIncomingMessage] = Inbox()

        async def add(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            got.add(message)

        await queue.consume(add, no_ack=True)
        (message,) = await got.wait_count(1)
        return message


def test_a_send_is_read_by_a_plain_consumer(
    rabbit: Conformance, rabbit_url: str, destination: str
) -> None:
    async def send(app: Any) -> None:
        await app.send(destination, {"id": 7}, key="c-42", headers={"source": "api"})

    message = run(_read_plain(rabbit, rabbit_url, destination, send))
    assert message.body == b'{"id":7}'
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.routing_key == destination
    assert message.headers["source"] == "api" and message.headers["x-key"] == "c-42"
    assert "x-key-encoding" not in message.headers


def test_a_key_that_is_not_utf8_goes_as_base64_and_comes_back_as_its_bytes(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str
) -> None:
    """On the wire: ``x-key`` is the key's base64 and ``x-key-encoding`` says so; a group
    of the binder receives the same bytes."""
    raw = b"\xff\xfe-key"

    async def send(app: Any) -> None:
        await app.send(destination, {"id": 1}, key=raw)

    async def through_the_binder() -> Message[Any]:
        app = rabbit.app({"handle-in-0": {"destination": destination, "group": group}})
        seen: Inbox[Message[Any]] = Inbox()

        @app.consumer
        async def handle(message: Message[Any]) -> None:
            seen.add(message)

        async with app:
            await send(app)
            (message,) = await seen.wait_count(1)
            return message

    wire = run(_read_plain(rabbit, rabbit_url, destination, send))
    assert wire.headers["x-key"] == base64.b64encode(raw).decode()
    assert wire.headers["x-key-encoding"] == "base64"
    assert run(through_the_binder()).key == raw
