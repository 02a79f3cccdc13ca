"""Sending: a message no queue is bound to receive fails its send (``unroutable: fail``,
the default), naming the exchange and the routing key, or is dropped (``unroutable: drop``)."""

from __future__ import annotations

import aio_pika
import pytest

from binder.errors import BackendError
from binder.testing.conformance.support import Conformance, run


def test_a_send_no_queue_is_bound_for_fails_naming_the_exchange_and_routing_key(
    rabbit: Conformance, destination: str
) -> None:
    async def scenario() -> None:
        async with rabbit.app() as app:
            await app.send(destination, {"n": 1})

    with pytest.raises(BackendError) as refused:
        run(scenario())
    said = str(refused.value)
    assert "unroutable" in said
    assert f"exchange {destination!r}" in said and f"routing key {destination!r}" in said


def test_a_send_to_a_partition_no_queue_is_bound_for_names_its_routing_key(
    rabbit: Conformance, destination: str
) -> None:
    """A partitioned destination with no group: the routing key is ``<d>-<p>``."""
    sender = {"sender": {"destination": destination, "producer": {"partition-count": 2}}}

    async def scenario() -> None:
        async with rabbit.app(sender) as app:
            await app.send("sender", {"n": 1}, key="k")

    with pytest.raises(BackendError, match=rf"routing key '{destination}-[01]'"):
        run(scenario())


def test_with_unroutable_drop_a_send_no_queue_is_bound_for_succeeds(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str
) -> None:
    """Dropped by the broker: the send returns; a queue bound later does not get it, and
    what is sent after it is routed as usual."""

    async def scenario() -> int:
        async with rabbit.app(options={"unroutable": "drop"}) as app:
            await app.send(destination, {"n": "dropped"})
            await rabbit.provision(destination, 1, [group])
            await app.send(destination, {"n": "kept"})
        async with await aio_pika.connect(rabbit_url) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{destination}.{group}", passive=True)
            return queue.declaration_result.message_count

    assert run(scenario()) == 1
