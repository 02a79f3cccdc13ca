"""The embedded log engine: offsets, groups, hand-offs and wake-ups.

Each test runs its own coroutine with ``asyncio.run`` on a fresh broker. An
absence is proven by :func:`poll_now`: a poll that has records returns them
without suspending (the callbacks here never suspend), so one still waiting
after the loop ran it has nothing to return.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

from binder.errors import BackendError, ClosedError
from binders.log.engine import Broker, Member, StoredRecord
from binders.log.engine.storage import MemoryOffsetStore, MemoryPartitionLog, memory_logs

Batch = list[StoredRecord]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def entries(*values: bytes) -> list[tuple[bytes | None, bytes, dict[str, str], float]]:
    return [(None, value, {}, 0.0) for value in values]


def fill(broker: Broker, topic: str, partition: int, count: int) -> list[bytes]:
    values = [f"{topic}-{partition}-{i}".encode() for i in range(count)]
    broker.append(topic, partition, entries(*values))
    return values


async def poll_now(member: Member, max_records: int = 1000) -> Batch:
    """What ``poll`` returns at once; ``[]`` (after cancelling it) when it would wait."""
    task = asyncio.ensure_future(member.poll(max_records))
    for _ in range(3):
        await asyncio.sleep(0)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return []


class Reader:
    """Reads like the core does: records what it processed, commits it when revoked."""

    def __init__(
        self, broker: Broker, topic: str, group: str | None = None, *, events=None, **join: Any
    ) -> None:
        self.name = f"{group}#{id(self) % 1000}"
        self.seen: list[tuple[int, int, bytes]] = []
        self.done: dict[int, int] = {}
        self.events: list[tuple[str, str, set[int]]] = [] if events is None else events
        self.member = broker.join(
            topic, group, on_revoke=self._revoked, on_assign=self._assigned, **join
        )

    async def _revoked(self, partitions: set[int]) -> None:
        self.events.append((self.name, "revoked", partitions))
        for partition in partitions & self.done.keys():
            self.member.commit(partition, self.done[partition])

    async def _assigned(self, partitions: set[int]) -> None:
        self.events.append((self.name, "assigned", partitions))

    async def take(self, max_records: int = 1000) -> Batch:
        batch = await poll_now(self.member, max_records)
        for record in batch:
            self.seen.append((record.partition, record.offset, record.value))
            self.done[record.partition] = record.offset + 1
        return batch

    async def drain(self) -> None:
        while await self.take():
            pass

    @property
    def values(self) -> list[bytes]:
        return [value for _, _, value in self.seen]


async def settle(*readers: Reader) -> None:
    """Let every reader poll until a whole round returns nothing."""
    while any([await reader.take() for reader in readers]):
        pass


def test_append_returns_the_base_offset_of_each_batch() -> None:
    log = MemoryPartitionLog()
    assert log.append(entries(b"a", b"b")) == 0
    assert log.append([(b"k", b"c", {"h": "v"}, 12.5)]) == 2
    assert (log.start_offset, log.end_offset) == (0, 3)
    assert log.read(2, 10) == [StoredRecord("", 0, 2, b"c", b"k", {"h": "v"}, 12.5)]
    assert [r.offset for r in log.read(1, 10)] == [1, 2]
    assert log.read(3, 10) == []


def test_retention_drops_the_oldest_records_and_readers_skip_ahead() -> None:
    async def scenario() -> None:
        broker = Broker(open_log=memory_logs(max_records=3))
        values = fill(broker, "t", 0, 5)
        assert broker.start_offsets("t") == {0: 2}
        reader = Reader(broker, "t", "g")
        await reader.drain()
        assert reader.values == values[2:]

    run(scenario())


def test_append_creates_a_missing_topic_and_refuses_a_missing_partition() -> None:
    broker = Broker()
    assert broker.append("t", 0, entries(b"a")) == 0
    assert broker.topic("t") is not None and broker.topic("t").partition_count == 1
    with pytest.raises(BackendError, match="no partition 1"):
        broker.append("t", 1, entries(b"b"))
    assert broker.end_offsets("t") == {0: 1}


def test_create_topic_is_idempotent_and_never_shrinks() -> None:
    broker = Broker()
    assert broker.create_topic("t", 3) is broker.create_topic("t", 2)
    assert broker.topic("t").partition_count == 3
    assert broker.topic("missing") is None


def test_a_named_group_starts_at_earliest_and_an_anonymous_consumer_at_latest() -> None:
    async def scenario() -> None:
        broker = Broker()
        before = fill(broker, "t", 0, 3)
        group, anonymous = Reader(broker, "t", "g"), Reader(broker, "t")
        replay = Reader(broker, "t", start="earliest")
        after = fill(broker, "t", 0, 2)
        for reader in (group, anonymous, replay):
            await reader.drain()
        assert group.values == before + after
        assert anonymous.values == after
        assert replay.values == before + after

    run(scenario())


def test_a_group_starting_at_latest_keeps_that_start_for_its_next_member() -> None:
    async def scenario() -> None:
        broker = Broker()
        fill(broker, "t", 0, 3)
        first = Reader(broker, "t", "g", start="latest")
        sent = broker.append("t", 0, entries(b"after-join"))
        await first.member.close()  # died before reading or committing anything
        second = Reader(broker, "t", "g", start="latest")
        await second.drain()
        assert [offset for _, offset, _ in second.seen] == [sent]

    run(scenario())


def test_a_group_resumes_from_its_committed_offset() -> None:
    async def scenario() -> None:
        broker = Broker()
        values = fill(broker, "t", 0, 5)
        first = Reader(broker, "t", "g")
        await first.drain()
        first.member.commit(0, 3)
        await first.member.close()
        assert broker.committed("g", "t") == {0: 3}
        second = Reader(broker, "t", "g")
        await second.drain()
        assert second.values == values[3:]

    run(scenario())


def test_commits_only_move_forward() -> None:
    broker = Broker()
    fill(broker, "t", 0, 5)
    member = broker.join("t", "g")
    member.commit(0, 4)
    member.commit(0, 2)
    assert broker.committed("g", "t") == {0: 4}


def test_anonymous_commits_are_no_ops() -> None:
    broker = Broker()
    member = broker.join("t")
    member.commit(0, 1)
    assert broker.committed("", "t") == {}
    assert MemoryOffsetStore().groups("t") == set()


def test_each_group_receives_every_record() -> None:
    async def scenario() -> None:
        broker = Broker()
        broker.create_topic("t", 2)
        billing, audit = Reader(broker, "t", "billing"), Reader(broker, "t", "audit")
        values = fill(broker, "t", 0, 4) + fill(broker, "t", 1, 4)
        await settle(billing, audit)
        assert sorted(billing.values) == sorted(audit.values) == sorted(values)

    run(scenario())


def test_reads_round_robin_across_partitions_in_offset_order() -> None:
    async def scenario() -> None:
        broker = Broker()
        broker.create_topic("t", 3)
        reader = Reader(broker, "t", "g")
        for partition in range(3):
            fill(broker, "t", partition, 10)
        await reader.take(6)
        assert sorted((p, o) for p, o, _ in reader.seen) == [
            (p, o) for p in range(3) for o in range(2)
        ]
        await reader.drain()
        for partition in range(3):
            offsets = [o for p, o, _ in reader.seen if p == partition]
            assert offsets == list(range(10))

    run(scenario())


def test_two_members_split_the_partitions_and_see_everything_once() -> None:
    async def scenario() -> None:
        broker = Broker()
        broker.create_topic("t", 4)
        values = [v for p in range(4) for v in fill(broker, "t", p, 10)]
        first, second = Reader(broker, "t", "g"), Reader(broker, "t", "g")
        await settle(first, second)
        assert first.member.assignment == {0, 2}
        assert second.member.assignment == {1, 3}
        received = first.values + second.values
        assert sorted(received) == sorted(values)
        assert len(received) == len(values)

    run(scenario())


def test_a_member_joining_mid_stream_gets_its_partitions_after_the_revoke_commit() -> None:
    async def scenario() -> None:
        broker, events = Broker(), []
        broker.create_topic("t", 2)
        values = fill(broker, "t", 0, 10) + fill(broker, "t", 1, 10)
        first = Reader(broker, "t", "g", events=events)
        await first.take(6)  # three from each partition
        second = Reader(broker, "t", "g", events=events)
        assert await second.take() == []  # partition 1 is still held by the first member
        await first.take()  # revokes partition 1 (committing offset 3), then reads partition 0
        await second.take()
        assert [(who, what) for who, what, _ in events] == [
            (first.name, "assigned"),
            (first.name, "revoked"),
            (second.name, "assigned"),
        ]
        assert [offset for _, offset, _ in second.seen] == list(range(3, 10))
        assert sorted(first.values + second.values) == sorted(values)

    run(scenario())


def test_a_late_commit_never_rewinds_the_next_owner() -> None:
    async def scenario() -> None:
        broker = Broker()
        broker.create_topic("t", 2)
        fill(broker, "t", 1, 5)
        first = Reader(broker, "t", "g")
        await first.drain()
        first.done.clear()  # it revokes without committing anything
        second = Reader(broker, "t", "g")
        await settle(first, second)
        second.member.commit(1, 5)
        first.member.commit(1, 2)
        assert broker.committed("g", "t")[1] == 5

    run(scenario())


def test_close_without_commit_redelivers_to_the_next_member() -> None:
    async def scenario() -> None:
        broker = Broker()
        values = fill(broker, "t", 0, 5)
        first, second = Reader(broker, "t", "g"), Reader(broker, "t", "g")
        await settle(first, second)
        first.member.commit(0, 2)
        await first.member.close()
        await second.drain()
        assert first.values == values
        assert second.values == values[2:]

    run(scenario())


def test_close_wakes_a_blocked_poll_and_is_idempotent() -> None:
    async def scenario() -> None:
        member = Broker().join("t", "g")
        task = asyncio.ensure_future(member.poll(10))
        await asyncio.sleep(0)
        assert not task.done()
        await member.close()
        await member.close()
        assert await asyncio.wait_for(task, 5) == []
        assert await member.poll(10) == []
        assert member.assignment == frozenset()

    run(scenario())


def test_a_cancelled_poll_leaves_the_member_usable() -> None:
    async def scenario() -> None:
        broker = Broker()
        member = broker.join("t")
        assert await poll_now(member) == []
        broker.append("t", 0, entries(b"a"))
        assert [r.value for r in await poll_now(member)] == [b"a"]

    run(scenario())


def test_a_second_waiting_poll_is_refused() -> None:
    async def scenario() -> None:
        member = Broker().join("t")
        task = asyncio.ensure_future(member.poll(10))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waiting"):
            await member.poll(10)
        await member.close()
        assert await task == []

    run(scenario())


def test_poll_wakes_on_an_append_from_another_threads_event_loop() -> None:
    async def append_from_its_own_loop(broker: Broker) -> None:
        broker.append("t", 0, entries(b"from-thread"))

    async def scenario() -> None:
        broker = Broker()
        member = broker.join("t", "g")
        task = asyncio.ensure_future(member.poll(10))
        await asyncio.sleep(0)
        assert not task.done()
        thread = threading.Thread(target=asyncio.run, args=(append_from_its_own_loop(broker),))
        thread.start()
        batch = await asyncio.wait_for(task, 5)
        thread.join()
        assert [r.value for r in batch] == [b"from-thread"]

    run(scenario())


def test_pause_holds_records_back_until_resume() -> None:
    async def scenario() -> None:
        broker = Broker()
        member = broker.join("t", "g")
        member.pause()
        broker.append("t", 0, entries(b"a"))
        assert await poll_now(member) == []
        task = asyncio.ensure_future(member.poll(10))
        await asyncio.sleep(0)
        assert not task.done()
        member.resume()
        assert [r.value for r in await asyncio.wait_for(task, 5)] == [b"a"]

    run(scenario())


def test_a_paused_member_still_hands_off_partitions() -> None:
    async def scenario() -> None:
        broker = Broker()
        broker.create_topic("t", 2)
        values = fill(broker, "t", 1, 3)
        first = Reader(broker, "t", "g")
        first.member.pause()
        second = Reader(broker, "t", "g")
        assert await first.take() == []
        await second.drain()
        assert first.member.assignment == {0}
        assert second.values == values

    run(scenario())


def test_static_members_own_their_share_and_use_committed_offsets() -> None:
    async def scenario() -> None:
        broker = Broker()
        broker.create_topic("t", 4)
        even, odd = Reader(broker, "t", "g", static=(0, 2)), Reader(broker, "t", "g", static=(1, 2))
        assert (even.member.assignment, odd.member.assignment) == ({0, 2}, {1, 3})
        values = {p: fill(broker, "t", p, 3) for p in range(4)}
        await settle(even, odd)
        assert sorted(even.values) == sorted(values[0] + values[2])
        assert sorted(odd.values) == sorted(values[1] + values[3])
        even.member.commit(0, 2)
        even.member.commit(2, 3)
        await even.member.close()
        again = Reader(broker, "t", "g", static=(0, 2))
        await again.drain()
        assert again.values == values[0][2:]

    run(scenario())


def test_a_required_group_reads_from_the_start_when_it_first_joins() -> None:
    async def scenario() -> None:
        broker = Broker()
        values = fill(broker, "t", 0, 3)
        broker.register_group("t", "required")
        values += fill(broker, "t", 0, 2)
        reader = Reader(broker, "t", "required", start="latest")
        await reader.drain()
        assert reader.values == values

    run(scenario())


def test_new_partitions_are_picked_up_on_the_next_poll() -> None:
    async def scenario() -> None:
        broker = Broker()
        anonymous, group = Reader(broker, "t"), Reader(broker, "t", "g", start="latest")
        await settle(anonymous, group)
        broker.create_topic("t", 3)
        values = fill(broker, "t", 2, 2)
        await settle(anonymous, group)
        assert anonymous.values == group.values == values
        assert anonymous.member.assignment == group.member.assignment == {0, 1, 2}
        assert anonymous.events[-1][1:] == ("assigned", {1, 2})

    run(scenario())


def test_a_consumer_may_join_before_the_topic_exists() -> None:
    async def scenario() -> None:
        broker = Broker()
        reader = Reader(broker, "later", "g")
        assert broker.topic("later").partition_count == 1
        values = fill(broker, "later", 0, 2)
        await reader.drain()
        assert reader.values == values

    run(scenario())


def test_delete_topic_closes_members_and_forgets_groups() -> None:
    async def scenario() -> None:
        broker = Broker()
        fill(broker, "t", 0, 3)
        member = broker.join("t", "g")
        member.commit(0, 3)
        broker.delete_topic("t")
        assert member.closed and await member.poll(10) == []
        assert broker.topic("t") is None and broker.committed("g", "t") == {}
        broker.append("t", 0, entries(b"fresh"))
        assert broker.end_offsets("t") == {0: 1}

    run(scenario())


def test_named_brokers_are_shared_across_threads_until_forgotten() -> None:
    found: list[Broker] = []
    thread = threading.Thread(target=lambda: found.append(Broker.named("shared-test")))
    thread.start()
    thread.join()
    broker = Broker.named("shared-test")
    assert found == [broker]
    Broker.forget("shared-test")
    assert broker.closed
    with pytest.raises(ClosedError):
        broker.append("t", 0, entries(b"a"))
    assert Broker.named("shared-test") is not broker
    Broker.forget("shared-test")


def test_a_poll_on_a_background_loop_wakes_on_an_append_from_plain_code() -> None:
    broker = Broker()
    member = broker.join("t")
    waiting, result = threading.Event(), []

    async def consume() -> None:
        task = asyncio.ensure_future(member.poll(10))
        await asyncio.sleep(0)
        assert not task.done()
        waiting.set()
        result.extend(await asyncio.wait_for(task, 5))

    thread = threading.Thread(target=asyncio.run, args=(consume(),))
    thread.start()
    assert waiting.wait(5)
    broker.append("t", 0, entries(b"a"))  # no event loop running in this thread
    thread.join(5)
    assert [r.value for r in result] == [b"a"]


def test_members_on_their_own_loops_share_a_stream_exactly_once() -> None:
    broker, total = Broker(), 2000
    broker.create_topic("t", 4)
    received: dict[int, list[bytes]] = {0: [], 1: []}
    progress = threading.Condition()

    async def consume(index: int, member: Member) -> None:
        while batch := await member.poll(50):
            with progress:
                received[index].extend(record.value for record in batch)
                progress.notify_all()
            for record in batch:
                member.commit(record.partition, record.offset + 1)

    def start(index: int) -> tuple[Member, threading.Thread]:
        member = broker.join("t", "g")
        thread = threading.Thread(target=asyncio.run, args=(consume(index, member),))
        thread.start()
        return member, thread

    started = [start(0)]
    for i in range(0, total, 100):
        if i == total // 2:
            started.append(start(1))  # joins mid-stream: the first member hands off 1 and 3
        broker.append("t", i // 100 % 4, entries(*[str(n).encode() for n in range(i, i + 100)]))
    with progress:
        assert progress.wait_for(lambda: sum(map(len, received.values())) >= total, timeout=10)
    for member, thread in started:
        asyncio.run(member.close())
        thread.join(5)
    assert sorted(received[0] + received[1], key=int) == [str(n).encode() for n in range(total)]
    assert received[1] and started[1][0].closed
