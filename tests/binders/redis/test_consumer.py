"""The consumer on the real server: delivery counts, recovery of what a dead member left,
consumer names, and a group deleted under a running consumer."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
from redis import Redis

from binder.spi import Consumer, InboundRecord, OutboundRecord
from binder.testing.conformance.support import Conformance, Inbox, fetch_records, run


async def _fetch_one(consumer: Consumer) -> InboundRecord:
    (record,) = await asyncio.wait_for(consumer.fetch(), 5)
    return record


def _consumer_names(plain: Redis, stream_key: str, group: str) -> set[str]:
    return {c["name"].decode() for c in plain.xinfo_consumers(stream_key, group)}


async def _until_two_read(app: Any, plain: Redis, stream: str, stream_key: str, group: str) -> None:
    """Send one message at a time until two consumers of ``group`` read some: a consumer
    shows in XINFO CONSUMERS once it was handed an entry (not while it blocks)."""
    deadline = time.monotonic() + 5.0
    while len(_consumer_names(plain, stream_key, group)) < 2:
        assert time.monotonic() < deadline, f"{_consumer_names(plain, stream_key, group)} only"
        await app.send(stream, {"n": 0})
        await asyncio.sleep(0.02)  # one at a time, so that each blocked reader gets a turn


# -- delivery counts ------------------------------------------------------------------------


def test_a_clean_close_without_commit_is_not_counted_as_a_delivery(
    redis: Conformance, stream: str, group: str
) -> None:
    """A member that closes cleanly hands what it left pending back uncounted: it did not die
    with those entries (only a crash runs up the count that caps a poison message)."""

    async def scenario() -> list[int]:
        async with redis.binder() as binder:
            await redis.send_raw(binder, stream, [OutboundRecord(b'{"n": 1}')])
            counts = []
            for _ in range(3):
                consumer = await redis.consumer(binder, stream, group)
                counts.append((await _fetch_one(consumer)).deliveries)
                await consumer.close()  # no commit
            return counts

    assert run(scenario()) == [1, 1, 1]


def test_deliveries_count_each_delivery_to_a_member_that_never_came_back(
    redis: Conformance, stream: str, group: str
) -> None:
    """A member that takes an entry and is never heard of again (it stopped without closing:
    a crash), then a new one under the same name, again and again: 1, 2, 3, 4."""

    async def scenario() -> list[int]:
        crashed = Conformance({**redis.binder_config, "consumer-name": "stable"})
        async with AsyncExitStack() as left_open:
            binder = await left_open.enter_async_context(crashed.binder())
            await redis.send_raw(binder, stream, [OutboundRecord(b'{"n": 1}')])
            counts = []
            for _ in range(4):
                binder = await left_open.enter_async_context(crashed.binder())
                consumer = await redis.consumer(binder, stream, group)
                counts.append((await _fetch_one(consumer)).deliveries)  # never committed
            return counts

    assert run(scenario()) == [1, 2, 3, 4]


# -- recovery -------------------------------------------------------------------------------


def test_a_new_member_recovers_every_pending_entry_of_partitions_that_share_ids(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    """A dead member (plain XREADGROUP, never acked) left ids 1-1..1-3 pending on both
    partition streams, each followed by an unread 2-1; a new member takes both partitions
    and hands out every entry, each partition in id order (min-idle 30 s: only the
    takeover can deliver the pending ones)."""
    run(redis.provision(stream, 2, [group]))
    keys = [f"{key_prefix}{stream}:{p}" for p in range(2)]
    ids = [b"1-1", b"1-2", b"1-3"]
    for key in keys:
        for entry_id in ids:
            plain.xadd(key, {"payload": b"{}"}, id=entry_id)
    assert plain.xreadgroup(group, "dead-member", dict.fromkeys(keys, ">"))
    for key in keys:
        plain.xadd(key, {"payload": b"{}"}, id=b"2-1")

    async def scenario() -> dict[int, list[bytes]]:
        member = Conformance({**redis.binder_config, "min-idle": "30s"})
        async with member.binder() as binder:
            consumer = await redis.consumer(binder, stream, group)
            try:
                records = await fetch_records(consumer, 8, timeout=5)
            finally:
                await consumer.close()
        by_partition: dict[int, list[bytes]] = {0: [], 1: []}
        for record in records:
            by_partition[record.partition].append(record.token)
        return by_partition

    assert run(scenario()) == {0: [*ids, b"2-1"], 1: [*ids, b"2-1"]}


# -- consumer names -------------------------------------------------------------------------


def test_a_clean_stop_with_nothing_pending_removes_the_consumer(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    stream_key = key_prefix + stream

    async def scenario() -> tuple[set[str], set[str]]:
        app = redis.app({"handle-in-0": {"destination": stream, "group": group}})
        seen: Inbox[Any] = Inbox()
        app.consumer(lambda payload: seen.add(payload), name="handle")
        async with app:
            await app.send(stream, {"n": 1})
            await seen.wait_count(1)
            running = _consumer_names(plain, stream_key, group)
        return running, _consumer_names(plain, stream_key, group)

    running, stopped = run(scenario())
    assert len(running) == 1, "the running member shows in XINFO CONSUMERS"
    assert stopped == set(), "it left: nothing pending, so its entry is deleted"
    assert plain.xpending(stream_key, group)["pending"] == 0


def test_two_apps_in_one_process_read_a_group_under_different_names(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    stream_key = key_prefix + stream

    async def scenario() -> set[str]:
        bindings = {"handle-in-0": {"destination": stream, "group": group}}
        first, second = redis.app(bindings), redis.app(bindings)
        for app in (first, second):
            app.consumer(lambda payload: None, name="handle")
        async with first, second:
            await _until_two_read(first, plain, stream, stream_key, group)
            return _consumer_names(plain, stream_key, group)

    assert len(run(scenario())) == 2


def test_two_bindings_of_one_app_in_one_group_get_different_names(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    """One binder, one name: its second consumer of the stream in the group is ``<name>-2``."""
    stream_key = key_prefix + stream
    app = redis.app(
        {
            "one-in-0": {"destination": stream, "group": group},
            "two-in-0": {"destination": stream, "group": group},
        },
        definition="one;two",
        options={"consumer-name": "worker-7"},
    )
    app.consumer(lambda payload: None, name="one")
    app.consumer(lambda payload: None, name="two")

    async def scenario() -> set[str]:
        async with app:
            await _until_two_read(app, plain, stream, stream_key, group)
            return _consumer_names(plain, stream_key, group)

    assert run(scenario()) == {"worker-7", "worker-7-2"}


# -- the group deleted under a running consumer ---------------------------------------------


def _destroy_mid_stream(
    redis: Conformance, plain: Redis, stream: str, stream_key: str, group: str
) -> tuple[list[Any], str, int]:
    """1 consumed; XGROUP DESTROY; 2 consumed; a two-second window; 3 consumed. What was
    seen, then the binding's state and restarts."""

    async def scenario() -> tuple[list[Any], str, int]:
        app = redis.app({"handle-in-0": {"destination": stream, "group": group}})
        seen: Inbox[Any] = Inbox()
        app.consumer(lambda payload: seen.add(payload["n"]), name="handle")
        async with app:
            await app.send(stream, {"n": 1})
            await seen.wait_for(1)
            assert plain.xgroup_destroy(stream_key, group) == 1
            await app.send(stream, {"n": 2})
            await seen.wait_for(2)
            await asyncio.sleep(2)  # a window for a loop to show: the rate is what is measured
            await app.send(stream, {"n": 3})
            await seen.wait_for(3)
            binding = app.binding("handle-in-0")
            return seen.items, binding.state, getattr(binding, "restarts", 0)

    return run(scenario())


def test_a_destroyed_group_is_created_again_without_a_tight_loop(
    redis: Conformance,
    key_prefix: str,
    plain: Redis,
    stream: str,
    group: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """XGROUP DESTROY under a running consumer: a warning, the group made again at 0, later
    messages consumed; over two seconds more the warning does not repeat in a loop."""
    caplog.set_level(logging.WARNING, logger="binder.redis.consumer")
    stream_key = key_prefix + stream
    items, state, _ = _destroy_mid_stream(redis, plain, stream, stream_key, group)
    gone = [r for r in caplog.records if "the group is gone" in r.getMessage()]
    assert 1 <= len(gone) <= 2, f"{len(gone)} warnings that the group is gone"
    assert [n for n in items if n != 1] == [2, 3], "1 may come again (the group restarts at 0)"
    assert state == "running"
    assert group in {g["name"].decode() for g in plain.xinfo_groups(stream_key)}


def test_a_destroyed_group_does_not_fail_the_binding(
    redis: Conformance,
    key_prefix: str,
    plain: Redis,
    stream: str,
    group: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    _, _, restarts = _destroy_mid_stream(redis, plain, stream, key_prefix + stream, group)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert (restarts, errors) == (0, [])
