"""binder.ordering: key lanes and in-order release of finished records."""

from __future__ import annotations

import asyncio

from binder.ordering import AckTracker, lane_of
from binder.spi import InboundRecord


def _rec(partition: int = 0, offset: int = 0, key: bytes | None = None) -> InboundRecord:
    return InboundRecord(destination="d", partition=partition, offset=offset, value=b"", key=key)


# -- lanes -----------------------------------------------------------------------------------


def test_same_key_always_gets_the_same_lane() -> None:
    lanes = {lane_of(_rec(partition=p, offset=o, key=b"c-42"), 4) for p in range(3) for o in (0, 9)}
    assert len(lanes) == 1


def test_lanes_are_in_range_and_keys_spread() -> None:
    lanes = [lane_of(_rec(key=f"k-{i}".encode()), 4) for i in range(200)]
    assert set(lanes) == {0, 1, 2, 3}


def test_keyless_records_go_by_partition() -> None:
    assert [lane_of(_rec(partition=p), 3) for p in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_one_lane_takes_everything() -> None:
    assert {lane_of(_rec(partition=p, key=k), 1) for p in range(4) for k in (None, b"a")} == {0}


# -- AckTracker ------------------------------------------------------------------------------


def test_release_waits_for_the_first_unfinished_record() -> None:
    tracker = AckTracker()
    r0, r1, r2 = _rec(offset=0), _rec(offset=1), _rec(offset=2)
    tracker.track([r0, r1, r2])
    assert tracker.pending == 3
    assert tracker.complete([r2]) == []
    assert tracker.complete([r1]) == []
    assert tracker.complete([r0]) == [r0, r1, r2]
    assert tracker.pending == 0


def test_partitions_are_released_independently() -> None:
    tracker = AckTracker()
    a0, a1 = _rec(0, 0), _rec(0, 1)
    b0, b1 = _rec(1, 0), _rec(1, 1)
    tracker.track([a0, b0, a1, b1])
    assert tracker.complete([b0, a1]) == [b0]
    assert tracker.pending == 3
    assert sorted(tracker.complete([a0, b1]), key=lambda r: (r.partition, r.offset)) == [
        a0,
        a1,
        b1,
    ]


def test_records_are_told_apart_by_identity_not_value() -> None:
    tracker = AckTracker()
    first, twin = _rec(offset=5), _rec(offset=5)  # a redelivery: equal, but another record
    tracker.track([first, twin])
    assert tracker.complete([twin]) == []
    assert tracker.complete([first]) == [first, twin]


def test_tracking_more_after_release_keeps_order() -> None:
    tracker = AckTracker()
    r0, r1 = _rec(offset=0), _rec(offset=1)
    tracker.track([r0])
    assert tracker.complete([r0]) == [r0]
    tracker.track([r1])
    assert tracker.pending == 1
    assert tracker.complete([r1]) == [r1]


def test_wait_idle_returns_at_once_when_nothing_is_tracked() -> None:
    async def scenario() -> None:
        await asyncio.wait_for(AckTracker().wait_idle(), 1)

    asyncio.run(scenario())


def test_wait_idle_waits_until_every_record_is_released() -> None:
    async def scenario() -> None:
        tracker = AckTracker()
        r0, r1 = _rec(offset=0), _rec(offset=1)
        tracker.track([r0, r1])
        waiter = asyncio.create_task(tracker.wait_idle())
        await asyncio.sleep(0)  # one step: a set event would have let it finish here
        assert not waiter.done()
        tracker.complete([r1])  # finished but not releasable: still not idle
        await asyncio.sleep(0)
        assert not waiter.done()
        tracker.complete([r0])
        await asyncio.wait_for(waiter, 1)

    asyncio.run(scenario())


def test_tracking_an_empty_chunk_keeps_it_idle() -> None:
    async def scenario() -> None:
        tracker = AckTracker()
        tracker.track([])
        await asyncio.wait_for(tracker.wait_idle(), 1)

    asyncio.run(scenario())
