"""Group rebalancing: commit before revoke, and no loss while messages flow."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from binder import App
from binder.spi import Consumer, ConsumerSpec, InboundRecord, OutboundRecord
from binder.testing.conformance.support import (
    TIMEOUT,
    Conformance,
    IdleListener,
    Inbox,
    keys_for_partitions,
    run,
)

TOTAL = 10_000
PARTITIONS = 4
FETCH_MAX = 500
"""Records one fetch hands the core (``ConsumerSpec.max_records``): the in-flight window."""
REBALANCE_TIME = 3.0
"""Enough for a rebalance with the test's group timings (a join takes about a second):
without the wait for the chunk in hand, the joining member would be at work by then."""


class _HoldingCore:
    """A core stand-in whose work is in flight when its partitions are revoked.

    ``on_revoked`` signals ``revoking``, waits for ``release``, then (when asked to)
    commits the in-flight records, as the real core does once they are finished.
    """

    def __init__(self, commit_in_flight: bool) -> None:
        self.commit_in_flight = commit_in_flight
        self.consumer: Consumer | None = None
        self.in_flight: list[InboundRecord] = []
        self.revoking = asyncio.Event()
        self.release = asyncio.Event()

    async def on_revoked(self, partitions: set[int]) -> None:
        self.revoking.set()
        await self.release.wait()
        if self.commit_in_flight and self.consumer is not None:
            await self.consumer.commit(self.in_flight)

    async def on_assigned(self, partitions: set[int]) -> None:
        return None


async def _collect(consumer: Consumer, into: Inbox[InboundRecord]) -> None:
    """Fetch and commit until cancelled."""
    while records := await consumer.fetch():
        for record in records:
            into.add(record)
        await consumer.commit(records)


async def _fetch_some(consumer: Consumer, count: int) -> list[InboundRecord]:
    """Fetch at least ``count`` records without committing them."""
    taken: list[InboundRecord] = []
    while len(taken) < count:
        taken.extend(await consumer.fetch())
    return taken


async def _handover(kafka: Conformance, topic: str, group: str, commit: bool) -> dict[str, Any]:
    """A member holds 40 fetched records when a second member joins; what happens to them."""
    await kafka.provision(topic, 2)
    kafka.declare(topic, group)
    first_batch = [OutboundRecord(f"m{n}".encode(), f"k{n}".encode(), {}, n % 2) for n in range(40)]
    sentinels = [
        OutboundRecord(b"end", key.encode(), {}, p) for p, key in enumerate(keys_for_partitions(2))
    ]
    async with kafka.binder() as binder:
        await kafka.send_raw(binder, topic, first_batch)
        core = _HoldingCore(commit)
        first = core.consumer = await binder.consumer(ConsumerSpec(topic, group), core)
        core.in_flight = await asyncio.wait_for(_fetch_some(first, 40), TIMEOUT)
        joining = asyncio.create_task(binder.consumer(ConsumerSpec(topic, group), IdleListener()))
        await asyncio.wait_for(core.revoking.wait(), TIMEOUT)
        joined_while_in_flight = joining.done()
        core.release.set()
        second = await asyncio.wait_for(joining, TIMEOUT)
        after: Inbox[InboundRecord] = Inbox()
        tasks = [asyncio.create_task(_collect(member, after)) for member in (first, second)]
        try:
            await kafka.send_raw(binder, topic, sentinels)
            await after.wait_until(
                lambda items: sum(r.value == b"end" for r in items) == 2, "both sentinels"
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await first.close()
            await second.close()
    return {
        "in_flight": len(core.in_flight),
        "joined_while_in_flight": joined_while_in_flight,
        "again": sorted(r.value.decode() for r in after.items if r.value != b"end"),
        "sentinels": sum(r.value == b"end" for r in after.items),
    }


@pytest.mark.parametrize("commit", [True, False], ids=["committed-in-revoke", "not-committed"])
def test_partitions_move_only_after_the_in_flight_work_is_committed(
    kafka: Conformance, topic: str, group: str, commit: bool
) -> None:
    outcome = run(_handover(kafka, topic, group, commit))
    assert outcome["in_flight"] == 40
    assert not outcome["joined_while_in_flight"], "the newcomer waits for on_revoked"
    assert outcome["sentinels"] == 2
    if commit:
        assert outcome["again"] == [], "what was committed in on_revoked is not delivered again"
    else:
        expected = sorted(f"m{n}" for n in range(40))
        assert outcome["again"] == expected, "uncommitted work goes to the next owner"


class _Tally:
    """What each member handled, counted from any thread; awaited with O(1) conditions."""

    def __init__(self) -> None:
        self.seen: Counter[int] = Counter()
        self.by: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def add(self, who: str, n: int) -> None:
        with self._lock:
            self.seen[n] += 1
            self.by[who] += 1
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, done: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        self._loop, self._changed = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with self._lock:
                        if done():
                            return
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def _member(kafka: Conformance, topic: str, group: str, tally: _Tally, name: str) -> App:
    """Member ``one`` handles synchronously on one lane (in a worker thread, a chunk at a
    time); member ``two`` asynchronously on two lanes: both of the core's in-flight paths."""
    lanes = 1 if name == "one" else 2
    app = kafka.app(
        {f"{name}-in-0": {"destination": topic, "group": group, "consumer": {"concurrency": lanes}}}
    )
    if name == "one":

        def handle(payload: dict[str, int]) -> None:
            tally.add(name, payload["n"])

    else:

        async def handle(payload: dict[str, int]) -> None:  # type: ignore[misc]
            tally.add(name, payload["n"])

    app.consumer(handle, name=name)
    return app


