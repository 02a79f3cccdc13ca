"""Sending: a message no queue is bound to receive fails its send (``unroutable: fail``,
the default), naming the exchange and the routing key, or is dropped (``unroutable: drop``)."""

from __future__ import annotations

import asyncio

import aio_pika
import orjson
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


@pytest.mark.parametrize("batched", [True, False], ids=["one-write", "basic-publish"])
def test_a_burst_arrives_whole_and_in_order_on_either_publish_path(
    rabbit: Conformance, destination: str, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    """Windows of publishes written at once (the binder's own bookkeeping on aiormq's channel)
    or, on an aiormq without it, one ``basic_publish`` each: the same messages, in order, and an
    unroutable one still fails its send."""
    import binders.rabbit.producer as producer

    if not batched:
        monkeypatch.setattr(producer, "_batchable", lambda channel: False)
    total = 2 * producer.WINDOW + 7
    sender = {"sender": {"destination": destination, "producer": {"required-groups": ["g"]}}}

    async def scenario() -> list[int]:
        async with rabbit.app(sender) as app:
            await asyncio.gather(*(app.send("sender", {"n": n}, key=f"k{n}") for n in range(total)))
            with pytest.raises(BackendError, match="unroutable"):
                await app.send(f"{destination}-nobody", {"n": -1})
        rabbit.declare(f"{destination}-nobody")
        async with await aio_pika.connect(rabbit.binder_config["url"]) as connection:
            channel = await connection.channel()
            queue = await channel.get_queue(f"{destination}.g")
            seen = []
            while len(seen) < total:
                message = await queue.get(no_ack=True, timeout=5)
                seen.append(orjson.loads(message.body)["n"])
                assert message.headers["x-key"] == f"k{seen[-1]}"
            return seen

    assert run(scenario()) == list(range(total))
