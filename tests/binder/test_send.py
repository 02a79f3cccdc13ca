"""app.send: a future per send, sends of one loop iteration delivered together, in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from binder import App, ConversionError
from binders.log.engine import Broker


def _app(broker: str) -> App:
    return App(
        config={"binder": {"binders": {"local": {"type": "log", "broker": broker}}}}, environ={}
    )


@pytest.fixture
def broker() -> Iterator[str]:
    name = f"send-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)


def test_gathered_sends_arrive_in_call_order_as_one_batch(broker: str) -> None:
    async def scenario() -> None:
        async with _app(broker) as app:
            await app.send("d", -1)  # the first send opens the producer
            appends = []
            real = Broker.named(broker).append

            def counting(topic, partition, entries):  # type: ignore[no-untyped-def]
                appends.append(len(entries))
                return real(topic, partition, entries)

            Broker.named(broker).append = counting  # type: ignore[method-assign]
            await asyncio.gather(*(app.send("d", i) for i in range(200)))
            assert appends == [200]
        values = [r.value for r in Broker.named(broker).read("d", 0, 0, 1000)]
        assert values == [b"-1", *(str(i).encode() for i in range(200))]

    asyncio.run(scenario())


def test_a_bad_payload_fails_only_its_own_send(broker: str) -> None:
    async def scenario() -> list[object]:
        async with _app(broker) as app:
            await app.send("d", 0)
            return await asyncio.gather(
                app.send("d", 1),
                app.send("d", object()),
                app.send("d", 2),
                return_exceptions=True,
            )

    results = asyncio.run(scenario())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ConversionError)
    assert [r.value for r in Broker.named(broker).read("d", 0, 0, 10)] == [b"0", b"1", b"2"]


def test_cancelling_one_wait_does_not_cancel_the_others(broker: str) -> None:
    async def scenario() -> None:
        async with _app(broker) as app:
            await app.send("d", 0)
            first, second = app.send("d", 1), app.send("d", 2)
            first.cancel()
            await second
        assert [r.value for r in Broker.named(broker).read("d", 0, 0, 10)][-1] == b"2"

    asyncio.run(scenario())


def test_leaving_the_app_delivers_what_was_submitted(broker: str) -> None:
    async def scenario() -> None:
        async with _app(broker) as app:
            await app.send("d", 0)
            for i in range(1, 50):
                app.send("d", i)  # not awaited: stop must still deliver them
        assert Broker.named(broker).end_offsets("d") == {0: 50}

    asyncio.run(scenario())


def test_a_backlog_of_accepted_sends_completes_a_slice_per_loop_iteration(broker: str) -> None:
    """Thousands accepted at once are completed a slice at a time, so their waiters' callbacks
    never pile up in the loop all together; every one of them completes, in call order."""

    async def scenario() -> None:
        async with _app(broker) as app:
            await app.send("d", -1)
            futures = [app.send("d", i) for i in range(5_000)]
            done_when_first_woke: list[int] = []
            futures[0].add_done_callback(
                lambda _: done_when_first_woke.append(sum(f.done() for f in futures))
            )
            completed: list[int] = []
            for i, future in enumerate(futures):
                future.add_done_callback(lambda _, i=i: completed.append(i))
            await asyncio.gather(*futures)
        assert done_when_first_woke[0] < len(futures)
        assert completed == list(range(len(futures)))
        assert Broker.named(broker).end_offsets("d") == {0: 5_001}

    asyncio.run(scenario())