async def _produce(sender: App, gates: Sequence[tuple[int, asyncio.Event]]) -> None:
    """Send ``TOTAL`` keyed messages in pipelined chunks through the partitioned binding
    ``sender``; before message ``n`` of each gate, wait for its event, so that messages are
    still flowing while each rebalance happens."""
    waits = dict(gates)
    for start in range(0, TOTAL, 100):
        if start in waits:
            await waits[start].wait()
        chunk = range(start, start + 100)
        await asyncio.gather(*(sender.send("sender", {"n": n}, key=f"k{n % 64}") for n in chunk))


def test_a_rebalance_while_messages_flow_loses_nothing(
    kafka: Conformance, topic: str, group: str
) -> None:
    """A second member joins mid-stream, then leaves: every message arrives, and at most
    the in-flight window is delivered twice."""
    tally = _Tally()

    async def scenario() -> None:
        await kafka.provision(topic, PARTITIONS)
        joined, left = asyncio.Event(), asyncio.Event()
        one, two = (_member(kafka, topic, group, tally, name) for name in ("one", "two"))
        producer = {"sender": {"destination": topic, "producer": {"partition-count": PARTITIONS}}}
        async with one, kafka.app(producer) as sender:
            flow = asyncio.create_task(_produce(sender, [(3000, joined), (7000, left)]))
            try:
                await tally.wait(lambda: len(tally.seen) >= 1000, "member one at work")
                async with two:  # joins: partitions move from one to two
                    joined.set()
                    await tally.wait(lambda: tally.by["two"] >= 500, "member two at work")
                left.set()  # two left: its partitions move back to one
                await asyncio.wait_for(flow, TIMEOUT * 3)
                await tally.wait(lambda: len(tally.seen) == TOTAL, f"all {TOTAL}", TIMEOUT * 3)
            finally:
                flow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flow

    run(scenario(), timeout=TIMEOUT * 12)
    assert set(tally.seen) == set(range(TOTAL)), "nothing is lost"
    assert tally.by["two"] >= 500, "the second member took part"
    twice = sum(count - 1 for count in tally.seen.values())
    assert twice <= FETCH_MAX, f"{twice} duplicates, more than one fetch in flight"


def test_a_member_joining_waits_for_the_chunk_in_hand(
    kafka: Conformance, topic: str, group: str
) -> None:
    """One lane, synchronous handler: while a fetched chunk is being handled, a joining
    member gets no partition; the chunk is finished and committed first, so nothing in
    it is handled twice."""
    tally = _Tally()
    holding, release = threading.Event(), threading.Event()
    one = kafka.app({"one-in-0": {"destination": topic, "group": group}})
    two = _member(kafka, topic, group, tally, "two")

    @one.consumer(name="one")
    def handle(payload: dict[str, int]) -> None:  # in a worker thread, a chunk at a time
        if payload["n"] == 3 and not release.is_set():
            holding.set()
            release.wait(TIMEOUT)
        tally.add("one", payload["n"])

    async def scenario() -> None:
        await kafka.provision(topic, 2)
        async with one, kafka.app() as sender:
            await asyncio.gather(*(sender.send(topic, {"n": n}, key=f"k{n}") for n in range(40)))
            await asyncio.to_thread(holding.wait, TIMEOUT)
            joining = asyncio.create_task(two.start())
            try:  # held: two cannot get a partition, so this waits a rebalance's time, in vain
                await tally.wait(lambda: tally.by["two"] > 0, "two", REBALANCE_TIME)
            except AssertionError:
                pass
            finally:
                release.set()
            await asyncio.wait_for(joining, TIMEOUT)
            try:
                await tally.wait(lambda: len(tally.seen) == 40, "all 40")
            finally:
                await two.stop()

    run(scenario())
    assert set(tally.seen) == set(range(40))
    twice = {n: count for n, count in tally.seen.items() if count > 1}
    assert not twice, f"handled twice: {twice}"


def test_static_membership_joins_and_a_restart_takes_up_where_it_left(
    kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    """With ``group-instance-id`` the member joins as ``<id>-<destination>``; stopped and
    started again under the same id, it goes on after its last commit."""
    suite = Conformance({**kafka_config, "group-instance-id": "pod-1"})
    seen: Inbox[int] = Inbox()

    def member() -> Any:
        app = suite.app({"static-in-0": {"destination": topic, "group": group}})

        @app.consumer
        async def static(n: int) -> None:
            seen.add(n)

        return app

    async def scenario() -> None:
        await suite.provision(topic, 2)
        async with suite.app() as sender:
            async with member():
                await asyncio.gather(*(sender.send(topic, n, key=f"k{n}") for n in range(10)))
                await seen.wait_until(lambda items: len(items) >= 10, "the first 10")
            await asyncio.gather(*(sender.send(topic, n, key=f"k{n}") for n in range(10, 20)))
            async with member():
                await seen.wait_until(lambda items: len(items) >= 20, "the next 10")
                # A redelivery comes before anything sent later on its partition: once a
                # message sent now arrived on every partition, nothing more can come twice.
                for n, key in enumerate(keys_for_partitions(2), start=100):
                    await sender.send(topic, n, key=key)
                await seen.wait_until(lambda items: {100, 101} <= set(items), "the barrier")

    try:
        run(scenario())
    finally:
        run(suite.cleanup())
    assert sorted(seen.items) == [*range(20), 100, 101], "each once"
