"""fsync policies: a send completes after the fsync covering it; ``batch`` shares fsyncs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from binders.log.engine import Broker
from binders.log.engine.durable import DurableStorage
from binders.log.engine.sync import Syncer

Durable = Callable[..., Broker]


def _entries(count: int = 1) -> list:
    return [(None, b"x" * 100, {}, time.time()) for _ in range(count)]


def _syncer(broker: Broker) -> Syncer:
    storage = broker.storage
    assert isinstance(storage, DurableStorage) and storage.syncer is not None
    return storage.syncer


async def _send(broker: Broker, topic: str = "t") -> None:
    future = broker.append_synced(topic, 0, _entries())[1]
    assert future is not None
    await future


def test_batch_lets_concurrent_sends_share_one_fsync(durable: Durable) -> None:
    broker = durable(fsync="batch")
    broker.create_topic("t", 1)
    asyncio.run(_send(broker))  # the topic's first pass also fsyncs its directory
    before = _syncer(broker).fsyncs

    async def many() -> None:
        await asyncio.gather(*(_send(broker) for _ in range(64)))

    asyncio.run(many())
    assert 1 <= _syncer(broker).fsyncs - before <= 2


def test_always_gives_every_send_its_own_fsync(durable: Durable) -> None:
    broker = durable(fsync="always")
    broker.create_topic("t", 1)
    before = _syncer(broker).fsyncs

    async def many() -> None:
        await asyncio.gather(*(_send(broker) for _ in range(20)))

    asyncio.run(many())
    assert _syncer(broker).fsyncs - before >= 20


def test_a_send_completes_only_after_its_fsync(durable: Durable) -> None:
    broker = durable(fsync="batch")
    broker.create_topic("t", 1)

    async def one() -> None:
        before = _syncer(broker).fsyncs
        future = broker.append_synced("t", 0, _entries())[1]
        assert future is not None and not future.done()
        await future
        assert _syncer(broker).fsyncs > before

    asyncio.run(one())


def test_never_has_nothing_to_wait_for(durable: Durable, tmp_path: Path) -> None:
    broker = durable(fsync="never")
    broker.create_topic("t", 1)
    assert not broker.syncs
    assert broker.append_synced("t", 0, _entries()) == (0, None)


def test_waiters_on_several_loops_are_resolved_on_their_own(durable: Durable) -> None:
    broker = durable(fsync="batch")
    broker.create_topic("t", 2)
    done: list[int] = []

    def sender(partition: int) -> None:
        async def go() -> None:
            for _ in range(20):
                future = broker.append_synced("t", partition, _entries())[1]
                assert future is not None
                await future
            done.append(partition)

        asyncio.run(go())

    threads = [threading.Thread(target=sender, args=(p,)) for p in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(done) == [0, 1]
    assert broker.end_offsets("t") == {0: 20, 1: 20}


def test_close_settles_the_sends_still_waiting(durable: Durable) -> None:
    broker = durable(fsync="batch", fsync_interval_ms=5_000)  # the pass would wait 5 s

    async def scenario() -> None:
        broker.create_topic("t", 1)
        future = broker.append_synced("t", 0, _entries())[1]
        assert future is not None
        started = time.monotonic()
        broker.close()  # fsyncs every log itself, then stops the thread
        await asyncio.wait_for(future, 5)
        assert time.monotonic() - started < 4

    asyncio.run(scenario())


def test_a_callback_runs_after_the_fsync_covering_it() -> None:
    syncer = Syncer("batch")
    called = threading.Event()
    syncer.written("owner", 5, Path("/"))
    syncer.after("owner", 5, called.set)
    assert called.wait(5)
    assert syncer.fsyncs >= 1
    syncer.close()


def test_a_cancelled_send_leaves_the_others_sharing_its_fsync_alone(durable: Durable) -> None:
    broker = durable(fsync="batch")
    broker.create_topic("t", 1)

    async def scenario() -> None:
        async def send() -> None:
            future = broker.append_synced("t", 0, _entries())[1]
            assert future is not None
            await future

        first, second = asyncio.ensure_future(send()), asyncio.ensure_future(send())
        await asyncio.sleep(0)  # both appended and waiting on the same fsync
        first.cancel()
        await asyncio.wait_for(second, 5)
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())
